"""API for customers' deployments, where their replicas run and why, and (for staff) the plans."""

import django_filters
from django.db.models import Aggregate, Count, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from mcm_site.api import ModelViewSet, ReadOnlyViewSet
from placements.models import (
    Assignment,
    Customer,
    DemandOrigin,
    Deployment,
    DeploymentOutcome,
    PlacementPlan,
    PlanStatus,
    PlanTrigger,
    Tier,
)
from placements.services import (
    INTEGER_FIELDS,
    create_deployment,
    delete_deployment,
    deployment_defaults,
    deployment_explanation,
    deployment_placement,
    update_deployment,
)

# Serializers check the shape of a request. The services check every rule about values.


class NameField(serializers.CharField):
    """A related object written and read as its ``name``."""

    def to_representation(self, value):
        return value.name


class AlternativeSkusField(serializers.ListField):
    child = serializers.CharField()

    def get_attribute(self, instance):
        return [sku.name for sku in instance.alternative_skus.all()]


class RegionPreferenceField(serializers.ListField):
    child = serializers.CharField(help_text="Region key 'provider/code', for example 'aws/us-east-1'.")

    def get_attribute(self, instance):
        # Preferences are prefetched in rank order (the model's default ordering).
        return [str(preference.region) for preference in instance.region_preferences.all()]


class DemandOriginSerializer(serializers.ModelSerializer):
    class Meta:
        model = DemandOrigin
        fields = ["name", "country_code", "latitude", "longitude", "share"]


class DeploymentSerializer(serializers.ModelSerializer):
    customer = NameField(
        required=False,
        help_text="Customer name. Needed on create only when the requester belongs to several customers.",
    )
    tier = serializers.CharField(source="customer.tier", read_only=True)
    # Plain types here, so that range and format errors come from the services and quote the value.
    name = serializers.CharField(help_text="Kubernetes-safe name (a slug), unique per customer.")
    gpus_per_replica = serializers.IntegerField(required=False, help_text="1 to 16; default 1.")
    min_replicas = serializers.IntegerField(required=False, help_text="Default 1; 0 allows scale to zero.")
    desired_replicas = serializers.IntegerField(required=False, help_text="min <= desired <= max; default 1.")
    max_replicas = serializers.IntegerField(required=False, help_text="Default 1.")
    min_providers = serializers.IntegerField(required=False, help_text="Replicas span at least this many providers.")
    min_regions = serializers.IntegerField(required=False, help_text="Replicas span at least this many regions.")
    sku = NameField(help_text="Primary GPU SKU name, for example 'H100'.")
    alternative_skus = AlternativeSkusField(required=False, help_text="Other SKU names a replica may run on.")
    region_preference = RegionPreferenceField(
        required=False, help_text="Preferred regions as 'provider/code' keys, most preferred first."
    )
    demand_origins = DemandOriginSerializer(many=True, required=False)

    class Meta:
        model = Deployment
        fields = [
            "id",
            "customer",
            "tier",
            "name",
            "sku",
            "alternative_skus",
            *INTEGER_FIELDS,
            "region_preference",
            "demand_origins",
            "created_at",
            "updated_at",
        ]
        # The services check uniqueness, with a message that names the value.
        validators: list = []

    def validate(self, attrs):
        user = self.context["request"].user
        requested = attrs.pop("customer", None)
        if self.instance is None:
            attrs["customer"] = resolve_customer(user, requested)
        elif requested is not None and requested != self.instance.customer.name:
            raise serializers.ValidationError({"customer": [f"{requested!r}: a deployment cannot change customer."]})
        return attrs

    def create(self, validated_data):
        customer = validated_data.pop("customer")
        actor = self.context["request"].user
        return create_deployment(actor=actor, customer=customer, data=validated_data)

    def update(self, instance, validated_data):
        if not self.partial:
            validated_data = {**deployment_defaults(), **validated_data}
        actor = self.context["request"].user
        return update_deployment(actor=actor, deployment=instance, data=validated_data)


def resolve_customer(user, requested: str | None) -> Customer:
    """Return the customer a new deployment belongs to: the requester's, or the one they named."""
    customers = Customer.objects.all() if user.is_staff else user.customers.all()
    if requested:
        customer = customers.filter(name=requested).first()
        if customer is None:
            raise serializers.ValidationError(
                {"customer": [f"Customer {requested!r} not found among the customers your account belongs to."]}
            )
        return customer
    candidates = list(customers.order_by("name")[:2])
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise serializers.ValidationError(
            {"customer": ["Your account belongs to no customer. Ask staff to add it to one."]}
        )
    raise serializers.ValidationError(
        {"customer": ["Your account belongs to several customers, so set customer to the name of one."]}
    )


