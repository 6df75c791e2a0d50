"""Customers, their deployments, and the plans that place deployments' replicas on clusters."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from fleet.models import Cluster, GpuSku, Region


class Tier(models.TextChoices):
    """Customer tier; when capacity is short, higher tiers are placed first."""

    CRITICAL = "critical", "Critical"
    PREMIUM = "premium", "Premium"
    STANDARD = "standard", "Standard"
    BEST_EFFORT = "best_effort", "Best effort"


# Highest first; the scheduler's unmet-demand penalty follows this order.
TIER_ORDER = [Tier.CRITICAL, Tier.PREMIUM, Tier.STANDARD, Tier.BEST_EFFORT]


class Customer(models.Model):
    """An inference provider's customer; its members see only its deployments."""

    name = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=128, blank=True)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.STANDARD)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="customers")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FailoverPolicy(models.TextChoices):
    AUTOMATIC = "automatic", "Automatic"
    APPROVAL = "approval", "Staff approval, with an emergency time-out"


class SpreadMode(models.TextChoices):
    """What the spread rule does while clusters the deployment ran on are lost.

    Hard: no cluster, provider or region runs more replicas than the rule allows at full
    strength, so the deployment runs degraded instead. Soft: the rule is set aside until the lost
    clusters are back, then restored by the next plan.
    """

    HARD = "hard", "Hard: stay degraded rather than break it"
    SOFT = "soft", "Soft: may break during an outage, restored after"


