"""The global pool: providers, regions, GPU SKUs, clusters and their capacity."""

from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class InventoryQuerySet(models.QuerySet):
    def visible_to(self, user) -> "InventoryQuerySet":
        """Limit to what ``user`` may see: the pool's inventory is open to every signed-in user.

        Customers need providers, regions, SKUs and clusters to write region preferences and to
        read where their replicas run.
        """
        if not user.is_authenticated:
            return self.none()
        return self


class Provider(models.Model):
    """A cloud provider that rents GPU capacity (AWS, GCP, Nebius, ...)."""

    name = models.SlugField(max_length=64, unique=True, help_text="Lower-case identifier, for example 'aws'.")
    display_name = models.CharField(max_length=128, blank=True)

    objects = InventoryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class LocationSource(models.TextChoices):
    """Source of a region's coordinates, so that an approximation is never passed off as exact."""

    REGION_TABLE = "region_table", "Region table"
    CITY_MATCH = "city_match", "City match"
    COUNTRY_APPROXIMATION = "country_approximation", "Country-level approximation"
    BUILT_IN = "built_in", "Built-in fleet"


class Region(models.Model):
    """A provider's region: a place with coordinates and the jurisdiction its data falls under."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="regions")
    code = models.CharField(max_length=64, help_text="The provider's own region code, for example 'us-east-1'.")
    display_name = models.CharField(max_length=128, blank=True)
    city = models.CharField(max_length=128, blank=True)
    country = models.CharField(max_length=128, blank=True)
    country_code = models.CharField(max_length=2, blank=True, help_text="ISO 3166-1 alpha-2.")
    jurisdiction = models.CharField(
        max_length=16, blank=True, help_text="Legal area the data falls under, for example 'eu', 'us', 'uk'."
    )
    latitude = models.FloatField()
    longitude = models.FloatField()
    location_source = models.CharField(max_length=32, choices=LocationSource.choices)

    objects = InventoryQuerySet.as_manager()

    class Meta:
        ordering = ["provider__name", "code"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "code"],
                name="region_unique_code_per_provider",
                violation_error_message="This provider already has a region with this code.",
            ),
            models.CheckConstraint(
                condition=Q(latitude__gte=-90) & Q(latitude__lte=90),
                name="region_latitude_range",
                violation_error_message="Latitude must be between -90 and 90.",
            ),
            models.CheckConstraint(
                condition=Q(longitude__gte=-180) & Q(longitude__lte=180),
                name="region_longitude_range",
                violation_error_message="Longitude must be between -180 and 180.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.code}"


class GpuSku(models.Model):
    """A GPU model that deployments ask for; catalog names map to it through aliases."""

    name = models.CharField(max_length=32, unique=True, help_text="Canonical name, for example 'H100'.")
    memory_gib = models.PositiveIntegerField(help_text="Memory per GPU, in GiB.")
    aliases = models.JSONField(
        default=list,
        blank=True,
        help_text="Other names catalogs use for this SKU, for example ['NVIDIA H100', 'H100-80GB'].",
    )

    objects = InventoryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "GPU SKU"

    def __str__(self) -> str:
        return self.name


class ClusterState(models.TextChoices):
    ACTIVE = "active", "Active"
    CORDONED = "cordoned", "Cordoned"
    DRAINING = "draining", "Draining"
    DOWN = "down", "Down"


class ClusterHealth(models.TextChoices):
    """Health judged from heartbeats and API errors by ``fleet.health``.

    The operator's ``ClusterState`` sets what MCM may do with a cluster, and health records whether
    the cluster responds. A suspect cluster keeps its replicas but gets no new ones. A down
    cluster's replicas are placed elsewhere.
    """

    HEALTHY = "healthy", "Healthy"
    SUSPECT = "suspect", "Suspect"
    DOWN = "down", "Down"


class Cluster(models.Model):
    """A Kubernetes cluster in one region: one separate pool of GPU capacity."""

    name = models.SlugField(max_length=128, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="clusters")
    api_endpoint = models.URLField(max_length=255, blank=True, help_text="Kubernetes API server URL.")
    state = models.CharField(max_length=16, choices=ClusterState.choices, default=ClusterState.ACTIVE)
    capabilities = models.JSONField(
        default=list,
        blank=True,
        help_text="Capabilities locks can require, for example ['static-egress-ip', 'soc2'].",
    )
    credentials_encrypted = models.TextField(
        blank=True, editable=False, help_text="Fernet-encrypted credentials; see fleet.credentials."
    )
    last_heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time the cluster answered a poll or pushed an event."
    )
    last_applied_sequence = models.BigIntegerField(
        default=0, help_text="Pushed events up to this per-cluster sequence number have been applied."
    )
    health = models.CharField(max_length=16, choices=ClusterHealth.choices, default=ClusterHealth.HEALTHY)
    health_reason = models.CharField(max_length=255, blank=True, help_text="Why the health last changed.")
    health_changed_at = models.DateTimeField(null=True, blank=True)
    healthy_since = models.DateTimeField(
        null=True, blank=True, help_text="When the cluster became healthy again after being down; failback waits on it."
    )
    consecutive_failures = models.PositiveIntegerField(
        default=0, help_text="Failed reads of the cluster's API since the last successful one."
    )
    consecutive_successes = models.PositiveIntegerField(
        default=0, help_text="Successful reads since the last failed one; recovery needs several."
    )
    first_missed_heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="When the current silence or run of API errors began; empty when healthy."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = InventoryQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        # The scheduler reads every schedulable cluster on each run.
        indexes = [models.Index(fields=["state"], name="cluster_state_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_schedulable(self) -> bool:
        return self.state == ClusterState.ACTIVE


class PricingModel(models.TextChoices):
    ON_DEMAND = "on_demand", "On-demand"
    RESERVED = "reserved", "Reserved"
    SPOT = "spot", "Spot"


class ClusterCapacity(models.Model):
    """GPUs of one SKU in one cluster, with what they cost per GPU-hour."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="capacities")
    sku = models.ForeignKey(GpuSku, on_delete=models.PROTECT, related_name="capacities")
    total_gpus = models.PositiveIntegerField()
    allocatable_gpus = models.PositiveIntegerField()
    in_use_gpus = models.PositiveIntegerField(
        default=0, help_text="GPUs used by workloads MCM does not manage; MCM's own replicas are counted by plans."
    )
    hourly_price_per_gpu = models.DecimalField(max_digits=10, decimal_places=4, help_text="USD per GPU-hour.")
    largest_node_gpus = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Allocatable GPUs of the largest ready node, from telemetry: a replica needs its GPUs on one "
        "node, so larger replicas do not fit. Empty until the cluster is read.",
    )
    pricing_model = models.CharField(max_length=16, choices=PricingModel.choices, default=PricingModel.ON_DEMAND)
    avoid_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The scheduler treats these GPUs as full until then, because replicas placed here did not "
        "become ready in time.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = InventoryQuerySet.as_manager()

    class Meta:
        ordering = ["cluster__name", "sku__name"]
        verbose_name_plural = "cluster capacities"
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "sku"],
                name="capacity_unique_sku_per_cluster",
                violation_error_message="This cluster already has a capacity row for this SKU.",
            ),
            models.CheckConstraint(
                condition=Q(allocatable_gpus__lte=F("total_gpus")),
                name="capacity_allocatable_within_total",
                violation_error_message="Allocatable GPUs cannot exceed total GPUs.",
            ),
            models.CheckConstraint(
                condition=Q(in_use_gpus__lte=F("allocatable_gpus")),
                name="capacity_in_use_within_allocatable",
                violation_error_message="GPUs in use cannot exceed allocatable GPUs.",
            ),
            models.CheckConstraint(
                condition=Q(hourly_price_per_gpu__gte=0),
                name="capacity_price_not_negative",
                violation_error_message="The hourly price cannot be negative.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cluster.name}: {self.allocatable_gpus} x {self.sku.name}"

    @property
    def free_gpus(self) -> int:
        return self.allocatable_gpus - self.in_use_gpus


class CatalogOffer(models.Model):
    """One instance type a provider sells in a region, as read from a catalog file.

    Offers list what a region sells and at what price; clusters and their GPU counts are derived
    from them by ``build_fleet``.
    """

    region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="offers")
    instance_type = models.CharField(max_length=128)
    sku = models.ForeignKey(GpuSku, on_delete=models.PROTECT, related_name="offers")
    gpu_count = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=12, decimal_places=4, help_text="On-demand USD per instance-hour.")
    spot_price = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, help_text="Spot USD per instance-hour, if sold."
    )
    source_file = models.CharField(max_length=255)

    class Meta:
        ordering = ["region", "instance_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["region", "instance_type", "sku", "gpu_count"],
                name="offer_unique_instance_per_region",
                violation_error_message="This region already lists this instance type.",
            ),
            models.CheckConstraint(
                condition=Q(gpu_count__gt=0),
                name="offer_gpu_count_positive",
                violation_error_message="An offer must have at least one GPU.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.region}: {self.instance_type}"


class TelemetrySource(models.TextChoices):
    PULL = "pull", "Pulled from the cluster's API"
    PUSH = "push", "Pushed by an agent"


class TelemetrySnapshot(models.Model):
    """A cluster's report at one time: GPUs by SKU and the replicas of MCM's Deployments."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="snapshots")
    taken_at = models.DateTimeField(auto_now_add=True)
    source = models.CharField(max_length=8, choices=TelemetrySource.choices)
    ok = models.BooleanField(help_text="False when the cluster could not be read; see error.")
    error = models.TextField(blank=True)
    gpus_by_sku = models.JSONField(
        default=dict, blank=True, help_text='SKU -> {"allocatable": GPUs, "nodes": ready nodes}.'
    )
    unknown_gpu_products = models.JSONField(default=list, blank=True, help_text="GPU product labels with no SKU.")
    deployments = models.JSONField(
        default=dict, blank=True, help_text='MCM deployment id -> {"name", "replicas", "ready"}.'
    )

    class Meta:
        ordering = ["-taken_at"]
        # Reconciliation and the admin read each cluster's latest snapshot.
        indexes = [models.Index(fields=["cluster", "-taken_at"], name="snapshot_cluster_taken_idx")]

    def __str__(self) -> str:
        return f"{self.cluster.name} at {self.taken_at:%Y-%m-%d %H:%M:%S} ({self.source})"


class EventKind(models.TextChoices):
    CAPACITY = "capacity", "Capacity"
    UTILIZATION = "utilization", "Utilization"
    HEALTH = "health", "Health"
    TRAFFIC = "traffic", "Traffic demand"


class ClusterEvent(models.Model):
    """One event pushed by a cluster's agent, stored before anything reacts to it.

    ``event_id`` makes a re-sent event a no-op; ``sequence`` orders a cluster's events so that
    they are applied in order however batches arrive.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="events")
    event_id = models.CharField(max_length=64)
    sequence = models.BigIntegerField()
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    occurred_at = models.DateTimeField()
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["cluster", "sequence"]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "event_id"],
                name="event_unique_id_per_cluster",
                violation_error_message="This cluster already sent an event with this id.",
            ),
            models.UniqueConstraint(
                fields=["cluster", "sequence"],
                name="event_unique_sequence_per_cluster",
                violation_error_message="This cluster already sent another event with this sequence number.",
            ),
            models.CheckConstraint(
                condition=Q(sequence__gt=0),
                name="event_sequence_positive",
                violation_error_message="Sequence numbers start at 1.",
            ),
        ]
        # The applier reads each cluster's unapplied events in sequence order.
        indexes = [models.Index(fields=["cluster", "applied_at", "sequence"], name="event_unapplied_idx")]

    def __str__(self) -> str:
        return f"{self.cluster.name} #{self.sequence} {self.kind}"


