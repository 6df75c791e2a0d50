"""Prometheus metrics at ``GET /metrics``, read from the database when Prometheus scrapes.

Every figure is read at scrape time from PostgreSQL (and the queue backlog from Redis), so the
output is the same whichever gunicorn worker serves it and includes the work of Celery processes.
Each query aggregates in SQL or reads a bounded number of rows. docs/metrics.md lists the metrics.

Access: a request with ``Authorization: Bearer <MCM_METRICS_TOKEN>``, or a signed-in staff member.
"""

import hmac
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from itertools import groupby

from django.conf import settings
from django.db.models import Count, OuterRef, Prefetch, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_safe
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from compliance.models import AuditEvent
from fleet.availability import covers
from fleet.models import Cluster, Outage, TelemetrySnapshot
from placements.models import (
    TIER_ORDER,
    Assignment,
    DeploymentOutcome,
    DriftRecord,
    ExecutionStep,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    PlanStatus,
    StepPhase,
    StepStatus,
)
from placements.observation import executable_clusters
from placements.services import current_plan
from tasks.health import queue_backlog, schedule_statuses
from tasks.models import EventIngestCount, TaskRun, TaskRunStatus

logger = logging.getLogger(__name__)

# Plans in the solve-time and gap histograms: the newest ones, found through the unique version index.
RECENT_PLANS = 100
SOLVE_SECONDS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
GAP_BUCKETS = (0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1)
# Task runs are counted over the last hour, the longest default beat interval ("prune traffic").
TASK_RUN_WINDOW = timedelta(hours=1)
# Failovers decided within this window are measured, at most MAX_FAILOVERS of them, newest first.
FAILOVER_WINDOW = timedelta(days=1)
MAX_FAILOVERS = 20
FAILOVER_SECONDS_BUCKETS = (30, 60, 120, 300, 600, 1200, 1800, 3600)
# How far before a failover request its clusters' down verdicts are searched for the first missed heartbeat.
FAULT_LOOKBACK = timedelta(days=1)
# Scale-up steps read per failover, oldest plan first, while looking for the plan whose replacements became ready.
MAX_STEPS_PER_FAILOVER = 500
# Figures of the newest successful reconciliation run, from its TaskRun summary.
RECONCILE_FIGURES = ("drift_recorded", "repaired", "repairs_failed", "steps_timed_out")


# Access.


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the metrics in the Prometheus text format, or OpenMetrics when the Accept header requests it."""
    denied = access_denied(request)
    if denied is not None:
        return denied
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)


def access_denied(request: HttpRequest) -> HttpResponse | None:
    """Return a 401 or 403 response unless the request has the metrics token or a staff session."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        token = settings.MCM_METRICS_TOKEN
        if token and hmac.compare_digest(credentials.strip().encode(), token.encode()):
            return None
        if not token:
            return unauthorized("Bearer tokens are not accepted: MCM_METRICS_TOKEN is not set on the server.")
        return unauthorized("The bearer token is invalid: send the value of MCM_METRICS_TOKEN.")
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff:
        return None
    if user.is_authenticated:
        return HttpResponse(
            "Metrics need staff status or the metrics bearer token.\n", status=403, content_type="text/plain"
        )
    return unauthorized("Authentication required: send Authorization: Bearer <MCM_METRICS_TOKEN>, or sign in as staff.")