class DeploymentCondition(models.TextChoices):
    NORMAL = "normal", "Normal"
    DEGRADED = "degraded", "Degraded: fewer replicas placed than desired"
    AWAITING_APPROVAL = "awaiting_approval", "Failover awaiting approval"
    FAILOVER_BLOCKED = "failover_blocked", "Failover blocked"


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def visible_to(self, user) -> "DeploymentQuerySet":
        """Limit to what ``user`` may see: staff see every deployment, others their customers' ones."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(customer__members=user)


class Deployment(models.Model):
    """A model-serving deployment: replicas of one GPU shape that MCM places across clusters."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="deployments")
    name = models.SlugField(max_length=63, help_text="Kubernetes-safe name, unique per customer.")
    sku = models.ForeignKey(GpuSku, on_delete=models.PROTECT, related_name="deployments")
    alternative_skus = models.ManyToManyField(
        GpuSku, blank=True, related_name="alternative_for", help_text="Other SKUs a replica may run on."
    )
    gpus_per_replica = models.PositiveSmallIntegerField(default=1)
    min_replicas = models.PositiveIntegerField(default=1)
    desired_replicas = models.PositiveIntegerField(default=1)
    max_replicas = models.PositiveIntegerField(default=1)
    min_providers = models.PositiveSmallIntegerField(
        default=1, help_text="Replicas must span at least this many providers."
    )
    min_regions = models.PositiveSmallIntegerField(
        default=1, help_text="Replicas must span at least this many regions."
    )
    spread_mode = models.CharField(max_length=8, choices=SpreadMode.choices, default=SpreadMode.HARD)
    failover_policy = models.CharField(max_length=16, choices=FailoverPolicy.choices, default=FailoverPolicy.AUTOMATIC)
    approval_timeout_s = models.PositiveIntegerField(
        default=900, help_text="Emergency time-out: an undecided failover proceeds after this many seconds."
    )
    failback_policy = models.CharField(
        max_length=16,
        choices=FailoverPolicy.choices,
        default=FailoverPolicy.AUTOMATIC,
        help_text="Whether replicas return to a recovered cluster by themselves or once staff approve.",
    )
    condition = models.CharField(
        max_length=24, choices=DeploymentCondition.choices, default=DeploymentCondition.NORMAL, editable=False
    )
    condition_reason = models.TextField(blank=True, editable=False)
    condition_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["customer__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "name"],
                name="deployment_unique_name_per_customer",
                violation_error_message="This customer already has a deployment with this name.",
            ),
            models.CheckConstraint(
                condition=Q(gpus_per_replica__gte=1) & Q(gpus_per_replica__lte=16),
                name="deployment_gpus_per_replica_range",
                violation_error_message="GPUs per replica must be between 1 and 16.",
            ),
            models.CheckConstraint(
                condition=Q(min_replicas__lte=F("desired_replicas")) & Q(desired_replicas__lte=F("max_replicas")),
                name="deployment_replicas_ordered",
                violation_error_message="Replicas must satisfy min <= desired <= max.",
            ),
            models.CheckConstraint(
                condition=Q(min_providers__gte=1) & Q(min_regions__gte=1),
                name="deployment_spread_positive",
                violation_error_message="Minimum providers and regions must be at least 1.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer.name}/{self.name}"


class RegionPreference(models.Model):
    """One entry of a deployment's ordered region preference; rank 0 is the most preferred.

    Preference is an order, not a closed list: regions that are not listed stay allowed, after
    every listed one.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="region_preferences")
    region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="+")
    rank = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["deployment", "rank"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "rank"],
                name="preference_unique_rank",
                violation_error_message="Two preferences of this deployment have the same rank.",
            ),
            models.UniqueConstraint(
                fields=["deployment", "region"],
                name="preference_unique_region",
                violation_error_message="This region is already in the deployment's preference.",
            ),
        ]


class DemandOrigin(models.Model):
    """A place a deployment's users are, with its share of the deployment's traffic."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="demand_origins")
    name = models.CharField(max_length=128, help_text="Usually a city.")
    country_code = models.CharField(max_length=2, blank=True)
    latitude = models.FloatField()
    longitude = models.FloatField()
    share = models.FloatField(help_text="Fraction of the deployment's traffic, in (0, 1].")

    class Meta:
        ordering = ["deployment", "-share"]
        constraints = [
            models.CheckConstraint(
                condition=Q(share__gt=0) & Q(share__lte=1),
                name="origin_share_range",
                violation_error_message="A demand share must be greater than 0 and at most 1.",
            ),
            models.CheckConstraint(
                condition=Q(latitude__gte=-90) & Q(latitude__lte=90) & Q(longitude__gte=-180) & Q(longitude__lte=180),
                name="origin_coordinates_range",
                violation_error_message="Latitude must be within [-90, 90] and longitude within [-180, 180].",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.share:.0%})"


class PlanStatus(models.TextChoices):
    DRY_RUN = "dry_run", "Dry run"
    APPLIED = "applied", "Applied"
    SUPERSEDED = "superseded", "Superseded"
    FAILED = "failed", "Failed"


class PlanTrigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULE = "schedule", "Schedule"
    DEMO = "demo", "Demo"
    API = "api", "API"
    HEALTH = "health", "Cluster health change"
    OPERATOR = "operator", "Operator action"
    APPROVAL = "approval", "Failover decision"
    AUTOSCALE = "autoscale", "Autoscaler"


class PlacementPlanQuerySet(models.QuerySet["PlacementPlan"]):
    def visible_to(self, user) -> "PlacementPlanQuerySet":
        """Limit to what ``user`` may see: plans span every customer, so only staff see them."""
        if user.is_authenticated and user.is_staff:
            return self
        return self.none()


class PlacementPlan(models.Model):
    """One scheduler run: its inputs, how it was solved and, through assignments, its result."""

    version = models.PositiveIntegerField(unique=True)
    trigger = models.CharField(max_length=16, choices=PlanTrigger.choices)
    status = models.CharField(max_length=16, choices=PlanStatus.choices)
    parameters = models.JSONField(default=dict, blank=True, help_text="Run options, such as excluded providers.")
    inputs_digest = models.CharField(max_length=64, help_text="SHA-256 of the scheduler's input.")
    objective = models.FloatField(null=True, blank=True)
    objective_terms = models.JSONField(default=dict, blank=True, help_text="The objective split by term.")
    bound = models.FloatField(null=True, blank=True, help_text="Best lower bound the solver proved.")
    gap = models.FloatField(
        null=True, blank=True, help_text="Relative optimality gap, (objective - bound) / objective."
    )
    greedy_objective = models.FloatField(null=True, blank=True)
    solver = models.CharField(max_length=64, help_text="Solver that produced the kept solution, or 'greedy'.")
    solver_status = models.CharField(max_length=64, blank=True)
    build_seconds = models.FloatField(default=0)
    solve_seconds = models.FloatField(default=0)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    objects = PlacementPlanQuerySet.as_manager()

    class Meta:
        ordering = ["-version"]
        # The current placement is the newest applied plan.
        indexes = [models.Index(fields=["status", "-version"], name="plan_status_version_idx")]

    def __str__(self) -> str:
        return f"plan v{self.version} ({self.status})"


class Assignment(models.Model):
    """Replicas of one deployment that a plan puts on one cluster, on one SKU."""

    plan = models.ForeignKey(PlacementPlan, on_delete=models.CASCADE, related_name="assignments")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="assignments")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="assignments")
    sku = models.ForeignKey(GpuSku, on_delete=models.PROTECT, related_name="+")
    replicas = models.PositiveIntegerField()

    class Meta:
        ordering = ["plan", "deployment", "cluster"]
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "deployment", "cluster", "sku"],
                name="assignment_unique_per_plan",
                violation_error_message="This plan already assigns this deployment to this cluster and SKU.",
            ),
            models.CheckConstraint(
                condition=Q(replicas__gt=0),
                name="assignment_replicas_positive",
                violation_error_message="An assignment must place at least one replica.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment} -> {self.cluster}: {self.replicas}"


class DeploymentOutcome(models.Model):
    """A plan's decision for one deployment: replicas placed, replicas short, and the reasons."""

    plan = models.ForeignKey(PlacementPlan, on_delete=models.CASCADE, related_name="outcomes")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="outcomes")
    placed_replicas = models.PositiveIntegerField()
    unmet_replicas = models.PositiveIntegerField()
    explanation = models.JSONField(default=dict, help_text="Why each cluster was or was not used.")

    class Meta:
        ordering = ["plan", "deployment"]
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "deployment"],
                name="outcome_unique_per_plan",
                violation_error_message="This plan already has an outcome for this deployment.",
            ),
        ]


