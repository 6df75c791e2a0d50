"""Admin for compliance staff: placement locks, and the audit trail, which the admin never lets anyone edit."""

import json

from django.contrib import admin
from django.utils.html import format_html

from compliance.audit_export import csv_response
from compliance.models import AuditEvent, PlacementLock
from compliance.services import record_event


def lock_snapshot(lock: PlacementLock) -> dict:
    """Return a lock as JSON-ready data, for the before and after of its audit events."""
    return {
        "customer": lock.customer.name if lock.customer else None,
        "deployment": str(lock.deployment) if lock.deployment else None,
        "allowed_regions": sorted(str(region) for region in lock.allowed_regions.all()),
        "allowed_jurisdictions": sorted(lock.allowed_jurisdictions),
        "allowed_providers": sorted(provider.name for provider in lock.allowed_providers.all()),
        "excluded_providers": sorted(provider.name for provider in lock.excluded_providers.all()),
        "required_capabilities": sorted(lock.required_capabilities),
        "reason": lock.reason,
    }


@admin.register(PlacementLock)
class PlacementLockAdmin(admin.ModelAdmin):
    """Lock editing; the admin's change view runs in one transaction, so each audit row commits with its change.

    NOTE: the audit events are written here because no compliance service for locks exists yet.
    Move them into one when locks can also be changed outside the admin.
    """

    list_display = ["__str__", "customer", "deployment", "allowed_jurisdictions", "required_capabilities", "updated_at"]
    list_filter = ["customer", "allowed_providers", "excluded_providers"]
    list_select_related = ["customer", "deployment__customer"]
    search_fields = ["reason", "customer__name", "deployment__name", "deployment__customer__name"]
    filter_horizontal = ["allowed_regions", "allowed_providers", "excluded_providers"]
    autocomplete_fields = ["deployment"]
    readonly_fields = ["created_at", "updated_at"]

    def save_model(self, request, obj, form, change):
        # Read the stored lock before the form's values replace it.
        request.lock_before = lock_snapshot(PlacementLock.objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        lock = form.instance
        record_event(
            actor=request.user,
            action="lock.updated" if change else "lock.created",
            subject=lock,
            reason=lock.reason,
            before=request.lock_before,
            after=lock_snapshot(lock),
        )

    def delete_model(self, request, obj):
        self.record_deletion(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for lock in queryset:
            self.record_deletion(request, lock)
        super().delete_queryset(request, queryset)

    def record_deletion(self, request, lock: PlacementLock) -> None:
        record_event(
            actor=request.user,
            action="lock.deleted",
            subject=lock,
            reason=f"Deleted in the admin; the lock's reason was: {lock.reason}",
            before=lock_snapshot(lock),
        )


AUDIT_EVENT_FIELDS = ("created_at", "actor", "actor_label", "action", "subject_type", "subject_id", "reason", "changes")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The append-only trail: viewable by staff with the view permission, never added, changed or deleted.

    The permission methods return False for superusers too, so the admin offers no add, change or
    delete view and no delete action. The model and, on PostgreSQL, a trigger reject changes as well.
    """

    list_display = ["created_at", "actor_label", "action", "subject_type", "subject_id", "reason"]
    list_filter = ["action", "subject_type", "actor_label", ("actor", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["=subject_id", "subject_type", "action", "actor_label", "reason"]
    date_hierarchy = "created_at"
    fields = AUDIT_EVENT_FIELDS
    readonly_fields = AUDIT_EVENT_FIELDS
    show_full_result_count = False
    actions = ["export_csv"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Export selected audit events as CSV")
    def export_csv(self, request, queryset):
        return csv_response(queryset.order_by("-created_at", "-id"))

    @admin.display(description="before / after")
    def changes(self, event):
        return format_html(
            "<pre>before: {}</pre><pre>after: {}</pre>",
            json.dumps(event.before, indent=2, sort_keys=True),
            json.dumps(event.after, indent=2, sort_keys=True),
        )
