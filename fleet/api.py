"""API over the pool's inventory (providers, regions, GPU SKUs, clusters, capacity), outages and alerts.

The inventory is read-only to everyone signed in. Staff with the ops role (``compliance.roles``)
cordon, uncordon and drain clusters, and declare and clear outages, through ``fleet.operations``,
so every change is audited and re-planned. Outages and alerts are staff-only.
"""

import django_filters
from django.db.models import Q
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from compliance.roles import CanClearOutages, CanDeclareOutages, CanOperateClusters
from fleet import operations
from fleet.availability import AvailabilityReader
from fleet.models import (
    Alert,
    AlertSeverity,
    Cluster,
    ClusterCapacity,
    ClusterHealth,
    ClusterState,
    GpuSku,
    Outage,
    OutageScope,
    OutageSource,
    PricingModel,
    Provider,
    Region,
)
from mcm_site.api import ReadOnlyViewSet, ScopedViewSetMixin

# Serializers. Cluster credentials and API endpoints stay out: fields are listed one by one.


class ProviderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Provider
        fields = ["id", "name", "display_name"]


class RegionSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True)
    provider_id = serializers.IntegerField(read_only=True)
    key = serializers.CharField(source="__str__", read_only=True, help_text="'provider/code', as deployments use it.")

    class Meta:
        model = Region
        fields = [
            "id",
            "key",
            "provider",
            "provider_id",
            "code",
            "display_name",
            "city",
            "country",
            "country_code",
            "jurisdiction",
            "latitude",
            "longitude",
            "location_source",
        ]


class GpuSkuSerializer(serializers.ModelSerializer):
    class Meta:
        model = GpuSku
        fields = ["id", "name", "memory_gib", "aliases"]


class ClusterSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="region.provider.name", read_only=True)
    region = serializers.CharField(source="region.__str__", read_only=True, help_text="'provider/code'.")
    region_id = serializers.IntegerField(read_only=True)
    placement = serializers.SerializerMethodField(
        help_text="What placement may do with the cluster now, from its state, health and open outages: "
        "mode 'schedulable', 'holding' (keeps its replicas, takes no new ones), 'draining' or 'lost', and why."
    )

    class Meta:
        model = Cluster
        fields = [
            "id",
            "name",
            "provider",
            "region",
            "region_id",
            "state",
            "placement",
            "health",
            "health_reason",
            "health_changed_at",
            "healthy_since",
            "first_missed_heartbeat_at",
            "last_heartbeat_at",
            "capabilities",
            "created_at",
        ]
        # State changes go through the cordon, uncordon and drain actions; health is judged by MCM.
        read_only_fields = fields

    @extend_schema_field({"type": "object", "properties": {"mode": {"type": "string"}, "reason": {"type": "string"}}})
    def get_placement(self, cluster: Cluster) -> dict:
        # One reader per response, so a page of clusters reads the outages once.
        reader = getattr(self.root, "_availability_reader", None)
        if reader is None:
            reader = self.root._availability_reader = AvailabilityReader()
        state = reader(cluster)
        return {"mode": state.mode, "reason": state.reason}


class ClusterCapacitySerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name", read_only=True)
    cluster_id = serializers.IntegerField(read_only=True)
    provider = serializers.CharField(source="cluster.region.provider.name", read_only=True)
    region = serializers.CharField(source="cluster.region.__str__", read_only=True, help_text="'provider/code'.")
    sku = serializers.CharField(source="sku.name", read_only=True)
    sku_id = serializers.IntegerField(read_only=True)
    free_gpus = serializers.IntegerField(read_only=True, help_text="Allocatable GPUs minus GPUs in use.")

    class Meta:
        model = ClusterCapacity
        fields = [
            "id",
            "cluster",
            "cluster_id",
            "provider",
            "region",
            "sku",
            "sku_id",
            "total_gpus",
            "allocatable_gpus",
            "in_use_gpus",
            "free_gpus",
            "hourly_price_per_gpu",
            "pricing_model",
            "updated_at",
        ]