class SchedulerLock(models.Model):
    """A single row that a run applying a plan locks, so only one plan is applied at a time."""

    name = models.CharField(max_length=32, unique=True, default="global")

    @classmethod
    def acquire(cls) -> "SchedulerLock":
        """Lock the row until the surrounding transaction ends; blocks while another run holds it.

        SQLite ignores ``select_for_update``, but it allows one writing transaction at a time.
        """
        cls.objects.get_or_create(name="global")
        return cls.objects.select_for_update().get(name="global")


class StepStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    EXECUTED = "executed", "Executed"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded by a newer plan"


class StepPhase(models.TextChoices):
    """Make-before-break order: every scale-up of a deployment is ready before its scale-downs run."""

    SCALE_UP = "scale_up", "Create or scale up"
    SCALE_DOWN = "scale_down", "Scale down or remove"


class ExecutionStep(models.Model):
    """One decision of an applied plan for one cluster: run this many replicas of a deployment there."""

    plan = models.ForeignKey(PlacementPlan, on_delete=models.CASCADE, related_name="steps")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="steps")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="steps")
    sku = models.ForeignKey(GpuSku, on_delete=models.PROTECT, related_name="+")
    phase = models.CharField(max_length=16, choices=StepPhase.choices)
    desired_replicas = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=StepStatus.choices, default=StepStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    observed_replicas = models.PositiveIntegerField(null=True, blank=True)
    observed_ready = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    executed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["plan", "phase", "cluster", "deployment"]
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "deployment", "cluster"],
                name="step_unique_per_plan",
                violation_error_message="This plan already has a step for this deployment on this cluster.",
            ),
        ]
        # The executor and the reconciler read a cluster's pending steps.
        indexes = [models.Index(fields=["cluster", "status"], name="step_cluster_status_idx")]

    def __str__(self) -> str:
        return f"v{self.plan.version} {self.deployment} on {self.cluster}: {self.desired_replicas} ({self.status})"