def unauthorized(message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="mcm-metrics"'
    return response


# The collector.


class DatabaseCollector:
    """Yields MCM's metric families from the database on each scrape."""

    def collect(self):
        now = timezone.now()
        yield from plan_metrics()
        yield from demand_metrics()
        yield from replica_metrics()
        yield from event_metrics()
        yield from task_metrics(now)
        yield from reconcile_metrics()
        yield from failover_metrics(now)


# auto_describe=False: registering must not run the collector, because that would query the database at import.
registry = CollectorRegistry(auto_describe=False)
registry.register(DatabaseCollector())


def histogram_buckets(counts: dict, bounds: tuple, total: int) -> list[tuple[str, float]]:
    """Return cumulative (le, count) pairs ending with +Inf; ``counts["le_<i>"]`` counts values <= ``bounds[i]``."""
    buckets = [(str(float(bound)), counts[f"le_{index}"]) for index, bound in enumerate(bounds)]
    return [*buckets, ("+Inf", total)]


def plan_metrics():
    finished = PlacementPlan.objects.exclude(status=PlanStatus.FAILED)
    latest = finished.order_by("-version").values("version", "solve_seconds", "build_seconds", "gap").first()
    version = GaugeMetricFamily("mcm_plan_version", "Version of the newest placement plan that was solved.")
    solve = GaugeMetricFamily("mcm_plan_solve_seconds", "Solver time of the newest placement plan, in seconds.")
    build = GaugeMetricFamily("mcm_plan_build_seconds", "Model build time of the newest placement plan, in seconds.")
    gap = GaugeMetricFamily(
        "mcm_plan_gap", "Relative optimality gap of the newest placement plan; absent when the solver proved no bound."
    )
    if latest is not None:
        version.add_metric([], latest["version"])
        solve.add_metric([], latest["solve_seconds"])
        build.add_metric([], latest["build_seconds"])
        if latest["gap"] is not None:
            gap.add_metric([], latest["gap"])
    yield from (version, solve, build, gap)

    recent = finished.order_by("-version").values("pk")[:RECENT_PLANS]
    figures = PlacementPlan.objects.filter(pk__in=Subquery(recent)).aggregate(
        plans=Count("pk"),
        solve_sum=Coalesce(Sum("solve_seconds"), 0.0),
        gaps=Count("gap"),
        gap_sum=Coalesce(Sum("gap"), 0.0),
        **{f"le_{i}": Count("pk", filter=Q(solve_seconds__lte=b)) for i, b in enumerate(SOLVE_SECONDS_BUCKETS)},
        **{f"gap_le_{i}": Count("pk", filter=Q(gap__lte=b)) for i, b in enumerate(GAP_BUCKETS)},
    )
    yield GaugeHistogramMetricFamily(
        "mcm_plan_solve_seconds_recent",
        f"Solver time of the newest {RECENT_PLANS} solved placement plans, in seconds.",
        buckets=histogram_buckets(figures, SOLVE_SECONDS_BUCKETS, figures["plans"]),
        gsum_value=figures["solve_sum"],
    )
    gap_counts = {f"le_{i}": figures[f"gap_le_{i}"] for i in range(len(GAP_BUCKETS))}
    yield GaugeHistogramMetricFamily(
        "mcm_plan_gap_recent",
        f"Relative optimality gap of those of the newest {RECENT_PLANS} solved plans that have one.",
        buckets=histogram_buckets(gap_counts, GAP_BUCKETS, figures["gaps"]),
        gsum_value=figures["gap_sum"],
    )


def demand_metrics():
    plan = current_plan()
    unmet = GaugeMetricFamily(
        "mcm_unmet_replicas", "Replicas the current plan could not place, by customer tier.", labels=["tier"]
    )
    placed = GaugeMetricFamily(
        "mcm_placed_replicas", "Replicas the current plan places, by customer tier.", labels=["tier"]
    )
    by_tier = {}
    if plan is not None:
        rows = (
            DeploymentOutcome.objects.filter(plan=plan)
            .values("deployment__customer__tier")
            .annotate(unmet=Sum("unmet_replicas"), placed=Sum("placed_replicas"))
        )
        by_tier = {row["deployment__customer__tier"]: row for row in rows}
    for tier in TIER_ORDER:
        row = by_tier.get(tier.value, {"unmet": 0, "placed": 0})
        unmet.add_metric([tier.value], row["unmet"])
        placed.add_metric([tier.value], row["placed"])
    yield from (unmet, placed)


def replica_metrics():
    """Yield replicas by provider and state: planned, and requested and ready as the clusters last reported."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    plan = current_plan()
    if plan is not None:
        planned = (
            Assignment.objects.filter(plan=plan).values("cluster__region__provider__name").annotate(n=Sum("replicas"))
        )
        for row in planned:
            counts[row["cluster__region__provider__name"], "planned"] += row["n"]

    latest = TelemetrySnapshot.objects.filter(cluster=OuterRef("pk")).order_by("-taken_at").values("pk")[:1]
    clusters = executable_clusters().annotate(snapshot_id=Subquery(latest))
    snapshot_ids = [pk for pk in clusters.values_list("snapshot_id", flat=True) if pk is not None]
    snapshots = TelemetrySnapshot.objects.filter(pk__in=snapshot_ids, ok=True)
    reported = 0
    for provider, deployments in snapshots.values_list("cluster__region__provider__name", "deployments"):
        reported += 1
        for observed in (deployments or {}).values():
            counts[provider, "requested"] += int(observed.get("replicas") or 0)
            counts[provider, "ready"] += int(observed.get("ready") or 0)

    replicas = GaugeMetricFamily(
        "mcm_replicas",
        "Replicas by provider and state: planned by the current plan; requested and ready in the latest good "
        "telemetry snapshot of each cluster.",
        labels=["provider", "state"],
    )
    for (provider, state), value in sorted(counts.items()):
        replicas.add_metric([provider, state], value)
    yield replicas
    yield GaugeMetricFamily(
        "mcm_clusters_unreported",
        "Clusters with an API endpoint whose latest telemetry read failed or that were never read; "
        "their replicas are missing from mcm_replicas requested and ready.",
        value=clusters.count() - reported,
    )


def event_metrics():
    sums = EventIngestCount.objects.aggregate(
        accepted=Coalesce(Sum("accepted"), 0),
        duplicate=Coalesce(Sum("duplicates"), 0),
        rejected=Coalesce(Sum("rejected"), 0),
    )
    events = CounterMetricFamily(
        "mcm_ingested_events",
        "Events pushed by cluster agents, by outcome: accepted (stored), duplicate (already stored) "
        "or rejected (invalid).",
        labels=["outcome"],
    )
    for outcome in ("accepted", "duplicate", "rejected"):
        events.add_metric([outcome], sums[outcome])
    yield events


def task_metrics(now: datetime):
    runs = GaugeMetricFamily(
        "mcm_task_runs_last_hour",
        "Background task runs started in the last hour, by task and status.",
        labels=["task", "status"],
    )
    rows = (
        TaskRun.objects.filter(started_at__gte=now - TASK_RUN_WINDOW)
        .values("task_name", "status")
        .annotate(n=Count("pk"))
        .order_by("task_name", "status")
    )
    for row in rows:
        runs.add_metric([row["task_name"], row["status"]], row["n"])
    yield runs

    late = GaugeMetricFamily(
        "mcm_schedule_late", "1 when a beat schedule has not run for over twice its interval.", labels=["schedule"]
    )
    last_run = GaugeMetricFamily(
        "mcm_schedule_last_run_timestamp_seconds", "When a beat schedule last ran, as a Unix time.", labels=["schedule"]
    )
    for status in schedule_statuses(now):
        late.add_metric([status.name], int(status.late))
        if status.last_run_at is not None:
            last_run.add_metric([status.name], status.last_run_at.timestamp())
    yield from (late, last_run)

    backlog = GaugeMetricFamily(
        "mcm_queue_backlog",
        "Task messages waiting in the broker; absent when tasks run in process or Redis is unreadable.",
    )
    waiting = queue_backlog()
    if waiting is not None:
        backlog.add_metric([], waiting)
    yield backlog


def reconcile_metrics():
    open_drift = GaugeMetricFamily(
        "mcm_drift_unrepaired",
        "Differences between plan and clusters that reconciliation has not repaired, by action.",
        labels=["action"],
    )
    for action, count in (
        DriftRecord.objects.filter(repaired_at__isnull=True)
        .values_list("action")
        .annotate(n=Count("pk"))
        .order_by("action")
    ):
        open_drift.add_metric([action], count)
    yield open_drift

    run = (
        TaskRun.objects.filter(task_name="reconcile_clusters", status=TaskRunStatus.SUCCEEDED)
        .order_by("-started_at")
        .values("started_at", "summary")
        .first()
    )
    last_run = GaugeMetricFamily(
        "mcm_reconcile_last_run_timestamp_seconds",
        "When the newest successful reconciliation run started, as a Unix time.",
    )
    figures = GaugeMetricFamily(
        "mcm_reconcile_last_run",
        "Counts of the newest successful reconciliation run: drift_recorded, repaired, repairs_failed, "
        "steps_timed_out and clusters_unreachable.",
        labels=["result"],
    )
    if run is not None:
        summary = run["summary"] or {}
        last_run.add_metric([], run["started_at"].timestamp())
        for name in RECONCILE_FIGURES:
            figures.add_metric([name], int(summary.get(name) or 0))
        figures.add_metric(["clusters_unreachable"], len(summary.get("clusters_unreachable") or []))
    yield from (last_run, figures)


# Failovers.


def failover_metrics(now: datetime):
    durations, unfinished = failover_durations(now)
    counts = {
        f"le_{index}": sum(1 for duration in durations if duration <= bound)
        for index, bound in enumerate(FAILOVER_SECONDS_BUCKETS)
    }
    histogram = GaugeHistogramMetricFamily(
        "mcm_failover_duration_seconds",
        "Seconds from the fault (first missed heartbeat, or the start of a declared outage) to every replacement "
        "replica ready, for failovers decided in the last day.",
        buckets=histogram_buckets(counts, FAILOVER_SECONDS_BUCKETS, len(durations)),
        gsum_value=sum(durations),
    )
    last = GaugeMetricFamily(
        "mcm_failover_last_duration_seconds",
        "Fault to every replacement replica ready, for the newest finished failover.",
    )
    if durations:
        last.add_metric([], durations[0])
    yield from (histogram, last)
    yield GaugeMetricFamily(
        "mcm_failovers_unfinished",
        "Failovers decided in the last day whose replacement replicas are not all ready yet.",
        value=unfinished,
    )
    pending = FailoverRequest.objects.filter(kind=FailoverKind.FAILOVER, status=FailoverStatus.PENDING).count()
    yield GaugeMetricFamily("mcm_failovers_awaiting_approval", "Failovers waiting for a staff decision.", value=pending)


def failover_durations(now: datetime) -> tuple[list[float], int]:
    """Return the seconds from fault to ready of the failovers decided in the window, newest first.

    Also returns how many of those failovers are unfinished: their replacements are not all ready yet.
    """
    clusters = Prefetch("clusters", queryset=Cluster.objects.select_related("region"))
    requests = list(
        FailoverRequest.objects.filter(
            kind=FailoverKind.FAILOVER,
            status__in=[FailoverStatus.APPROVED, FailoverStatus.TIMED_OUT],
            decided_at__gte=now - FAILOVER_WINDOW,
        )
        .order_by("-decided_at")
        .prefetch_related(clusters)[:MAX_FAILOVERS]
    )
    if not requests:
        return [], 0
    earliest = min(request.created_at for request in requests)
    outages = list(
        Outage.objects.filter(started_at__lte=max(request.created_at for request in requests)).filter(
            Q(cleared_at__isnull=True) | Q(cleared_at__gte=earliest)
        )
    )
    durations, unfinished = [], 0
    for request in requests:
        ready_at = replacements_ready_at(request)
        if ready_at is None:
            unfinished += 1
            continue
        durations.append((ready_at - fault_started_at(request, outages)).total_seconds())
    return durations, unfinished


def fault_started_at(request: FailoverRequest, outages: list[Outage]) -> datetime:
    """Return the earliest start of the fault behind ``request``; its creation time when nothing earlier is recorded.

    A fault starts at the first missed heartbeat that the down verdict of one of its clusters
    recorded in the audit trail, or at the start of an outage covering one of them.
    """
    clusters = list(request.clusters.all())
    starts = [request.created_at]
    for outage in outages:
        open_then = outage.started_at <= request.created_at and (
            outage.cleared_at is None or outage.cleared_at >= request.created_at
        )
        if open_then and any(covers(outage, cluster) for cluster in clusters):
            starts.append(outage.started_at)
    verdicts = (
        AuditEvent.objects.filter(
            action="cluster.health_changed",
            subject_type=Cluster._meta.label_lower,
            subject_id__in=[str(cluster.pk) for cluster in clusters],
            created_at__lte=request.created_at,
            created_at__gte=request.created_at - FAULT_LOOKBACK,
        )
        .order_by("subject_id", "-created_at")
        .values_list("subject_id", "after")
    )
    for _, changes in groupby(verdicts, key=lambda verdict: verdict[0]):
        # The newest down verdict of each cluster before the request.
        down = next((after for _, after in changes if (after or {}).get("health") == "down"), None)
        first_missed = parse_datetime((down or {}).get("first_missed_heartbeat_at") or "")
        if first_missed is not None:
            starts.append(first_missed)
    return min(starts)


def replacements_ready_at(request: FailoverRequest) -> datetime | None:
    """Return when the failover's replacement replicas were all ready; None while they are not.

    The replacements are the scale-up steps of the deployment, outside the lost clusters, in the
    first applied plan after the decision whose steps settled. A plan whose steps were superseded
    or failed hands over to the next one.
    """
    lost = [cluster.pk for cluster in request.clusters.all()]
    # Plans are numbered in creation order, so the newest plan made before the decision bounds the search.
    before = (
        PlacementPlan.objects.filter(created_at__lt=request.decided_at)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    steps = (
        ExecutionStep.objects.filter(
            deployment_id=request.deployment_id, plan_id__gt=before or 0, phase=StepPhase.SCALE_UP
        )
        .exclude(cluster_id__in=lost)
        .order_by("plan_id")
        .values_list("plan_id", "status", "executed_at")[:MAX_STEPS_PER_FAILOVER]
    )
    for _, plan_steps in groupby(steps, key=lambda step: step[0]):
        statuses = [(status, executed_at) for _, status, executed_at in plan_steps]
        if all(status == StepStatus.EXECUTED for status, _ in statuses):
            return max(executed_at for _, executed_at in statuses)
        if any(status == StepStatus.PENDING for status, _ in statuses):
            return None
    return None
