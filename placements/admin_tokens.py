"""Read-only admin for API tokens: prefix, owner and dates, never the secret or its digest.

Tokens are created and revoked through the API (``placements.tokens``), which audits both.
"""

from django.contrib import admin
from django.db.models import Q
from django.utils import timezone

from fleet.admin_telemetry import ReadOnlyAdmin
from placements.models import ApiToken


class TokenStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            # Active as the API's ``active`` field reads it: neither revoked nor expired.
            unexpired = Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
            return queryset.filter(unexpired, revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "name", "user", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = [TokenStateFilter]
    list_select_related = ["user"]
    search_fields = ["prefix", "name", "user__username"]
    fields = ["prefix", "name", "user", "created_at", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