class PlacementRowSerializer(serializers.Serializer):
    cluster = serializers.CharField()
    provider = serializers.CharField()
    region = serializers.CharField(help_text="'provider/code'.")
    sku = serializers.CharField()
    replicas = serializers.IntegerField()


class DeploymentPlacementSerializer(serializers.Serializer):
    plan_id = serializers.IntegerField(allow_null=True, help_text="Null when no plan has been applied yet.")
    plan_version = serializers.IntegerField(allow_null=True)
    placed_replicas = serializers.IntegerField()
    unmet_replicas = serializers.IntegerField(
        allow_null=True, help_text="Null when the current plan predates the deployment."
    )
    assignments = PlacementRowSerializer(many=True)


class DeploymentExplanationSerializer(serializers.Serializer):
    plan_id = serializers.IntegerField(allow_null=True)
    plan_version = serializers.IntegerField(allow_null=True)
    explanation = serializers.JSONField(
        allow_null=True, help_text="Why each cluster was or was not used; null until a plan covers the deployment."
    )


class PlacementPlanSerializer(serializers.ModelSerializer):
    assignment_count = serializers.IntegerField(read_only=True)
    placed_replicas = serializers.IntegerField(read_only=True)
    unmet_replicas = serializers.IntegerField(read_only=True)

    class Meta:
        model = PlacementPlan
        fields = [
            "id",
            "version",
            "status",
            "trigger",
            "parameters",
            "inputs_digest",
            "objective",
            "objective_terms",
            "bound",
            "gap",
            "greedy_objective",
            "solver",
            "solver_status",
            "build_seconds",
            "solve_seconds",
            "summary",
            "error",
            "created_at",
            "applied_at",
            "assignment_count",
            "placed_replicas",
            "unmet_replicas",
        ]


# Filtersets.


class DeploymentFilter(django_filters.FilterSet):
    customer_id = django_filters.NumberFilter()
    customer = django_filters.CharFilter(field_name="customer__name")
    tier = django_filters.ChoiceFilter(field_name="customer__tier", choices=Tier.choices)
    sku_id = django_filters.NumberFilter()
    sku = django_filters.CharFilter(field_name="sku__name")
    q = django_filters.CharFilter(method="search", label="Search deployment and customer name")

    class Meta:
        model = Deployment
        fields = ["name"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(customer__name__icontains=value))


class PlacementPlanFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=PlanStatus.choices)
    trigger = django_filters.ChoiceFilter(choices=PlanTrigger.choices)
    q = django_filters.CharFilter(method="search", label="Search solver, solver status and error")

    class Meta:
        model = PlacementPlan
        fields = ["version"]

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(solver__icontains=value) | Q(solver_status__icontains=value) | Q(error__icontains=value)
        )


# Viewsets.


@extend_schema_view(destroy=extend_schema(responses={204: OpenApiResponse(description="Deleted.")}))
class DeploymentViewSet(ModelViewSet):
    queryset = Deployment.objects.select_related("customer", "sku").prefetch_related(
        "alternative_skus", "region_preferences__region__provider", "demand_origins"
    )
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter
    ordering_fields = ["name", "created_at", "updated_at", "desired_replicas"]

    def perform_destroy(self, instance):
        delete_deployment(actor=self.request.user, deployment=instance)

    @extend_schema(responses=DeploymentPlacementSerializer)
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def placement(self, request, pk=None):
        """Return where the current applied plan runs this deployment's replicas, and how many it could not place."""
        return Response(deployment_placement(self.get_object()))

    @extend_schema(responses=DeploymentExplanationSerializer)
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def explanation(self, request, pk=None):
        """Return why the current applied plan chose each cluster for this deployment, and why not the others."""
        return Response(deployment_explanation(self.get_object()))


def plan_total(model, aggregate: Aggregate) -> Coalesce:
    """Return ``aggregate`` over a plan's ``model`` rows, as a subquery so two totals' joins do not multiply."""
    totals = model.objects.filter(plan=OuterRef("pk")).order_by().values("plan").annotate(total=aggregate)
    return Coalesce(Subquery(totals.values("total"), output_field=IntegerField()), 0)


class PlacementPlanViewSet(ReadOnlyViewSet):
    queryset = PlacementPlan.objects.annotate(
        assignment_count=plan_total(Assignment, Count("pk")),
        placed_replicas=plan_total(Assignment, Sum("replicas")),
        unmet_replicas=plan_total(DeploymentOutcome, Sum("unmet_replicas")),
    )
    serializer_class = PlacementPlanSerializer
    filterset_class = PlacementPlanFilter
    permission_classes = [IsAdminUser]
    ordering_fields = ["version", "created_at", "applied_at", "objective", "solve_seconds"]
