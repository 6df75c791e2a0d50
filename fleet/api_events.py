"""The event-ingest endpoint: agents push batches of cluster events to ``POST /api/v1/events``."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from compliance.roles import AuditorsReadOnly
from fleet.events import ACCEPTED, DUPLICATE, REJECTED, ingest_events
from fleet.models import EventKind

MAX_BATCH_EVENTS = 5000
# A body larger than this is rejected before it is parsed: 5,000 events of about 3 KiB each.
MAX_BODY_BYTES = 16 * 1024 * 1024


class CanPushEvents(BasePermission):
    """Staff, and users with ``fleet.add_clusterevent`` (the agents' accounts), may push events."""

    message = "Pushing events needs staff status or the fleet.add_clusterevent permission."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return user.is_staff or user.has_perm("fleet.add_clusterevent")


# Serializers that describe the request and response in the OpenAPI schema. The view does not run
# them: ``ingest_events`` validates in plain Python, because DRF validation costs more per event
# than the insert itself.


class EventSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=64, help_text="Unique per cluster; a re-sent id is a duplicate.")
    cluster = serializers.CharField(help_text="The cluster's name.")
    sequence = serializers.IntegerField(min_value=1, help_text="Per-cluster order: 1, 2, 3, ... without gaps.")
    kind = serializers.ChoiceField(choices=EventKind.choices)
    occurred_at = serializers.DateTimeField(help_text="ISO 8601 with a time zone.")
    payload = serializers.JSONField(
        help_text=(
            'capacity: {"gpus": {SKU: {"allocatable": int, "in_use": int}}, "complete": bool}; '
            'utilization: {"gpus_in_use": {SKU: int}} or {"deployments": {id: {"gpus_in_use": int}}}; '
            'health: {"status": "ok" | "degraded" | "failing", "message": str}; '
            'traffic: {"deployment_id": int, "requests_per_second": number, "in_flight": number, "origin": str}.'
        )
    )


class EventBatchSerializer(serializers.Serializer):
    events = EventSerializer(many=True, help_text=f"At most {MAX_BATCH_EVENTS} events.")


class EventResultSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the request's list.")
    status = serializers.ChoiceField(choices=[ACCEPTED, DUPLICATE, REJECTED])

    def get_fields(self):
        # Added here because a class attribute named "errors" would hide Serializer.errors.
        fields = super().get_fields()
        fields["errors"] = serializers.DictField(
            child=serializers.CharField(), help_text="Field path -> reason; empty unless rejected."
        )
        fields["waiting"] = serializers.CharField(
            required=False,
            help_text=(
                "Present on a rejected event whose cluster and sequence are valid but whose sequence number is "
                "not stored: the cluster's later events wait until an event with that sequence arrives or "
                "MCM_EVENT_GAP_TIMEOUT_S passes."
            ),
        )
        return fields


class IngestResponseSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = EventResultSerializer(many=True)


class EventIngestView(APIView):
    """Store a batch of events; reply 200 with a status per event, even when some are rejected."""

    permission_classes = [CanPushEvents, AuditorsReadOnly]
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="events_ingest",
        summary="Push a batch of cluster events",
        description=(
            "Stores the valid events and reports each one by index as accepted, duplicate (its "
            "event_id was already stored for the cluster; nothing changes) or rejected (with the field "
            "and the reason). Events are applied later in per-cluster sequence order, so a rejected event "
            "whose sequence number is not stored holds back the cluster's later events until an event with "
            "that sequence arrives or MCM_EVENT_GAP_TIMEOUT_S passes; its result then carries a waiting note. "
            "Replies 200 "
            "whenever the body is a well-formed batch; 400 when it is not; 413 when the body is too large."
        ),
        request=EventBatchSerializer,
        responses={200: IngestResponseSerializer},
        examples=[
            OpenApiExample(
                "One capacity event",
                request_only=True,
                value={
                    "events": [
                        {
                            "event_id": "3f1c2a8e9b7d4c1e",
                            "cluster": "aws-use1-a",
                            "sequence": 42,
                            "kind": "capacity",
                            "occurred_at": "2026-12-04T21:00:00Z",
                            "payload": {"gpus": {"H100": {"allocatable": 16, "in_use": 2}}, "complete": True},
                        }
                    ]
                },
            )
        ],
        tags=["events"],
    )
    def post(self, request):
        content_length = int(request.META.get("CONTENT_LENGTH") or 0)
        if content_length > MAX_BODY_BYTES:
            detail = f"The body has {content_length} bytes; the maximum is {MAX_BODY_BYTES}. Split the batch."
            return Response({"detail": detail}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)

        body = request.data
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            message = 'Required: a JSON object with "events", a list of event objects.'
            return Response({"events": [message]}, status=status.HTTP_400_BAD_REQUEST)
        if len(events) > MAX_BATCH_EVENTS:
            message = f"At most {MAX_BATCH_EVENTS} events per batch; got {len(events)}. Split the batch."
            return Response({"events": [message]}, status=status.HTTP_400_BAD_REQUEST)

        result = ingest_events(actor=request.user, batch=events)
        return Response(result.as_dict(), status=status.HTTP_200_OK)
