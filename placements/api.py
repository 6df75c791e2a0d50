"""API for customers' deployments, where their replicas run and why, their failover requests, and (for staff) the plans.

Staff approve or reject failover requests through ``placements.failover`` and preview a re-plan
through ``fleet.operations``, so every decision is audited.
"""

from collections.abc import Mapping
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Aggregate, Count, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from compliance.api_locks import EffectiveLockSerializer
from compliance.lock_services import effective_lock
from compliance.roles import CanDecideFailovers, CanReplan, StaffWritesNeedModelPermission
from compliance.services import record_event
from fleet import operations
from fleet.api import ReasonSerializer, run_operation
from fleet.models import Cluster, Provider, Region
from mcm_site.api import ModelViewSet, ReadOnlyViewSet
from placements import failover
from placements.api_autoscaling import (
    AutoscalingPolicySerializer,
    ColdStartSerializer,
    ScalingDecisionSerializer,
    nest_policy_errors,
)
from placements.autoscaling_policy import cold_start_note
from placements.explain import DeploymentExplainSerializer, explain_for_customer
from placements.models import (
    Assignment,
    Customer,
    DemandOrigin,
    Deployment,
    DeploymentCondition,
    DeploymentOutcome,
    FailoverKind,
    FailoverPolicy,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    PlanStatus,
    PlanTrigger,
    ScalingDecision,
    SpreadMode,
    Tier,
)
from placements.services import (
    INTEGER_FIELDS,
    create_deployment,
    current_plan,
    delete_deployment,
    deployment_defaults,
    deployment_explanation,
    deployment_placement,
    update_deployment,
)

# Failover policy of a deployment. The deployment services do not store these fields yet, so the
# API and the admin write them here, in the transaction of the deployment write, with their own
# audit event.
# TODO: move into placements.services.validate_deployment_fields and update_deployment once they
# store these fields, so that deployment.created and deployment.updated record them.
POLICY_FIELDS = ("spread_mode", "failover_policy", "approval_timeout_s", "failback_policy")
POLICY_CHOICES = {
    "spread_mode": SpreadMode.values,
    "failover_policy": FailoverPolicy.values,
    "failback_policy": FailoverPolicy.values,
}
# NOTE: the one-day maximum is a chosen limit, not a measured one. A longer emergency time-out would
# leave replicas on a lost cluster down for longer than an approval is likely worth.
APPROVAL_TIMEOUT_RANGE_S = (1, 86400)


def policy_defaults() -> dict:
    template = Deployment()
    return {field: getattr(template, field) for field in POLICY_FIELDS}


def validate_policy(values: Mapping[str, Any]) -> dict:
    """Check failover policy fields; raise ``ValidationError`` keyed by field, quoting the rejected value."""
    errors: dict[str, list[str]] = {}
    for field, choices in POLICY_CHOICES.items():
        if field in values and values[field] not in choices:
            errors[field] = [f"{values[field]!r} is not valid: use one of {', '.join(choices)}."]
    if "approval_timeout_s" in values:
        value = values["approval_timeout_s"]
        low, high = APPROVAL_TIMEOUT_RANGE_S
        if isinstance(value, bool) or not isinstance(value, int):
            errors["approval_timeout_s"] = [f"{value!r} is not an integer number of seconds."]
        elif not low <= value <= high:
            errors["approval_timeout_s"] = [f"{value} is out of range: use {low} to {high} seconds."]
    if errors:
        raise ValidationError(errors)
    return {field: values[field] for field in POLICY_FIELDS if field in values}