class ReasonSerializer(serializers.Serializer):
    """The body of an operator action: why it is taken, for the audit trail."""

    reason = serializers.CharField(
        allow_blank=True, help_text="Why the action is taken; stored in the audit trail. Must not be blank."
    )

    def validate_reason(self, value):
        try:
            return operations.clean_reason(value)
        except operations.OperationError as error:
            raise serializers.ValidationError(error.message) from error

    @classmethod
    def read(cls, request) -> str:
        """Return the request's cleaned reason; raise a 400 naming the field when it is missing or blank."""
        serializer = cls(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data["reason"]


def run_operation(operation, *args, **kwargs):
    """Call a ``fleet.operations`` control; turn its ``OperationError`` into a 400 keyed by the field at fault."""
    try:
        return operation(*args, **kwargs)
    except operations.OperationError as error:
        raise serializers.ValidationError({error.field: [error.message]}) from error


class OutageSerializer(serializers.ModelSerializer):
    cluster = serializers.CharField(source="cluster.name", read_only=True, allow_null=True, default=None)
    region = serializers.SerializerMethodField(help_text="'provider/code', for a region outage.")
    provider = serializers.CharField(source="provider.name", read_only=True, allow_null=True, default=None)
    target = serializers.CharField(read_only=True, help_text="Name of the cluster, region or provider.")
    is_open = serializers.BooleanField(read_only=True)

    class Meta:
        model = Outage
        fields = [
            "id",
            "scope",
            "target",
            "cluster",
            "cluster_id",
            "region",
            "region_id",
            "provider",
            "provider_id",
            "source",
            "reason",
            "declared_by",
            "started_at",
            "cleared_at",
            "cleared_by",
            "is_open",
        ]
        read_only_fields = fields

    def get_region(self, outage) -> str | None:
        return str(outage.region) if outage.region_id else None


class OutageDeclareSerializer(serializers.Serializer):
    """A declared outage: its scope, the one target that scope names, and the reason."""

    scope = serializers.CharField(help_text="'cluster', 'region' or 'provider'.")
    cluster = serializers.CharField(required=False, help_text="Cluster name or id, for a cluster outage.")
    region = serializers.CharField(required=False, help_text="Region key 'provider/code' or id, for a region outage.")
    provider = serializers.CharField(required=False, help_text="Provider name or id, for a provider outage.")
    reason = serializers.CharField(allow_blank=True, help_text="Why; stored in the audit trail. Must not be blank.")

    def validate(self, attrs):
        scope = attrs["scope"]
        if scope not in OutageScope.values:
            raise serializers.ValidationError(
                {"scope": [f"{scope!r} is not a valid scope: use one of {', '.join(OutageScope.values)}."]}
            )
        others = [name for name in OutageScope.values if name != scope and attrs.get(name) not in (None, "")]
        if others:
            raise serializers.ValidationError(
                {name: [f"{attrs[name]!r} does not apply to a {scope} outage; leave {name} out."] for name in others}
            )
        value = attrs.get(scope)
        if value in (None, ""):
            raise serializers.ValidationError({scope: [f"A {scope} outage needs {scope}; it is missing."]})
        attrs["target"] = resolve_target(scope, value)
        return attrs


def resolve_target(scope: str, value: str):
    """Return the cluster, region or provider that ``value`` (a name, region key or id) names."""
    if scope == OutageScope.CLUSTER:
        queryset, condition = Cluster.objects.all(), Q(name=value)
    elif scope == OutageScope.REGION:
        provider, _, code = value.rpartition("/")
        queryset, condition = Region.objects.select_related("provider"), Q(provider__name=provider, code=code)
    else:
        queryset, condition = Provider.objects.all(), Q(name=value)
    if value.isdigit():
        condition |= Q(pk=int(value))
    target = queryset.filter(condition).first()
    if target is None:
        hint = " Use 'provider/code', for example 'aws/us-east-1'." if scope == OutageScope.REGION else ""
        raise serializers.ValidationError({scope: [f"{scope.capitalize()} {value!r} not found.{hint}"]})
    return target


class AlertSerializer(serializers.ModelSerializer):
    is_open = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = [
            "id",
            "kind",
            "severity",
            "subject_type",
            "subject_id",
            "subject_label",
            "message",
            "raised_at",
            "resolved_at",
            "is_open",
        ]
        read_only_fields = fields

    def get_is_open(self, alert) -> bool:
        return alert.resolved_at is None


# Filtersets: each foreign key filters by ``x_id`` and by ``x`` (its name), and ``q`` searches text.


def filter_region_key(queryset, prefix: str, value: str):
    """Filter by a region given as its code (``us-east-1``) or its key (``aws/us-east-1``)."""
    provider, _, code = value.rpartition("/")
    condition = Q(**{f"{prefix}code": code})
    if provider:
        condition &= Q(**{f"{prefix}provider__name": provider})
    return queryset.filter(condition)


class ProviderFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label="Search name and display name")

    class Meta:
        model = Provider
        fields = ["name"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(display_name__icontains=value))


