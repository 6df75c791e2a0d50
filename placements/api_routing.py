"""Latency-aware routes of a deployment for one client location, and a minimal endpoint to compare it with.

``GET /api/v1/deployments/{id}/route/?latitude=52.5&longitude=13.4`` (or ``?country=DE``, or
``?region=aws/eu-central-1``) returns the ranked clusters of ``placements.routing``. The
deployment's customer members and staff may read it; other users get 404, as for the
deployment itself.
"""

from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import APIView

from placements.models import Deployment
from placements.routing import resolve_location, routes_for


class ClientSerializer(serializers.Serializer):
    latitude = serializers.FloatField()
    longitude = serializers.FloatField()
    label = serializers.CharField()
    source = serializers.CharField(help_text='How the location was found: "coordinates", "country DE: Berlin", ...')


class RouteSerializer(serializers.Serializer):
    cluster = serializers.CharField(help_text="The cluster's name.")
    cluster_id = serializers.IntegerField()
    provider = serializers.CharField()
    region = serializers.CharField(help_text="provider/code")
    latitude = serializers.FloatField()
    longitude = serializers.FloatField()
    distance_km = serializers.FloatField(help_text="Great-circle distance from the client.")
    rtt_ms = serializers.FloatField(help_text="Round-trip time estimated from the distance, not measured.")
    ready_replicas = serializers.IntegerField()
    spare_requests_per_second = serializers.FloatField(
        help_text="Ready replicas x requests per second per replica, minus the measured traffic there."
    )
    weight = serializers.FloatField(help_text="Share of this client's requests to send here; the weights sum to 1.")
    health = serializers.CharField(help_text="healthy, or suspect when no healthy cluster serves.")


class ExcludedSerializer(serializers.Serializer):
    cluster = serializers.CharField()
    reason = serializers.CharField()


class RouteAnswerSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    client = ClientSerializer()
    source = serializers.ChoiceField(
        choices=["cache", "database"], help_text="cache: the route table in Redis; database: computed for this request."
    )
    refreshed_at = serializers.DateTimeField(help_text="When the serving clusters were last read from the database.")
    routes = RouteSerializer(many=True, help_text="Clusters with spare capacity nearest first, then full ones.")
    excluded = ExcludedSerializer(many=True, help_text="Clusters that run or are planned to run it, but are no route.")
    note = serializers.CharField(
        allow_null=True,
        help_text="Null when there are routes. Otherwise why there is none: scaled to zero (the first request "
        "waits for a replica to start, see cold_start), no ready replica yet, or every serving cluster down.",
    )


LOCATION_PARAMETERS = [
    OpenApiParameter("latitude", float, description="Client latitude in degrees; needs longitude."),
    OpenApiParameter("longitude", float, description="Client longitude in degrees; needs latitude."),
    OpenApiParameter("country", str, description="ISO 3166-1 alpha-2 code; located at its most populous place."),
    OpenApiParameter("region", str, description="An MCM region as provider/code, for example aws/eu-central-1."),
]


class DeploymentRouteView(APIView):
    """The ranked healthy clusters that serve a deployment, for one client location."""

    @extend_schema(parameters=LOCATION_PARAMETERS, responses=RouteAnswerSerializer, operation_id="deployments_route")
    def get(self, request, pk: int):
        visible = Deployment.objects.visible_to(request.user).only("pk")
        deployment = get_object_or_404(visible, pk=pk)
        params = request.query_params
        try:
            location = resolve_location(
                latitude=params.get("latitude"),
                longitude=params.get("longitude"),
                country=params.get("country"),
                region=params.get("region"),
            )
        except ValidationError as error:
            return Response(as_serializer_error(error), status=status.HTTP_400_BAD_REQUEST)
        return Response(routes_for(deployment.pk, location))


class PingView(APIView):
    """A minimal authenticated endpoint: the baseline of the route benchmark."""

    @extend_schema(responses=inline_serializer("Ping", {"ok": serializers.BooleanField()}), operation_id="ping")
    def get(self, request):
        return Response({"ok": True})