def update_policy(*, actor, deployment: Deployment, values: Mapping[str, Any]) -> Deployment:
    """Store a deployment's failover policy fields, audited as ``deployment.policy_updated`` when they change."""
    cleaned = validate_policy(values)
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        before = {field: getattr(locked, field) for field in POLICY_FIELDS}
        changed = [field for field, value in cleaned.items() if before[field] != value]
        if changed:
            for field in changed:
                setattr(locked, field, cleaned[field])
            locked.save(update_fields=[*changed, "updated_at"])
            record_event(
                actor=actor,
                action="deployment.policy_updated",
                subject=locked,
                before=before,
                after={field: getattr(locked, field) for field in POLICY_FIELDS},
            )
    for field in POLICY_FIELDS:
        setattr(deployment, field, getattr(locked, field))
    return deployment


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
    min_replicas = serializers.IntegerField(
        required=False,
        help_text="Default 1; at most max_replicas. With autoscaling, 0 goes with autoscaling.scale_to_zero.",
    )
    desired_replicas = serializers.IntegerField(
        required=False,
        help_text="min <= desired <= max; default 1. Set by the autoscaler while autoscaling.enabled is true.",
    )
    max_replicas = serializers.IntegerField(required=False, help_text="Default 1.")
    min_providers = serializers.IntegerField(required=False, help_text="Replicas span at least this many providers.")
    min_regions = serializers.IntegerField(required=False, help_text="Replicas span at least this many regions.")
    sku = NameField(help_text="Primary GPU SKU name, for example 'H100'.")
    alternative_skus = AlternativeSkusField(required=False, help_text="Other SKU names a replica may run on.")
    region_preference = RegionPreferenceField(
        required=False, help_text="Preferred regions as 'provider/code' keys, most preferred first."
    )
    demand_origins = DemandOriginSerializer(many=True, required=False)
    spread_mode = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="'hard' (stay degraded rather than break the spread rule) or 'soft'; default hard.",
    )
    failover_policy = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="'automatic' or 'approval' (staff approve, with an emergency time-out).",
    )
    approval_timeout_s = serializers.IntegerField(
        required=False,
        help_text=f"Seconds an undecided failover waits before it proceeds, {APPROVAL_TIMEOUT_RANGE_S[0]} to "
        f"{APPROVAL_TIMEOUT_RANGE_S[1]}; default 900.",
    )
    failback_policy = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="'automatic' or 'approval': how replicas return to a recovered cluster.",
    )
    autoscaling = AutoscalingPolicySerializer(
        required=False,
        allow_null=True,
        help_text="The autoscaling policy; null for none (a PUT without it removes it).",
    )
    cold_start = serializers.SerializerMethodField(
        help_text="Null unless desired_replicas is 0: then the first request waits for a replica to start."
    )
    placed_replicas = serializers.SerializerMethodField(help_text="Replicas the current plan places.")
    unmet_replicas = serializers.SerializerMethodField(
        help_text="Replicas the current plan could not place (the shortfall); null until a plan covers the deployment."
    )
    effective_lock = serializers.SerializerMethodField(
        help_text="Intersection of the platform, customer and deployment locks: each part's values (null: any) "
        "and the ids of the locks it comes from."
    )

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
            *POLICY_FIELDS,
            "autoscaling",
            "cold_start",
            "condition",
            "condition_reason",
            "condition_since",
            "placed_replicas",
            "unmet_replicas",
            "effective_lock",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["condition", "condition_reason", "condition_since"]
        # The services check uniqueness, with a message that names the value.
        validators: list = []

    @extend_schema_field(ColdStartSerializer(allow_null=True))
    def get_cold_start(self, deployment) -> dict | None:
        return cold_start_note(deployment)

    def get_placed_replicas(self, deployment) -> int:
        return placement_totals(deployment)[0]

    def get_unmet_replicas(self, deployment) -> int | None:
        return placement_totals(deployment)[1]

    @extend_schema_field(EffectiveLockSerializer)
    def get_effective_lock(self, deployment) -> dict:
        # NOTE: reads the binding locks per deployment (a few queries each), also in list responses.
        return effective_lock(deployment)

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
        policy = {field: validated_data.pop(field) for field in POLICY_FIELDS if field in validated_data}
        plain_autoscaling(validated_data)
        actor = self.context["request"].user
        validate_policy(policy)
        deployment = create_deployment(actor=actor, customer=customer, data=validated_data)
        return update_policy(actor=actor, deployment=deployment, values=policy)

    def update(self, instance, validated_data):
        policy = {field: validated_data.pop(field) for field in POLICY_FIELDS if field in validated_data}
        plain_autoscaling(validated_data)
        if not self.partial:
            defaults = {**deployment_defaults(), "autoscaling": None}
            autoscaling = validated_data.get("autoscaling")
            if autoscaling is not None and autoscaling.get("enabled", True):
                # The autoscaler owns desired_replicas, so a full update keeps the stored value.
                defaults.pop("desired_replicas")
            validated_data = {**defaults, **validated_data}
            policy = {**policy_defaults(), **policy}
        actor = self.context["request"].user
        validate_policy(policy)
        deployment = update_deployment(actor=actor, deployment=instance, data=validated_data)
        return update_policy(actor=actor, deployment=deployment, values=policy)


def plain_autoscaling(validated_data: dict) -> None:
    """Turn a validated ``autoscaling`` object into the plain dict (or None) the services take."""
    if validated_data.get("autoscaling") is not None:
        validated_data["autoscaling"] = dict(validated_data["autoscaling"])


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
    if user.is_staff:
        message = "Staff must set customer to the name of the deployment's customer."
        raise serializers.ValidationError({"customer": [message]})
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


def decision_error_detail(error: ValueError) -> dict[str, list[str]]:
    """Return a 400 body for a rejected failover decision, keyed by the field its message starts with."""
    message = str(error)
    field, separator, _rest = message.partition(": ")
    return {field if separator and field in ("reason", "status") else "non_field_errors": [message]}