class RegionFilter(django_filters.FilterSet):
    provider_id = django_filters.NumberFilter()
    provider = django_filters.CharFilter(field_name="provider__name")
    q = django_filters.CharFilter(method="search", label="Search code, name, city and country")

    class Meta:
        model = Region
        fields = ["code", "country_code", "jurisdiction", "location_source"]

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(code__icontains=value)
            | Q(display_name__icontains=value)
            | Q(city__icontains=value)
            | Q(country__icontains=value)
        )


class GpuSkuFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(field_name="name", lookup_expr="icontains", label="Search SKU name")

    class Meta:
        model = GpuSku
        fields = ["name"]


class ClusterFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=ClusterState.choices)
    health = django_filters.ChoiceFilter(choices=ClusterHealth.choices)
    region_id = django_filters.NumberFilter()
    region = django_filters.CharFilter(method="filter_region", label="Region code or 'provider/code'")
    provider_id = django_filters.NumberFilter(field_name="region__provider_id")
    provider = django_filters.CharFilter(field_name="region__provider__name")
    q = django_filters.CharFilter(method="search", label="Search cluster name and region code")

    class Meta:
        model = Cluster
        fields = ["name"]

    def filter_region(self, queryset, name, value):
        return filter_region_key(queryset, "region__", value)

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(region__code__icontains=value))


class ClusterCapacityFilter(django_filters.FilterSet):
    cluster_id = django_filters.NumberFilter()
    cluster = django_filters.CharFilter(field_name="cluster__name")
    sku_id = django_filters.NumberFilter()
    sku = django_filters.CharFilter(field_name="sku__name")
    region_id = django_filters.NumberFilter(field_name="cluster__region_id")
    region = django_filters.CharFilter(method="filter_region", label="Region code or 'provider/code'")
    provider_id = django_filters.NumberFilter(field_name="cluster__region__provider_id")
    provider = django_filters.CharFilter(field_name="cluster__region__provider__name")
    pricing_model = django_filters.ChoiceFilter(choices=PricingModel.choices)
    q = django_filters.CharFilter(method="search", label="Search cluster and SKU name")

    class Meta:
        model = ClusterCapacity
        fields: list[str] = []

    def filter_region(self, queryset, name, value):
        return filter_region_key(queryset, "cluster__region__", value)

    def search(self, queryset, name, value):
        return queryset.filter(Q(cluster__name__icontains=value) | Q(sku__name__icontains=value))


class OutageFilter(django_filters.FilterSet):
    scope = django_filters.ChoiceFilter(choices=OutageScope.choices)
    source = django_filters.ChoiceFilter(choices=OutageSource.choices)
    open = django_filters.BooleanFilter(field_name="cleared_at", lookup_expr="isnull", label="Not cleared yet")
    cluster_id = django_filters.NumberFilter()
    cluster = django_filters.CharFilter(field_name="cluster__name")
    region_id = django_filters.NumberFilter()
    provider_id = django_filters.NumberFilter()
    provider = django_filters.CharFilter(field_name="provider__name")

    class Meta:
        model = Outage
        fields: list[str] = []


class AlertFilter(django_filters.FilterSet):
    open = django_filters.BooleanFilter(field_name="resolved_at", lookup_expr="isnull", label="Not resolved yet")
    kind = django_filters.CharFilter()
    severity = django_filters.ChoiceFilter(choices=AlertSeverity.choices)
    subject_type = django_filters.CharFilter()
    subject_id = django_filters.CharFilter()

    class Meta:
        model = Alert
        fields: list[str] = []


# Viewsets.


class ProviderViewSet(ReadOnlyViewSet):
    queryset = Provider.objects.all()
    serializer_class = ProviderSerializer
    filterset_class = ProviderFilter
    ordering_fields = ["name"]


