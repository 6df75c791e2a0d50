"""MCM's admin site: Django's admin with the operator dashboard as its landing page."""

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path

from fleet.worldmap import map_context
from mcm_site.dashboard import build_dashboard

# Seconds between the dashboard's fetches of its fragment.
DASHBOARD_REFRESH_S = 15


class McmAdminSite(admin.AdminSite):
    # The dashboard has its own template: overriding admin/index.html would also change every app's
    # index page, because Django's app_index.html extends it.
    index_template = "admin/mcm/dashboard_index.html"
    site_header = "MCM operator console"
    site_title = "MCM"
    index_title = "Global pool"

    def get_urls(self):
        fragment = path("dashboard/fragment/", self.admin_view(self.dashboard_fragment), name="dashboard_fragment")
        return [fragment, *super().get_urls()]

    def dashboard_context(self, request) -> dict:
        return {**map_context(), "dashboard": build_dashboard(request.user), "refresh_s": DASHBOARD_REFRESH_S}

    def index(self, request, extra_context=None):
        context = {**self.dashboard_context(request), **(extra_context or {})}
        return super().index(request, extra_context=context)

    def dashboard_fragment(self, request):
        """Render the dashboard's panels alone, which the landing page fetches every ``DASHBOARD_REFRESH_S``."""
        # admin_view() marks the response never_cache, so the browser refetches it every time.
        return TemplateResponse(request, "admin/mcm/dashboard_panels.html", self.dashboard_context(request))
