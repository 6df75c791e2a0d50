from django.contrib.admin.apps import AdminConfig


class McmAdminConfig(AdminConfig):
    """The Django admin with MCM's site: the dashboard is its landing page."""

    default_site = "mcm_site.admin_site.McmAdminSite"