def placement_totals(deployment: Deployment) -> tuple[int, int | None]:
    """Return (placed, unmet) replicas of the current plan; unmet is None when no plan covers the deployment.

    The viewset annotates them; a deployment just written by the services is read here instead.
    """
    if hasattr(deployment, "current_unmet"):
        return deployment.current_placed or 0, deployment.current_unmet
    outcome = DeploymentOutcome.objects.filter(plan=current_plan(), deployment=deployment).first()
    if outcome is None:
        return 0, None
    return outcome.placed_replicas, outcome.unmet_replicas


class FailoverRequestSerializer(serializers.ModelSerializer):
    deployment_name = serializers.CharField(source="deployment.__str__", read_only=True, help_text="'customer/name'.")
    clusters = serializers.SerializerMethodField(help_text="Names of the lost or recovered clusters.")

    class Meta:
        model = FailoverRequest
        fields = [
            "id",
            "deployment",
            "deployment_name",
            "kind",
            "status",
            "clusters",
            "replicas",
            "reason",
            "created_at",
            "deadline",
            "decided_by_label",
            "decided_at",
            "decision_reason",
            "failed_back_at",
        ]
        read_only_fields = fields

    def get_clusters(self, request) -> list[str]:
        return sorted(cluster.name for cluster in request.clusters.all())


class PlanPreviewRequestSerializer(serializers.Serializer):
    """What-ifs for a dry-run plan; every name must exist."""

    exclude_providers = serializers.ListField(
        child=serializers.CharField(), required=False, default=list, help_text="Provider names treated as down."
    )
    exclude_regions = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        default=list,
        help_text="Regions treated as down, as 'provider/code' keys or region codes.",
    )
    drain_clusters = serializers.ListField(
        child=serializers.CharField(), required=False, default=list, help_text="Cluster names treated as draining."
    )
    cordon_clusters = serializers.ListField(
        child=serializers.CharField(), required=False, default=list, help_text="Cluster names treated as cordoned."
    )

    def validate_exclude_providers(self, names):
        return check_names(
            names, set(Provider.objects.filter(name__in=names).values_list("name", flat=True)), "Provider"
        )

    def validate_exclude_regions(self, names):
        known = set()
        for provider, code in Region.objects.values_list("provider__name", "code"):
            known |= {code, f"{provider}/{code}"}
        return check_names(names, known, "Region")

    def validate_drain_clusters(self, names):
        return check_names(names, set(Cluster.objects.filter(name__in=names).values_list("name", flat=True)), "Cluster")

    def validate_cordon_clusters(self, names):
        return check_names(names, set(Cluster.objects.filter(name__in=names).values_list("name", flat=True)), "Cluster")

    def validate(self, attrs):
        both = sorted(set(attrs["drain_clusters"]) & set(attrs["cordon_clusters"]))
        if both:
            raise serializers.ValidationError(
                {"cordon_clusters": [f"{both!r} also listed in drain_clusters; list each cluster once."]}
            )
        return attrs


def check_names(names: list[str], known: set[str], label: str) -> list[str]:
    missing = [name for name in names if name not in known]
    if missing:
        raise serializers.ValidationError([f"{label} {name!r} not found." for name in missing])
    return sorted(set(names))


class TierCountsSerializer(serializers.Serializer):
    before = serializers.DictField(child=serializers.IntegerField(), help_text="Current plan, by tier.")
    after = serializers.DictField(child=serializers.IntegerField(), help_text="Dry-run plan, by tier.")


class BeforeAfterSerializer(serializers.Serializer):
    before = serializers.IntegerField(allow_null=True, help_text="Current plan; null without one.")
    after = serializers.IntegerField()


class PlanPreviewSerializer(serializers.Serializer):
    plan_id = serializers.IntegerField(help_text="The stored dry-run plan.")
    plan_version = serializers.IntegerField()
    current_plan_version = serializers.IntegerField(allow_null=True)
    exclusions = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    replicas_added = serializers.IntegerField()
    replicas_removed = serializers.IntegerField()
    deployments_changed = serializers.IntegerField()
    by_provider = serializers.DictField(child=serializers.IntegerField(), help_text="Net replica change by provider.")
    by_region = serializers.DictField(
        child=serializers.IntegerField(), help_text="Net replica change by 'provider/code'."
    )
    replicas_by_provider = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))
    unmet_replicas = BeforeAfterSerializer()
    unmet_by_tier = TierCountsSerializer()


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
    condition = django_filters.ChoiceFilter(choices=DeploymentCondition.choices)
    short = django_filters.BooleanFilter(method="filter_short", label="Short of replicas in the current plan")
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

    def filter_short(self, queryset, name, value):
        return queryset.filter(current_unmet__gt=0) if value else queryset.exclude(current_unmet__gt=0)


class FailoverRequestFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=FailoverStatus.choices)
    kind = django_filters.ChoiceFilter(choices=FailoverKind.choices)
    deployment = django_filters.NumberFilter(field_name="deployment_id")
    customer = django_filters.CharFilter(field_name="deployment__customer__name")

    class Meta:
        model = FailoverRequest
        fields: list[str] = []


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
    queryset = Deployment.objects.select_related("customer", "sku", "autoscaling").prefetch_related(
        "alternative_skus", "region_preferences__region__provider", "demand_origins"
    )
    serializer_class = DeploymentSerializer
    filterset_class = DeploymentFilter
    ordering_fields = ["name", "created_at", "updated_at", "desired_replicas", "condition", "current_unmet"]

    def get_permissions(self):
        return [*super().get_permissions(), StaffWritesNeedModelPermission()]

    def get_queryset(self):
        outcomes = DeploymentOutcome.objects.filter(plan=current_plan(), deployment=OuterRef("pk"))
        return (
            super()
            .get_queryset()
            .annotate(
                current_placed=Subquery(outcomes.values("placed_replicas")[:1]),
                current_unmet=Subquery(outcomes.values("unmet_replicas")[:1]),
            )
        )

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if response.status_code == 400:
            response.data = nest_policy_errors(response.data)
        return response

    def perform_destroy(self, instance):
        delete_deployment(actor=self.request.user, deployment=instance)

    @extend_schema(responses=DeploymentPlacementSerializer)
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def placement(self, request, pk=None):
        """Return where the current applied plan runs this deployment's replicas, and how many it could not place."""
        return Response(deployment_placement(self.get_object()))

    @extend_schema(responses=ScalingDecisionSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[])
    def scaling(self, request, pk=None):
        """List the autoscaler's decisions for this deployment, newest first, with the measurements behind each."""
        decisions = ScalingDecision.objects.filter(deployment=self.get_object()).select_related("plan")
        page = self.paginate_queryset(decisions.order_by("-decided_at", "-pk"))
        return self.get_paginated_response(ScalingDecisionSerializer(page, many=True).data)

    @extend_schema(responses=DeploymentExplanationSerializer)
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def explanation(self, request, pk=None):
        """Return why the current applied plan chose each cluster for this deployment, and why not the others."""
        return Response(deployment_explanation(self.get_object()))

    @extend_schema(responses=DeploymentExplainSerializer)
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def explain(self, request, pk=None):
        """Explain in sentences why each replica runs where it does and why the other clusters are not used."""
        return Response(DeploymentExplainSerializer(explain_for_customer(self.get_object())).data)


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

    @extend_schema(request=PlanPreviewRequestSerializer, responses=PlanPreviewSerializer)
    @action(
        detail=False,
        methods=["post"],
        permission_classes=[IsAdminUser, CanReplan],
        filter_backends=[],
        pagination_class=None,
    )
    def preview(self, request):
        """Run a dry-run plan with what-ifs and return how it differs from the current plan. Needs the ops role."""
        serializer = PlanPreviewRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        what_ifs = serializer.validated_data
        preview = run_operation(
            operations.preview_replan,
            actor=request.user,
            exclude_providers=what_ifs["exclude_providers"],
            exclude_regions=what_ifs["exclude_regions"],
            drain_clusters=what_ifs["drain_clusters"],
            cordon_clusters=what_ifs["cordon_clusters"],
        )
        return Response(preview)


class FailoverRequestViewSet(ReadOnlyViewSet):
    """Failover and failback requests. Customers read their deployments' ones; staff approve or reject."""

    queryset = FailoverRequest.objects.select_related("deployment__customer").prefetch_related("clusters")
    serializer_class = FailoverRequestSerializer
    filterset_class = FailoverRequestFilter
    ordering_fields = ["created_at", "deadline", "decided_at", "status"]

    @extend_schema(request=ReasonSerializer, responses=FailoverRequestSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser, CanDecideFailovers], filter_backends=[])
    def approve(self, request, pk=None):
        """Approve a pending request; the re-plan that carries out the move is enqueued. Needs the ops role."""
        return self.decide(request, failover.approve)

    @extend_schema(request=ReasonSerializer, responses=FailoverRequestSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAdminUser, CanDecideFailovers], filter_backends=[])
    def reject(self, request, pk=None):
        """Reject a pending request: the replicas stay where they are. Needs the ops role."""
        return self.decide(request, failover.reject)

    def decide(self, request, decision):
        failover_request = self.get_object()
        reason = ReasonSerializer.read(request)
        try:
            decision(failover_request, actor=request.user, reason=reason)
        except failover.FailoverDecisionError as error:
            raise serializers.ValidationError(decision_error_detail(error)) from error
        failover_request = self.get_queryset().get(pk=failover_request.pk)
        return Response(self.get_serializer(failover_request).data)