class RegionViewSet(ReadOnlyViewSet):
    queryset = Region.objects.select_related("provider")
    serializer_class = RegionSerializer
    filterset_class = RegionFilter
    ordering_fields = ["code", "country_code", "jurisdiction"]


class GpuSkuViewSet(ReadOnlyViewSet):
    queryset = GpuSku.objects.all()
    serializer_class = GpuSkuSerializer
    filterset_class = GpuSkuFilter
    ordering_fields = ["name", "memory_gib"]


class ClusterViewSet(ReadOnlyViewSet):
    queryset = Cluster.objects.select_related("region__provider")
    serializer_class = ClusterSerializer
    filterset_class = ClusterFilter
    ordering_fields = ["name", "state", "health", "created_at"]

    @extend_schema(request=ReasonSerializer, responses=ClusterSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser, CanOperateClusters], filter_backends=[])
    def cordon(self, request, pk=None):
        """Stop placing new replicas on the cluster; its running replicas stay. Needs the ops role."""
        return self.change_state(request, operations.cordon)

    @extend_schema(request=ReasonSerializer, responses=ClusterSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser, CanOperateClusters], filter_backends=[])
    def uncordon(self, request, pk=None):
        """Make a cordoned, draining or down cluster active again. Needs the ops role."""
        return self.change_state(request, operations.uncordon)

    @extend_schema(request=ReasonSerializer, responses=ClusterSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser, CanOperateClusters], filter_backends=[])
    def drain(self, request, pk=None):
        """Move every replica off the cluster, make-before-break, through the next plan. Needs the ops role."""
        return self.change_state(request, operations.drain)

    def change_state(self, request, operation):
        cluster = self.get_object()
        reason = ReasonSerializer.read(request)
        cluster = run_operation(operation, cluster, actor=request.user, reason=reason)
        return Response(self.get_serializer(cluster).data)


class ClusterCapacityViewSet(ReadOnlyViewSet):
    queryset = ClusterCapacity.objects.select_related("cluster__region__provider", "sku")
    serializer_class = ClusterCapacitySerializer
    filterset_class = ClusterCapacityFilter
    ordering_fields = ["allocatable_gpus", "hourly_price_per_gpu", "updated_at"]


class StaffOnlyMixin:
    """For models without ``visible_to``: staff see every row, and ``IsAdminUser`` turns others away."""

    permission_classes = [IsAdminUser]

    def get_queryset(self):
        queryset = self.queryset.all()  # type: ignore[attr-defined]
        return queryset if self.request.user.is_staff else queryset.none()  # type: ignore[attr-defined]


class OutageViewSet(
    StaffOnlyMixin,
    ScopedViewSetMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Declared and detected outages, read by staff. The ops role declares one with POST, clears it with ``clear``."""

    queryset = Outage.objects.select_related("cluster", "region__provider", "provider")
    serializer_class = OutageSerializer
    filterset_class = OutageFilter
    ordering_fields = ["started_at", "cleared_at", "scope"]

    def get_permissions(self):
        # Reading needs staff status; declaring and clearing need the ops role.
        extra = {"create": [CanDeclareOutages()], "clear": [CanClearOutages()]}.get(self.action, [])
        return [*super().get_permissions(), *extra]

    @extend_schema(request=OutageDeclareSerializer, responses={201: OutageSerializer})
    def create(self, request, *args, **kwargs):
        """Declare an outage: every cluster it covers counts as lost until it is cleared. Needs the ops role."""
        serializer = OutageDeclareSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        outage = run_operation(
            operations.declare_outage,
            scope=data["scope"],
            target=data["target"],
            actor=request.user,
            reason=data["reason"],
        )
        return Response(OutageSerializer(outage).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ReasonSerializer, responses=OutageSerializer)
    @action(detail=True, methods=["post"], filter_backends=[])
    def clear(self, request, pk=None):
        """Clear an open outage; its clusters return to placement after the failback period. Needs the ops role."""
        outage = self.get_object()
        reason = ReasonSerializer.read(request)
        outage = run_operation(operations.clear_outage, outage, actor=request.user, reason=reason)
        return Response(OutageSerializer(outage).data)


class AlertViewSet(StaffOnlyMixin, ScopedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Alerts raised for staff; they resolve when their condition ends."""

    queryset = Alert.objects.all()
    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    ordering_fields = ["raised_at", "resolved_at", "kind", "severity"]
