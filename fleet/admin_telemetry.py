"""Read-only admin for telemetry: pushed cluster events and pulled snapshots."""

from django.contrib import admin

from fleet.models import ClusterEvent, TelemetrySnapshot


class ReadOnlyAdmin(admin.ModelAdmin):
    """Telemetry is written by agents and tasks only, so the admin shows it without add, change or delete."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AppliedFilter(admin.SimpleListFilter):
    """Events bucketed by whether the applier has reached them; waiting ones sit behind a sequence gap."""

    title = "applied"
    parameter_name = "applied"

    def lookups(self, request, model_admin):
        return [("yes", "Applied"), ("no", "Waiting")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(applied_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(applied_at__isnull=True)
        return queryset


@admin.register(ClusterEvent)
class ClusterEventAdmin(ReadOnlyAdmin):
    list_display = ["cluster", "sequence", "kind", "event_id", "occurred_at", "received_at", "applied_at"]
    list_filter = [AppliedFilter, "kind", "cluster"]
    list_select_related = ["cluster"]
    search_fields = ["event_id", "cluster__name"]
    # Newest first, through the primary key's index: received_at has no index.
    ordering = ["-id"]


@admin.register(TelemetrySnapshot)
class TelemetrySnapshotAdmin(ReadOnlyAdmin):
    list_display = ["cluster", "taken_at", "source", "ok", "error"]
    list_filter = ["ok", "source", "cluster"]
    list_select_related = ["cluster"]
    search_fields = ["cluster__name", "error"]
    date_hierarchy = "taken_at"
