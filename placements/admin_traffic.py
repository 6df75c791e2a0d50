"""Read-only admin for traffic samples, which only the event applier and the pull collector write."""

from django.contrib import admin

from fleet.admin_telemetry import ReadOnlyAdmin
from placements.models import TrafficSample


@admin.register(TrafficSample)
class TrafficSampleAdmin(ReadOnlyAdmin):
    list_display = ["deployment", "cluster", "origin", "requests_per_second", "in_flight", "source", "observed_at"]
    list_filter = ["source", "cluster"]
    list_select_related = ["deployment__customer", "cluster"]
    search_fields = ["deployment__name", "deployment__customer__name", "origin"]
    # Newest first, through the index on observed_at. The table grows by one row per series and
    # read, so the admin skips counting all its rows on every page.
    ordering = ["-observed_at"]
    show_full_result_count = False
