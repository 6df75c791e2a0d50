"""The operator dashboard on the admin's landing page: the pool on a map, capacity, and what needs staff.

Each section reads its rows for the whole fleet in a fixed number of queries, never one per
row, so the page's query count does not grow with clusters, regions or deployments. A section is
built only for a user who may view its models (``SECTION_PERMISSIONS``); the others are left out.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.db.models import Case, Count, F, IntegerField, Max, OuterRef, Prefetch, Q, Subquery, Sum, Value, When
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from compliance.models import AuditEvent
from compliance.roles import AUDIT_VIEW
from fleet.availability import AvailabilityReader
from fleet.models import Cluster, ClusterCapacity, ClusterHealth, TelemetrySnapshot
from fleet.worldmap import RegionInput, RegionMap, count_lost_and_suspect, region_map, region_place
from placements.models import (
    TIER_ORDER,
    Assignment,
    Deployment,
    DeploymentCondition,
    DeploymentOutcome,
    DriftRecord,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    RegionPreference,
)
from placements.services import current_plan

logger = logging.getLogger(__name__)

# Telemetry counts as stale once the newest of a cluster's heartbeat and successful snapshot is
# this many heartbeat intervals (MCM_HEARTBEAT_INTERVAL_S) old. The health evaluator counts a
# heartbeat as missed after 1.5 intervals, and three give collection one more chance before the
# dashboard flags it.
STALE_AFTER_INTERVALS = 3
# Rows listed per table before the table links to the filtered changelist.
ROW_LIMIT = 50
LATEST_DECISIONS = 15
# Routine records: carrying out a decision (one per step and repair) and dry-run previews, which decide
# nothing. They would crowd out the decisions, so the panel leaves them out and links to the audit
# trail, which keeps them.
ROUTINE_ACTIONS = ("execution_step.executed", "execution.prepared", "drift.repaired", "plan.dry_run")

# Permissions each section needs. A superuser has all of them.
SECTION_PERMISSIONS = {
    "map": ("fleet.view_cluster", "fleet.view_region"),
    "replicas": ("placements.view_assignment",),
    "capacity": ("fleet.view_clustercapacity",),
    "unmet": ("placements.view_deploymentoutcome",),
    "trouble": ("fleet.view_cluster",),
    "short": ("placements.view_deployment",),
    "failovers": ("placements.view_failoverrequest",),
    "decisions": (AUDIT_VIEW,),
    "background": ("tasks.view_taskrun",),
}

NO_PREFERENCE = "(no preferred region)"
# Reasons a cluster is in trouble, the worst first. The table lists clusters in this order.
TROUBLE_SEVERITY = {"down": 0, "suspect": 1, "drifting": 2, "stale": 3}


def allowed_sections(user) -> set[str]:
    return {name for name, needed in SECTION_PERMISSIONS.items() if user.has_perms(needed)}


@dataclass
class CapacityRow:
    """GPUs of one SKU or provider: how many exist, who uses them, and replicas the current plan could not place."""

    name: str
    gpus: int = 0
    allocatable: int = 0
    other_workloads: int = 0  # GPUs used by workloads MCM does not manage
    mcm_gpus: int = 0  # GPUs of the replicas the current plan places
    replicas: int = 0
    unmet_replicas: int = 0

    @property
    def used_gpus(self) -> int:
        return self.other_workloads + self.mcm_gpus

    @property
    def free_gpus(self) -> int:
        return max(0, self.allocatable - self.used_gpus)

    @property
    def use_percent(self) -> int | None:
        return round(100 * self.used_gpus / self.allocatable) if self.allocatable else None

    def add(self, other: "CapacityRow") -> None:
        self.gpus += other.gpus
        self.allocatable += other.allocatable
        self.other_workloads += other.other_workloads
        self.mcm_gpus += other.mcm_gpus
        self.replicas += other.replicas
        self.unmet_replicas += other.unmet_replicas


@dataclass
class TroubleRow:
    """A cluster that needs a look, with each reason as a token (down, suspect, drifting, stale) and in words."""

    cluster: Cluster
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def flag(self, reason: str, detail: str) -> None:
        self.reasons.append(reason)
        self.details.append(detail)

    @property
    def reason_tokens(self) -> str:
        return " ".join(self.reasons)


@dataclass
class ShortRow:
    deployment: Deployment
    status: str  # "short", or the deployment's condition
    label: str
    detail: str


@dataclass
class Dashboard:
    now: datetime
    sections: set[str]
    plan: PlacementPlan | None = None
    map: RegionMap | None = None
    capacity_by_sku: list[CapacityRow] = field(default_factory=list)
    capacity_by_provider: list[CapacityRow] = field(default_factory=list)
    capacity_total: CapacityRow | None = None
    trouble: list[TroubleRow] = field(default_factory=list)
    trouble_total: int = 0
    trouble_by_reason: dict[str, int] = field(default_factory=dict)
    stale_after_intervals: int = STALE_AFTER_INTERVALS
    stale_after_s: float = 0.0
    short: list[ShortRow] = field(default_factory=list)
    short_more: bool = False
    failovers: list[FailoverRequest] = field(default_factory=list)
    failovers_more: bool = False
    decisions: list[dict] = field(default_factory=list)
    background: dict | None = None

    @property
    def visible(self) -> bool:
        return bool(self.sections)


def build_dashboard(user, *, now: datetime | None = None) -> Dashboard:
    """Read every section ``user`` may view. ``now`` fixes the time that ages and staleness count from."""
    now = now or timezone.now()
    sections = allowed_sections(user)
    dashboard = Dashboard(now=now, sections=sections)
    if not sections:
        return dashboard
    dashboard.plan = current_plan()
    if sections & {"map", "capacity", "trouble"}:
        add_fleet_sections(dashboard)
    if "short" in sections:
        dashboard.short, dashboard.short_more = short_deployments(dashboard.plan)
    if "failovers" in sections:
        dashboard.failovers, dashboard.failovers_more = pending_failovers()
    if "decisions" in sections:
        dashboard.decisions = latest_decisions(user)
    if "background" in sections:
        dashboard.background = background_health(now)
    return dashboard


# The pool: the map, capacity and clusters in trouble, from one read of the clusters.


def load_clusters() -> list[Cluster]:
    """Read every cluster with its region, capacity rows and the time of its latest successful snapshot."""
    latest_ok = (
        TelemetrySnapshot.objects.filter(cluster=OuterRef("pk"), ok=True).order_by("-taken_at").values("taken_at")[:1]
    )
    capacities = Prefetch("capacities", queryset=ClusterCapacity.objects.select_related("sku").order_by("pk"))
    return list(
        Cluster.objects.select_related("region__provider")
        .annotate(last_snapshot_at=Subquery(latest_ok))
        .prefetch_related(capacities)
        .order_by("name")
    )


def placed_gpus(plan: PlacementPlan | None) -> dict[tuple[int, str], tuple[int, int]]:
    """Return (replicas, GPUs) that ``plan`` places per (cluster id, SKU name)."""
    if plan is None:
        return {}
    rows = (
        Assignment.objects.filter(plan=plan)
        .values("cluster_id", "sku__name")
        .annotate(placed=Sum("replicas"), gpus=Sum(F("replicas") * F("deployment__gpus_per_replica")))
        .order_by()
    )
    return {(row["cluster_id"], row["sku__name"]): (row["placed"], row["gpus"]) for row in rows}


def unmet_demand(plan: PlacementPlan | None) -> list[tuple[str, str, int]]:
    """Return (SKU, provider of the first preferred region, unmet replicas) per deployment short in ``plan``."""
    if plan is None:
        return []
    first_choice = (
        RegionPreference.objects.filter(deployment=OuterRef("deployment"))
        .order_by("rank")
        .values("region__provider__name")[:1]
    )
    rows = (
        DeploymentOutcome.objects.filter(plan=plan, unmet_replicas__gt=0)
        .annotate(first_provider=Subquery(first_choice))
        .values_list("deployment__sku__name", "first_provider", "unmet_replicas")
    )
    return [(sku, provider or NO_PREFERENCE, unmet) for sku, provider, unmet in rows]


def add_fleet_sections(dashboard: Dashboard) -> None:
    clusters = load_clusters()
    sections = dashboard.sections
    show_replicas = "replicas" in sections
    placed = placed_gpus(dashboard.plan) if show_replicas else {}
    reader = AvailabilityReader(dashboard.now)
    availability = {cluster.pk: reader(cluster) for cluster in clusters}
    if "map" in sections:
        dashboard.map = region_map(region_inputs(clusters, availability, placed))
    if "capacity" in sections:
        unmet = unmet_demand(dashboard.plan) if "unmet" in sections else []
        by_sku, by_provider, total = capacity_tables(clusters, placed, unmet)
        dashboard.capacity_by_sku, dashboard.capacity_by_provider, dashboard.capacity_total = by_sku, by_provider, total
    if "trouble" in sections:
        dashboard.stale_after_s = STALE_AFTER_INTERVALS * settings.MCM_HEARTBEAT_INTERVAL_S
        rows = trouble_clusters(clusters, availability, dashboard.now, dashboard.stale_after_s)
        dashboard.trouble, dashboard.trouble_total = rows[:ROW_LIMIT], len(rows)
        dashboard.trouble_by_reason = {
            reason: sum(1 for row in rows if reason in row.reasons) for reason in TROUBLE_SEVERITY
        }


def region_inputs(clusters: list[Cluster], availability: dict, placed: dict) -> list[RegionInput]:
    replicas_by_cluster: dict[int, int] = defaultdict(int)
    for (cluster_id, _sku), (replicas, _gpus) in placed.items():
        replicas_by_cluster[cluster_id] += replicas
    by_region: dict[int, list[Cluster]] = defaultdict(list)
    for cluster in clusters:
        by_region[cluster.region_id].append(cluster)
    inputs = []
    for members in by_region.values():
        lost, suspect = count_lost_and_suspect(members, [availability[cluster.pk] for cluster in members])
        inputs.append(
            RegionInput(
                **region_place(members[0].region),
                clusters=len(members),
                lost_clusters=lost,
                suspect_clusters=suspect,
                gpus=sum(capacity.total_gpus for cluster in members for capacity in cluster.capacities.all()),
                replicas=sum(replicas_by_cluster[cluster.pk] for cluster in members),
            )
        )
    return inputs


def capacity_tables(
    clusters: list[Cluster], placed: dict, unmet: list[tuple[str, str, int]]
) -> tuple[list[CapacityRow], list[CapacityRow], CapacityRow]:
    """Return capacity rows by SKU and by provider, and their total.

    Unmet replicas have no cluster, so the provider table counts them under the provider of the
    deployment's first preferred region, or under ``NO_PREFERENCE``.
    """
    by_sku: dict[str, CapacityRow] = {}
    by_provider: dict[str, CapacityRow] = {}
    for cluster in clusters:
        provider = cluster.region.provider.name
        for capacity in cluster.capacities.all():
            replicas, gpus = placed.get((cluster.pk, capacity.sku.name), (0, 0))
            row = CapacityRow(
                name="",
                gpus=capacity.total_gpus,
                allocatable=capacity.allocatable_gpus,
                other_workloads=capacity.in_use_gpus,
                mcm_gpus=gpus,
                replicas=replicas,
            )
            by_sku.setdefault(capacity.sku.name, CapacityRow(capacity.sku.name)).add(row)
            by_provider.setdefault(provider, CapacityRow(provider)).add(row)
    for sku, provider, replicas in unmet:
        by_sku.setdefault(sku, CapacityRow(sku)).unmet_replicas += replicas
        by_provider.setdefault(provider, CapacityRow(provider)).unmet_replicas += replicas
    total = CapacityRow("total")
    for row in by_sku.values():
        total.add(row)
    return sorted(by_sku.values(), key=lambda row: row.name), sorted(by_provider.values(), key=provider_order), total


def provider_order(row: CapacityRow) -> tuple[bool, str]:
    return row.name == NO_PREFERENCE, row.name


def trouble_clusters(
    clusters: list[Cluster], availability: dict, now: datetime, stale_after_s: float
) -> list[TroubleRow]:
    """Return the clusters that are down, suspect, drifting or with stale telemetry, the worst first.

    Drifting means open (unrepaired) drift records: reconciliation closes a record when it repairs
    the difference, and records a persisting difference once, so the open ones are what the latest
    reconciliation runs still found. A cluster that never reported is flagged only when it has an
    API endpoint, because clusters without one (the built-in fleet, agents not yet started) are
    not expected to report.
    """
    drift = {
        row["cluster_id"]: row
        for row in DriftRecord.objects.filter(repaired_at__isnull=True)
        .values("cluster_id")
        .annotate(count=Count("pk"), latest=Max("detected_at"))
        .order_by()
    }
    stale_after = timedelta(seconds=stale_after_s)
    rows = []
    for cluster in clusters:
        row = TroubleRow(cluster)
        state = availability[cluster.pk]
        if state.lost and state.reason == "down":
            row.flag("down", cluster.health_reason or f"state {cluster.state}, health {cluster.health}")
        elif state.lost:
            row.flag("down", f"{state.reason} open")
        elif cluster.health == ClusterHealth.SUSPECT:
            row.flag("suspect", cluster.health_reason or "not answering reliably")
        if cluster.pk in drift:
            open_records = drift[cluster.pk]
            row.flag(
                "drifting",
                f"{open_records['count']} open drift records, latest at {open_records['latest']:%Y-%m-%d %H:%M:%S}",
            )
        seen = [moment for moment in (cluster.last_heartbeat_at, cluster.last_snapshot_at) if moment is not None]
        if seen and now - max(seen) > stale_after:
            row.flag("stale", f"last telemetry {format_age(now - max(seen))} ago")
        elif not seen and cluster.api_endpoint:
            row.flag("stale", "no telemetry received yet")
        if row.reasons:
            rows.append(row)
    rows.sort(key=lambda row: (min(TROUBLE_SEVERITY[reason] for reason in row.reasons), row.cluster.name))
    return rows


def format_age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


# Deployments, failovers and decisions.


def short_deployments(plan: PlacementPlan | None) -> tuple[list[ShortRow], bool]:
    """Return deployments that are blocked, degraded or short in the current plan, the highest tier first.

    The second value is True when more than ``ROW_LIMIT`` deployments qualify.
    """
    outcome = DeploymentOutcome.objects.filter(plan=plan, deployment=OuterRef("pk"))
    tier_rank = Case(
        *(When(customer__tier=tier, then=Value(rank)) for rank, tier in enumerate(TIER_ORDER)),
        default=Value(len(TIER_ORDER)),
        output_field=IntegerField(),
    )
    rows = list(
        Deployment.objects.select_related("customer", "sku")
        .annotate(
            current_placed=Subquery(outcome.values("placed_replicas")[:1]),
            current_unmet=Subquery(outcome.values("unmet_replicas")[:1]),
            tier_rank=tier_rank,
        )
        .filter(~Q(condition=DeploymentCondition.NORMAL) | Q(current_unmet__gt=0))
        .order_by("tier_rank", F("current_unmet").desc(nulls_last=True), "customer__name", "name")[: ROW_LIMIT + 1]
    )
    result = []
    for deployment in rows[:ROW_LIMIT]:
        if deployment.condition != DeploymentCondition.NORMAL:
            status, label = deployment.condition, deployment.condition.replace("_", " ")
            detail = deployment.condition_reason
        else:
            status = label = "short"
            detail = f"{deployment.current_unmet} of {deployment.desired_replicas} replicas could not be placed"
        result.append(ShortRow(deployment, status, label, detail))
    return result, len(rows) > ROW_LIMIT


def pending_failovers() -> tuple[list[FailoverRequest], bool]:
    """Return failover and failback requests awaiting approval, the nearest deadline first."""
    rows = list(
        FailoverRequest.objects.filter(status=FailoverStatus.PENDING)
        .select_related("deployment__customer")
        .prefetch_related("clusters")
        .order_by(F("deadline").asc(nulls_last=True), "created_at")[: ROW_LIMIT + 1]
    )
    return rows[:ROW_LIMIT], len(rows) > ROW_LIMIT


def latest_decisions(user) -> list[dict]:
    """Return the newest audit events with a link to their subject where the admin has a page for it."""
    events = (
        AuditEvent.objects.visible_to(user)
        .exclude(action__in=ROUTINE_ACTIONS)
        .order_by("-created_at", "-id")[:LATEST_DECISIONS]
    )
    return [{"event": event, "subject_url": subject_url(event.subject_type, event.subject_id)} for event in events]


def subject_url(subject_type: str, subject_id: str) -> str | None:
    """Return the admin page of an audit subject: a deployment's overview, or a model's change page."""
    if not subject_id.isdigit():
        return None  # a subject such as "*" (every deployment) has no page
    if subject_type == "placements.deployment":
        return reverse("admin:placements_deployment_overview", args=[subject_id])
    app_label, _, model_name = subject_type.partition(".")
    try:
        apps.get_model(app_label, model_name)
        return reverse(f"admin:{app_label}_{model_name}_change", args=[subject_id])
    except (LookupError, ValueError, NoReverseMatch):
        return None


def background_health(now: datetime) -> dict:
    """Return late schedules and the queue backlog from ``tasks.health``, or why they are unavailable.

    ``tasks.health`` is imported here, at call time, so the dashboard keeps working on an
    installation without it. The box then shows "unavailable" and the reason.
    """
    try:
        from tasks import health
    except ImportError:
        return {"available": False, "error": "background health is not installed (no tasks.health module)"}
    try:
        statuses = list(health.schedule_statuses(now=now))
        backlog = health.queue_backlog()
    except Exception as error:  # a broken health check must not take the landing page down
        logger.exception("dashboard: reading background health failed")
        return {"available": False, "error": f"reading background health failed: {type(error).__name__}: {error}"}
    late = [status for status in statuses if status.late]
    return {
        "available": True,
        "schedules": statuses,
        "late": late,
        "disabled": [status for status in statuses if not status.enabled],
        "backlog": backlog,
        "embedded": settings.MCM_EMBEDDED,
    }
