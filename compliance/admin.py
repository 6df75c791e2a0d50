"""Admin for compliance staff: placement locks, and the audit trail, which the admin never lets anyone edit."""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.utils.html import format_html, format_html_join

from compliance.audit_export import csv_response
from compliance.lock_services import (
    LIST_FIELDS,
    LOCK_FIELDS,
    create_lock,
    delete_lock,
    effective_lock,
    update_lock,
    validate_lock,
)
from compliance.models import AuditEvent, LockChange, PlacementLock
from fleet.admin_telemetry import ReadOnlyAdmin


class PlacementLockAdminForm(forms.ModelForm):
    change_reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why this change is made. Kept in the lock's history and the audit trail.",
    )

    class Meta:
        model = PlacementLock
        fields = ["customer", "deployment", *LIST_FIELDS, "reason"]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned  # a field failed to parse, so the service checks would repeat its error
        try:
            validate_lock(
                {name: cleaned.get(name) for name in LOCK_FIELDS}, instance=self.instance if self.instance.pk else None
            )
        except ValidationError as error:
            self.add_error(None, error)
        return cleaned


@admin.register(PlacementLock)
class PlacementLockAdmin(admin.ModelAdmin):
    """Lock editing through ``compliance.lock_services``: a change reason on every save and delete, kept in history.

    A lock with neither customer nor deployment binds every deployment (platform level). The bulk
    delete action is off, so each deletion goes through the confirmation page and its reason field.
    """

    form = PlacementLockAdminForm
    list_display = ["__str__", "level", "customer", "deployment", "allowed_jurisdictions", "updated_at"]
    list_filter = ["customer", "allowed_providers", "excluded_providers"]
    list_select_related = ["customer", "deployment__customer"]
    search_fields = ["reason", "customer__name", "deployment__name", "deployment__customer__name"]
    filter_horizontal = ["allowed_regions", "allowed_providers", "excluded_providers"]
    autocomplete_fields = ["deployment"]
    readonly_fields = ["created_at", "updated_at", "effective", "history"]
    delete_confirmation_template = "admin/compliance/placementlock/delete_confirmation.html"

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        data = {name: form.cleaned_data.get(name) for name in LOCK_FIELDS}
        reason = form.cleaned_data["change_reason"]
        if change:
            lock = update_lock(actor=request.user, lock=obj, data=data, reason=reason)
        else:
            lock = create_lock(actor=request.user, data=data, reason=reason)
        obj.pk = lock.pk
        obj.created_at, obj.updated_at = lock.created_at, lock.updated_at

    def save_related(self, request, form, formsets, change):
        """The service has stored the many-to-many parts already."""

    def delete_view(self, request, object_id, extra_context=None):
        if request.method == "POST" and not request.POST.get("change_reason", "").strip():
            messages.error(request, "Give a reason for deleting the lock; it is kept in the lock's history.")
            return HttpResponseRedirect(request.get_full_path())
        return super().delete_view(request, object_id, extra_context)

    def delete_model(self, request, obj):
        delete_lock(actor=request.user, lock=obj, reason=request.POST.get("change_reason", ""))

    @admin.display(description="effective lock of the deployment")
    def effective(self, lock):
        if not lock.deployment_id:
            return "-"
        return effective_lock_html(lock.deployment)

    @admin.display(description="history")
    def history(self, lock):
        if not lock.pk:
            return "-"
        rows = LockChange.objects.filter(lock_pk=lock.pk).order_by("-changed_at", "-pk")[:20]
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} {} by {}: {}<pre>before: {}</pre><pre>after: {}</pre></li>",
                (
                    (
                        f"{row.changed_at:%Y-%m-%d %H:%M:%S}",
                        row.action,
                        row.actor_label,
                        row.reason,
                        json.dumps(row.before, sort_keys=True),
                        json.dumps(row.after, sort_keys=True),
                    )
                    for row in rows
                ),
            ),
        )


def effective_lock_html(deployment) -> str:
    """Render a deployment's effective lock for admin pages: each part, and the locks it comes from."""
    lock = effective_lock(deployment)
    if not lock["locks"]:
        return "No lock binds this deployment."
    parts = format_html_join(
        "",
        "<li>{}: {} (from lock {})</li>",
        (
            (name.replace("_", " "), ", ".join(part["values"]), ", ".join(str(pk) for pk in part["from"]))
            for name, part in ((name, lock[name]) for name in LIST_FIELDS)
            if part["values"] is not None
        ),
    )
    locks = format_html_join(
        "",
        "<li>lock {}: {} level, on {}; reason: {}</li>",
        ((row["id"], row["level"], row["subject"], row["reason"]) for row in lock["locks"]),
    )
    return format_html("<ul>{}</ul><p>Locks:</p><ul>{}</ul>", parts, locks)


@admin.register(LockChange)
class LockChangeAdmin(ReadOnlyAdmin):
    """The history of lock changes: read-only, like the audit trail."""

    list_display = ["changed_at", "lock_pk", "action", "actor_label", "reason"]
    list_filter = ["action"]
    search_fields = ["=lock_pk", "actor_label", "reason"]
    fields = ["changed_at", "lock_pk", "lock", "action", "actor", "actor_label", "reason", "before", "after"]
    readonly_fields = fields


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