class OutageScope(models.TextChoices):
    CLUSTER = "cluster", "Cluster"
    REGION = "region", "Region"
    PROVIDER = "provider", "Provider"


class OutageSource(models.TextChoices):
    DECLARED = "declared", "Declared by staff"
    DETECTED = "detected", "Detected from health"


class Outage(models.Model):
    """A cluster, region or provider out of service, declared by staff or detected from health.

    While an outage is open, every cluster it covers counts as down for placement. A detected
    region or provider outage records that every cluster there is down. It does not change the
    clusters, and it closes by itself when one of them is healthy again.
    """

    scope = models.CharField(max_length=16, choices=OutageScope.choices)
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, null=True, blank=True, related_name="outages")
    region = models.ForeignKey(Region, on_delete=models.CASCADE, null=True, blank=True, related_name="outages")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, null=True, blank=True, related_name="outages")
    source = models.CharField(max_length=16, choices=OutageSource.choices)
    reason = models.TextField()
    declared_by = models.CharField(max_length=128, help_text="User name or system component.")
    started_at = models.DateTimeField(default=timezone.now)
    cleared_at = models.DateTimeField(null=True, blank=True)
    cleared_by = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="cluster", cluster__isnull=False, region__isnull=True, provider__isnull=True)
                    | Q(scope="region", cluster__isnull=True, region__isnull=False, provider__isnull=True)
                    | Q(scope="provider", cluster__isnull=True, region__isnull=True, provider__isnull=False)
                ),
                name="outage_one_target",
                violation_error_message="An outage covers exactly one cluster, region or provider, as its scope says.",
            ),
            models.CheckConstraint(
                condition=~Q(reason=""),
                name="outage_reason_required",
                violation_error_message="An outage needs a reason.",
            ),
        ]
        indexes = [models.Index(fields=["cleared_at"], name="outage_open_idx")]

    def __str__(self) -> str:
        return f"{self.scope} outage of {self.target} ({'open' if self.cleared_at is None else 'cleared'})"

    @property
    def target(self) -> models.Model | None:
        return {"cluster": self.cluster, "region": self.region, "provider": self.provider}.get(self.scope)

    @property
    def is_open(self) -> bool:
        return self.cleared_at is None


class HealthMonitor(models.Model):
    """When the health evaluator last ran, so that time MCM itself was stopped is not blamed on clusters."""

    name = models.CharField(max_length=32, unique=True, default="health")
    last_run_at = models.DateTimeField(null=True, blank=True)
    resumed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Last time the evaluator found it had not run for too long; heartbeat ages count from here.",
    )

    def __str__(self) -> str:
        return f"health monitor (last run {self.last_run_at})"


class AlertSeverity(models.TextChoices):
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Alert(models.Model):
    """A condition staff must look at: a cluster down, a failover blocked, an approval waiting.

    At most one alert of a kind is open per subject; it closes when the condition ends.
    """

    kind = models.CharField(max_length=64, help_text="For example 'cluster.down' or 'failover.blocked'.")
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices)
    subject_type = models.CharField(max_length=64)
    subject_id = models.CharField(max_length=64)
    subject_label = models.CharField(max_length=255)
    message = models.TextField()
    raised_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject_type", "subject_id"],
                condition=Q(resolved_at__isnull=True),
                name="alert_one_open_per_subject",
                violation_error_message="This subject already has an open alert of this kind.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.subject_label}"
