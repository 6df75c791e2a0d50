"""MCM's admin site: Django's admin with the operator dashboard as its landing page."""

from django.contrib import admin


class McmAdminSite(admin.AdminSite):
    site_header = "MCM operator console"
    site_title = "MCM"
    index_title = "Global pool"
