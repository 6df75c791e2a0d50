"""Read-only API over the audit trail, for staff: filtered, paginated, and exported as CSV."""

import csv
import io

import django_filters
from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import renderers, serializers
from rest_framework.decorators import action
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAdminUser
from rest_framework.settings import api_settings

from compliance.audit_export import CSV_COLUMNS, csv_response
from compliance.models import AuditEvent
from compliance.roles import CanViewAuditTrail
from mcm_site.api import ReadOnlyViewSet, UtcIsoDateTimeFilter


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        # The CSV export has the same columns, in the same order.
        fields = CSV_COLUMNS
        read_only_fields = fields


class AuditEventFilter(django_filters.FilterSet):
    subject_type = django_filters.CharFilter(help_text="Model label of the subject, for example 'fleet.cluster'.")
    subject_id = django_filters.CharFilter()
    actor_id = django_filters.NumberFilter(help_text="Id of the acting user.")
    actor = django_filters.CharFilter(
        field_name="actor_label", help_text="User name, or system component such as 'executor'."
    )
    action = django_filters.CharFilter(help_text="Exact action, for example 'failover.approved'.")
    action_prefix = django_filters.CharFilter(
        field_name="action", lookup_expr="startswith", help_text="Action prefix, for example 'failover.'."
    )
    since = UtcIsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="Events at or after this ISO 8601 time."
    )
    until = UtcIsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="Events before this ISO 8601 time."
    )
    q = django_filters.CharFilter(method="search", help_text="Text in the action, subject id, actor or reason.")

    class Meta:
        model = AuditEvent
        fields: list[str] = []

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(action__icontains=value)
            | Q(subject_id__icontains=value)
            | Q(actor_label__icontains=value)
            | Q(reason__icontains=value)
        )


class AuditEventCSVRenderer(renderers.BaseRenderer):
    """The renderer that ``?format=csv`` selects. The views stream rows themselves, so it renders only error bodies."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, dict):
            # An error: one "field,message" row per message, the messages as plain text.
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["field", "message"])
            for key, value in data.items():
                for message in value if isinstance(value, list) else [value]:
                    writer.writerow([key, str(message)])
            return out.getvalue()
        return ",".join(CSV_COLUMNS) + "\n"


class CSVOnlyNegotiation(BaseContentNegotiation):
    """Pick the CSV renderer whatever the Accept header requests, because the export has one format."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AuditEventViewSet(ReadOnlyViewSet):
    """The audit trail, newest first, for staff with ``compliance.view_auditevent``: the auditor, compliance
    and ops roles, and superusers. Other users get 403. Nobody can change it through the API.

    ``?format=csv`` on the list, or ``export.csv`` with the same filters, streams every matching event as CSV.
    """

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    permission_classes = [IsAdminUser, CanViewAuditTrail]
    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, AuditEventCSVRenderer]
    ordering_fields = ["created_at", "action", "subject_type", "actor_label"]

    def list(self, request, *args, **kwargs):
        if request.accepted_renderer.format == "csv":
            return csv_response(self.filter_queryset(self.get_queryset()))
        return super().list(request, *args, **kwargs)

    @extend_schema(
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="Matching events as CSV.")},
    )
    @action(
        detail=False,
        methods=["get"],
        renderer_classes=[AuditEventCSVRenderer],
        content_negotiation_class=CSVOnlyNegotiation,
    )
    def export(self, request, format=None):
        """Stream every event that matches the filters as CSV, one row per event with before and after as JSON."""
        return csv_response(self.filter_queryset(self.get_queryset()))