class DriftRecord(models.Model):
    """A difference found by reconciliation between decided and observed replicas."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="drift_records")
    deployment = models.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="drift_records"
    )
    kubernetes_name = models.CharField(max_length=253)
    desired_replicas = models.PositiveIntegerField()
    observed_replicas = models.PositiveIntegerField()
    ready_replicas = models.PositiveIntegerField()
    action = models.CharField(max_length=64, help_text="What reconciliation did, for example 'scaled' or 'deleted'.")
    detected_at = models.DateTimeField(auto_now_add=True)
    repaired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-detected_at"]

    def __str__(self) -> str:
        return f"{self.cluster}: {self.kubernetes_name} {self.observed_replicas}/{self.desired_replicas}"


class FailoverKind(models.TextChoices):
    FAILOVER = "failover", "Failover: move replicas off lost clusters"
    FAILBACK = "failback", "Failback: return replicas to a recovered cluster"


class FailoverStatus(models.TextChoices):
    PENDING = "pending", "Awaiting approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    TIMED_OUT = "timed_out", "Proceeded after the emergency time-out"
    WITHDRAWN = "withdrawn", "Withdrawn: the clusters recovered first"


class FailoverRequestQuerySet(models.QuerySet["FailoverRequest"]):
    def visible_to(self, user) -> "FailoverRequestQuerySet":
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(deployment__customer__members=user)


class FailoverRequest(models.Model):
    """A move of one deployment's replicas off lost clusters, or back to recovered ones.

    Every failover is recorded, whatever the policy. Under the automatic policy the request is
    approved at once by "automatic". Under the approval policy it waits for staff until its
    deadline. A failback request exists only for deployments whose failback needs approval.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="failover_requests")
    kind = models.CharField(max_length=16, choices=FailoverKind.choices)
    status = models.CharField(max_length=16, choices=FailoverStatus.choices, default=FailoverStatus.PENDING)
    clusters = models.ManyToManyField(Cluster, related_name="+", help_text="The lost or recovered clusters.")
    replicas = models.PositiveIntegerField(help_text="Replicas the move concerns.")
    reason = models.TextField(help_text="Why the move is needed.")
    created_at = models.DateTimeField(auto_now_add=True)
    deadline = models.DateTimeField(
        null=True, blank=True, help_text="A failover proceeds by itself at this time if nobody decided."
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_by_label = models.CharField(max_length=128, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    failed_back_at = models.DateTimeField(
        null=True, blank=True, help_text="For a failover: when its replicas were let back to the recovered clusters."
    )

    objects = FailoverRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "kind"],
                condition=Q(status="pending"),
                name="failover_one_pending_per_kind",
                violation_error_message="This deployment already has a pending request of this kind.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.deployment} ({self.status})"


class ClusterAvoidance(models.Model):
    """Replicas of one deployment lost on one cluster; repeated losses deprioritise the cluster for it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="avoidances")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="+")
    losses = models.PositiveIntegerField(default=0, help_text="Losses within the current window.")
    window_started_at = models.DateTimeField()
    last_loss_at = models.DateTimeField()
    avoid_until = models.DateTimeField(
        null=True, blank=True, help_text="Until then the scheduler charges extra for this cluster for this deployment."
    )

    class Meta:
        ordering = ["deployment", "cluster"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "cluster"],
                name="avoidance_unique_pair",
                violation_error_message="This deployment already has an avoidance record for this cluster.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment} on {self.cluster}: {self.losses} losses"


class TrafficSource(models.TextChoices):
    PULL = "pull", "Pulled from the cluster's API"
    PUSH = "push", "Pushed by an agent"


class TrafficSample(models.Model):
    """Traffic of one deployment at one time: on one cluster (or overall), from one demand origin (or all).

    Samples arrive as ``traffic`` events through the event API and from the pull collector. The
    autoscaler and routing read them, and ``MCM_TRAFFIC_RETENTION_S`` bounds how long they are kept.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="traffic_samples")
    cluster = models.ForeignKey(
        Cluster, on_delete=models.CASCADE, null=True, blank=True, related_name="+",
        help_text="The cluster that served the traffic; empty when the report covers the whole deployment.",
    )  # fmt: skip
    origin = models.CharField(
        max_length=64, blank=True, help_text="Where the requests came from: a demand origin, city or country code."
    )
    requests_per_second = models.FloatField()
    in_flight = models.FloatField(null=True, blank=True, help_text="Requests in progress; empty when not reported.")
    observed_at = models.DateTimeField()
    source = models.CharField(max_length=8, choices=TrafficSource.choices)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-observed_at"]
        indexes = [
            models.Index(fields=["deployment", "observed_at"], name="traffic_deployment_time_idx"),
            models.Index(fields=["observed_at"], name="traffic_time_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(requests_per_second__gte=0) & (Q(in_flight__isnull=True) | Q(in_flight__gte=0)),
                name="traffic_non_negative",
                violation_error_message="Requests per second and in-flight requests must be 0 or more.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id} at {self.observed_at:%Y-%m-%d %H:%M:%S}: {self.requests_per_second:g} req/s"


class AutoscalingPolicy(models.Model):
    """A deployment's autoscaling rule: how its desired replicas follow its traffic.

    The deployment's ``min_replicas`` and ``max_replicas`` bound the result; ``min_replicas`` 0
    needs ``scale_to_zero``.
    """

    deployment = models.OneToOneField(Deployment, on_delete=models.CASCADE, related_name="autoscaling")
    enabled = models.BooleanField(default=True, help_text="Off: desired replicas are set by hand only.")
    target_concurrency = models.FloatField(default=8.0, help_text="In-flight requests one replica serves at full load.")
    target_utilization = models.FloatField(
        default=0.7, help_text="Share of target_concurrency the autoscaler aims at, in (0, 1]."
    )
    window_s = models.PositiveIntegerField(default=60, help_text="Seconds of traffic averaged for each decision.")
    scale_down_delay_s = models.PositiveIntegerField(
        default=300, help_text="Seconds the lower need must last before replicas are removed."
    )
    max_scale_down_fraction = models.FloatField(
        default=0.5, help_text="Largest share of replicas removed per minute, in (0, 1]; at least one replica."
    )
    scale_to_zero = models.BooleanField(
        default=False, help_text="Remove every replica after scale_down_delay_s without traffic."
    )
    seconds_per_request = models.FloatField(
        default=1.0, help_text="Mean request duration, to derive in-flight requests from requests per second."
    )
    # Recent recommendations and the replica count at each minute, kept for scale_down_delay_s
    # (see placements.autoscaling).
    state = models.JSONField(default=dict, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "autoscaling policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(target_concurrency__gt=0),
                name="autoscaling_concurrency_positive",
                violation_error_message="The concurrency target must be greater than 0.",
            ),
            models.CheckConstraint(
                condition=Q(target_utilization__gt=0) & Q(target_utilization__lte=1),
                name="autoscaling_utilization_range",
                violation_error_message="The target utilisation must be greater than 0 and at most 1.",
            ),
            models.CheckConstraint(
                condition=Q(max_scale_down_fraction__gt=0) & Q(max_scale_down_fraction__lte=1),
                name="autoscaling_scale_down_fraction_range",
                violation_error_message="The scale-down fraction must be greater than 0 and at most 1.",
            ),
            models.CheckConstraint(
                condition=Q(window_s__gte=1) & Q(seconds_per_request__gt=0),
                name="autoscaling_window_positive",
                violation_error_message="The window and the request duration must be greater than 0.",
            ),
        ]

    def __str__(self) -> str:
        return f"autoscaling of {self.deployment}"


class ScalingDirection(models.TextChoices):
    UP = "up", "Scale up"
    DOWN = "down", "Scale down"


class ScalingDecision(models.Model):
    """A change of a deployment's desired replicas by the autoscaler, with the measurements behind it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="scaling_decisions")
    decided_at = models.DateTimeField(default=timezone.now, db_index=True)
    direction = models.CharField(max_length=8, choices=ScalingDirection.choices)
    from_replicas = models.PositiveIntegerField()
    to_replicas = models.PositiveIntegerField()
    reason = models.TextField()
    measurements = models.JSONField(default=dict, help_text="Window, traffic by cluster and origin, limits applied.")
    plan = models.ForeignKey(
        PlacementPlan, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="The plan that placed the change.",
    )  # fmt: skip

    class Meta:
        ordering = ["-decided_at"]
        indexes = [models.Index(fields=["deployment", "-decided_at"], name="scaling_deployment_time_idx")]

    def __str__(self) -> str:
        return f"{self.deployment}: {self.from_replicas} -> {self.to_replicas} ({self.decided_at:%Y-%m-%d %H:%M:%S})"


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def visible_to(self, user) -> "ApiTokenQuerySet":
        """Limit to what ``user`` may see: staff see every token (never a secret), others their own."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(user=user)


class ApiToken(models.Model):
    """A token that a user, usually a customer's member, created to call the API.

    Only the SHA-256 digest of the token is stored; the secret is shown once, when it is created.
    The prefix names the token in lists, the admin and the audit trail.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=64, help_text="What the token is for, for example 'ci deploys'.")
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: valid until revoked.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # The token list of one user, newest first.
        indexes = [models.Index(fields=["user", "-created_at"], name="apitoken_user_created_idx")]

    def __str__(self) -> str:
        return f"{self.prefix} ({self.name})"
