"""A deployment's measured traffic: the summary of a recent window and the samples behind it.

``GET /api/v1/deployments/{id}/traffic/?window_s=300`` returns what ``placements.traffic.window_traffic``
computes for the window, with cluster names in place of ids, and the deployment's samples, newest
first, paginated and filtered by cluster, origin, source and time. The deployment's customer
members and staff may read it; other users get 404, as for the deployment itself.
"""

import django_filters
from django.shortcuts import get_object_or_404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from fleet.models import Cluster
from mcm_site.api import UtcIsoDateTimeFilter
from placements.models import Deployment, TrafficSample, TrafficSource
from placements.traffic import window_traffic

DEFAULT_WINDOW_S = 300
# NOTE: a chosen bound, not a measured one: a day of samples of one deployment is one grouped query
# over the (deployment, observed_at) index, and older traffic may be pruned anyway.
MAX_WINDOW_S = 86400


class TrafficQuerySerializer(serializers.Serializer):
    window_s = serializers.IntegerField(
        required=False,
        default=DEFAULT_WINDOW_S,
        min_value=1,
        max_value=MAX_WINDOW_S,
        help_text=f"Seconds of traffic to summarise, ending now; 1 to {MAX_WINDOW_S}, default {DEFAULT_WINDOW_S}.",
    )


class TrafficWindowSerializer(serializers.Serializer):
    requests_per_second = serializers.FloatField(help_text="Mean requests per second over the window, all series.")
    in_flight = serializers.FloatField(
        allow_null=True, help_text="Mean in-flight requests; null when no sample in the window reported them."
    )
    by_cluster = serializers.DictField(child=serializers.FloatField(), help_text="Cluster name -> requests per second.")
    in_flight_by_cluster = serializers.DictField(
        child=serializers.FloatField(), help_text="Cluster name -> in-flight requests."
    )
    by_origin = serializers.DictField(
        child=serializers.FloatField(), help_text='Origin -> requests per second; "" is traffic without an origin.'
    )
    samples = serializers.IntegerField(help_text="Samples the summary is computed from.")
    newest_at = serializers.DateTimeField(allow_null=True)


class TrafficSampleSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(
        source="cluster.name", allow_null=True, default=None, help_text="Null for a report of the whole deployment."
    )

    class Meta:
        model = TrafficSample
        fields = ["id", "observed_at", "cluster", "cluster_id", "origin", "requests_per_second", "in_flight", "source"]


class DeploymentTrafficSerializer(serializers.Serializer):
    deployment = serializers.IntegerField()
    window_s = serializers.IntegerField()
    window = TrafficWindowSerializer(allow_null=True, help_text="Null when the window has no sample.")
    count = serializers.IntegerField(help_text="Samples that match the filters.")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = TrafficSampleSerializer(many=True, help_text="Samples, newest first.")


class TrafficSampleFilter(django_filters.FilterSet):
    cluster_id = django_filters.NumberFilter()
    cluster = django_filters.CharFilter(field_name="cluster__name")
    origin = django_filters.CharFilter()
    source = django_filters.ChoiceFilter(choices=TrafficSource.choices)
    since = UtcIsoDateTimeFilter(field_name="observed_at", lookup_expr="gte")

    class Meta:
        model = TrafficSample
        fields: list[str] = []


PARAMETERS = [
    OpenApiParameter("window_s", int, description=TrafficQuerySerializer().fields["window_s"].help_text),
    OpenApiParameter("cluster_id", int, description="Only samples from this cluster id."),
    OpenApiParameter("cluster", str, description="Only samples from the cluster with this name."),
    OpenApiParameter("origin", str, description="Only samples from this origin."),
    OpenApiParameter("source", str, enum=TrafficSource.values, description="Only pulled or only pushed samples."),
    OpenApiParameter("since", str, description="Only samples observed at or after this ISO 8601 time."),
    OpenApiParameter("limit", int, description="Samples per page; default 50."),
    OpenApiParameter("offset", int, description="Samples to skip."),
]


class DeploymentTrafficView(GenericAPIView):
    """A deployment's traffic over a recent window, and its samples."""

    serializer_class = TrafficSampleSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = TrafficSampleFilter

    def get_queryset(self):
        return TrafficSample.objects.filter(deployment_id=self.kwargs["pk"]).select_related("cluster")

    @extend_schema(parameters=PARAMETERS, responses=DeploymentTrafficSerializer, operation_id="deployments_traffic")
    def get(self, request, pk: int):
        deployment = get_object_or_404(Deployment.objects.visible_to(request.user).only("pk"), pk=pk)
        query = TrafficQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        window_s = query.validated_data["window_s"]

        window = window_traffic([deployment.pk], window_s=window_s).get(deployment.pk)
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        samples = self.get_paginated_response(self.get_serializer(page, many=True).data).data
        return Response({"deployment": deployment.pk, "window_s": window_s, "window": window_body(window), **samples})


def window_body(window) -> dict | None:
    """Return a window summary for the response, with cluster names in place of cluster ids."""
    if window is None:
        return None
    cluster_ids = window.by_cluster.keys() | window.in_flight_by_cluster.keys()
    names = dict(Cluster.objects.filter(pk__in=cluster_ids).values_list("pk", "name"))
    return {
        "requests_per_second": window.requests_per_second,
        "in_flight": window.in_flight,
        "by_cluster": {names.get(cluster_id, str(cluster_id)): rps for cluster_id, rps in window.by_cluster.items()},
        "in_flight_by_cluster": {
            names.get(cluster_id, str(cluster_id)): value for cluster_id, value in window.in_flight_by_cluster.items()
        },
        "by_origin": window.by_origin,
        "samples": window.samples,
        "newest_at": window.newest_at,
    }
