"""Outage drills: take the demo's emulated clusters down, or bring them back, and time what MCM does.

Demo and benchmark only: it switches the ``unreachable`` fault of the emulated clusters that
``placements.demo_loop.start_emulated_fleet`` started, which MCM's product code never does. While
the fault is on, MCM's own loop runs in this process, one step at a time, on the intervals of the
default beat schedule (``setup_schedules``):

- every heartbeat: telemetry of every registered cluster (``fleet.telemetry.collect_many``), a
  health evaluation (``fleet.health.evaluate_health``), a re-plan with trigger ``health`` when the
  evaluation requests one, and expiry of failover approvals (``placements.failover.expire_requests``);
- every 1.5 heartbeats (15 s at the default 10 s): a reconcile pass;
- every ``MCM_EXECUTION_POLL_S`` once a new plan exists: an execution pass, then a measurement.

"Ready elsewhere" is observed, never inferred: the drill lists the Deployments of the clusters the
current plan uses through their Kubernetes API, as ``demo_loop.measure`` does, and counts a
deployment ready when every such cluster reports at least its planned replicas ready. Because
one thread runs every step, a measurement due during a heartbeat waits for it, so a "ready" time
is late by at most the length of one heartbeat's work. Offsets on the timeline count from the
moment the fault was switched.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.test.utils import override_settings
from django.utils import timezone

from emulator import EmulatedCluster
from fleet.availability import cluster_availability, covers
from fleet.health import evaluate_health
from fleet.models import Cluster, ClusterHealth, Outage, OutageSource, Provider, Region, TelemetrySnapshot
from fleet.telemetry import collect_many
from mcm_site.celery import app as celery_app
from placements.execution import execute_plan
from placements.failover import expire_requests
from placements.models import (
    TIER_ORDER,
    Assignment,
    Deployment,
    DeploymentCondition,
    ExecutionStep,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    PlanStatus,
    PlanTrigger,
    StepStatus,
)
from placements.observation import executable_clusters, observe_clusters, open_adapters, ready_on
from placements.planning import run_plan
from placements.reconcile import reconcile
from placements.routing import cached_entries, serving_entries
from placements.services import current_plan

ACTOR = "outage drill"
SCOPES = ("provider", "region", "cluster")
OUTAGE = "outage"
RECOVERY = "recovery"
DEFAULT_TIMEOUT_S = 300.0
# The default schedules read telemetry every 10 s and reconcile every 15 s.
RECONCILE_EVERY_HEARTBEATS = 1.5


class DrillError(ValueError):
    """A drill that cannot run: unknown target, clusters without an emulator, no applied plan."""


# The timeline.


@dataclass
class TimelineEvent:
    offset_s: float
    label: str


@dataclass
class PlanMade:
    version: int
    offset_s: float
    build_s: float
    solve_s: float
    trigger: str
    unmet_replicas: int


@dataclass
class TierResult:
    """Replicas of one tier that the drill moves: off the failed clusters, or back onto them."""

    tier: str
    deployments: int = 0
    # Outage: replicas the plan before the fault ran on the failed clusters.
    # Recovery: those replicas again, which may now return.
    affected: int = 0
    moved: int = 0  # re-placed elsewhere (outage) or planned back (recovery)
    unmet: int = 0  # affected replicas the current plan places nowhere else (outage) or keeps away (recovery)
    ready_after_s: float | None = None
    # Outage: when the routes of every affected deployment of the tier listed no failed cluster and
    # at least one other. Recovery: when they listed a recovered cluster wherever the plan returned replicas.
    routes_after_s: float | None = None
    # Affected deployments left without any route, because nothing could be placed elsewhere.
    without_routes: int = 0

    @property
    def done(self) -> bool:
        return self.ready_after_s is not None


@dataclass
class Timeline:
    """The events after a drill switched the fault, with offsets in seconds from that moment."""

    kind: str  # OUTAGE or RECOVERY
    scope: str
    target: str
    clusters: list[str]
    heartbeat_s: float
    started_at: datetime
    baseline_version: int
    events: list[TimelineEvent] = field(default_factory=list)
    # Outage: the first missed heartbeat of a failed cluster. Recovery: the first successful read.
    first_heartbeat_s: float | None = None
    # Outage: every failed cluster lost to placement (down, or covered by an open outage).
    # Recovery: every cluster healthy again.
    declared_s: float | None = None
    failback_due_s: float | None = None
    plans: list[PlanMade] = field(default_factory=list)
    # The first plan made once the clusters were declared down (outage) or failback was due (recovery).
    plan: PlanMade | None = None
    ready_s: float | None = None
    tiers: dict[str, TierResult] = field(default_factory=dict)
    awaiting_approval: int = 0
    blocked: int = 0
    timed_out: bool = False
    # At a time-out: the execution steps of the current plan that were still pending.
    pending_steps: int = 0
    pending_plan_version: int | None = None
    elapsed_s: float = 0.0
    # Where the drill read the routes: "cache" (the route table in Redis) or "database".
    routes_source: str = ""

    @property
    def heartbeat_to_ready_s(self) -> float | None:
        """Seconds from the first missed heartbeat to every affected replica ready elsewhere."""
        if self.first_heartbeat_s is None or self.ready_s is None:
            return None
        return self.ready_s - self.first_heartbeat_s

    @property
    def affected(self) -> int:
        return sum(tier.affected for tier in self.tiers.values())

    @property
    def moved(self) -> int:
        return sum(tier.moved for tier in self.tiers.values())

    @property
    def unmet(self) -> int:
        return sum(tier.unmet for tier in self.tiers.values())

    def offset(self, moment: datetime) -> float:
        return (moment - self.started_at).total_seconds()

    def add(self, offset_s: float, label: str) -> None:
        self.events.append(TimelineEvent(round(offset_s, 3), label))
        self.events.sort(key=lambda event: event.offset_s)

    def format(self) -> str:
        return "\n".join(format_timeline(self))


def format_timeline(timeline: Timeline) -> list[str]:
    noun = "Outage" if timeline.kind == OUTAGE else "Recovery"
    names = ", ".join(timeline.clusters[:4])
    if len(timeline.clusters) > 4:
        names += f" and {len(timeline.clusters) - 4} more"
    lines = [
        f"{noun} drill: {timeline.scope} {timeline.target}, {len(timeline.clusters)} clusters ({names}), "
        f"heartbeat every {timeline.heartbeat_s:g} s, plan v{timeline.baseline_version} before the fault",
    ]
    for event in timeline.events:
        lines.append(f"  {event.offset_s:8.1f} s  {event.label}")
    if any(tier.affected and tier.routes_after_s is None for tier in timeline.tiers.values()):
        lines.append(f"  {'':8}    routes: not updated for every tier before the end")
    if timeline.timed_out:
        lines.append(
            f"  {timeline.elapsed_s:8.1f} s  timed out before every replica was ready; "
            f"{timeline.pending_steps} execution steps of plan v{timeline.pending_plan_version} still pending"
        )

    lines.append("")
    moved = "re-placed" if timeline.kind == OUTAGE else "returned"
    unmet = "unmet" if timeline.kind == OUTAGE else "stay away"
    header = (
        f"  {'tier':<12} {'deployments':>11} {'affected':>8} {moved:>9} {unmet:>9} {'ready after':>11} "
        f"{'routes after':>12}"
    )
    lines.append(header)
    for tier in (timeline.tiers.get(tier.value) for tier in TIER_ORDER):
        if tier is None:
            continue
        ready = f"{tier.ready_after_s:.1f} s" if tier.ready_after_s is not None else "not ready"
        routes = f"{tier.routes_after_s:.1f} s" if tier.routes_after_s is not None else "not updated"
        if tier.affected == 0:
            ready = routes = "-"
        lines.append(
            f"  {tier.tier:<12} {tier.deployments:>11} {tier.affected:>8} {tier.moved:>9} {tier.unmet:>9} {ready:>11} "
            f"{routes:>12}"
        )
    lines.append(
        f"  {'all':<12} {sum(t.deployments for t in timeline.tiers.values()):>11} {timeline.affected:>8} "
        f"{timeline.moved:>9} {timeline.unmet:>9}"
    )
    if timeline.awaiting_approval:
        lines.append(f"  {timeline.awaiting_approval} deployments await staff approval")
    if timeline.blocked:
        lines.append(f"  {timeline.blocked} deployments are failover blocked: no cluster satisfies their locks")
    without_routes = sum(tier.without_routes for tier in timeline.tiers.values())
    if without_routes:
        lines.append(f"  {without_routes} deployments have no route: no replica is placed outside the failed clusters")

    lines.append("")
    if timeline.kind == OUTAGE:
        total = timeline.heartbeat_to_ready_s
        if total is not None:
            lines.append(f"First missed heartbeat to every affected replica ready elsewhere: {total:.1f} s")
        else:
            lines.append("Not every affected replica was ready elsewhere before the time-out.")
    elif timeline.ready_s is not None:
        lines.append(f"Recovery to failback complete: {timeline.ready_s:.1f} s")
    else:
        lines.append("Failback did not complete before the time-out.")
    return lines


# Choosing the clusters.


def resolve_scope(scope: str, target: str) -> list[Cluster]:
    """Return the clusters of a provider, region or cluster; raise ``DrillError`` naming the value.

    A region is its code, or ``provider/code`` when several providers use the code.
    """
    registered = Cluster.objects.select_related("region__provider").order_by("name")
    if scope == "provider":
        if not Provider.objects.filter(name=target).exists():
            names = [provider.name for provider in providers_with_clusters()]
            raise DrillError(f"no provider named {target!r}; {known(names, target)}")
        clusters = list(registered.filter(region__provider__name=target))
    elif scope == "region":
        provider, _, code = target.rpartition("/")
        regions = Region.objects.filter(code=code, **({"provider__name": provider} if provider else {}))
        regions = list(regions.filter(clusters__isnull=False).distinct().select_related("provider"))
        if not regions:
            raise DrillError(f"no region {target!r} with clusters; {known(regions_with_clusters(), target)}")
        if len(regions) > 1:
            keys = ", ".join(sorted(f"{region.provider.name}/{region.code}" for region in regions))
            raise DrillError(f"region code {target!r} is used by several providers; name one of {keys}")
        clusters = list(registered.filter(region=regions[0]))
    elif scope == "cluster":
        if not Cluster.objects.filter(name=target).exists():
            raise DrillError(f"no cluster named {target!r}; {known(registered.values_list('name', flat=True), target)}")
        clusters = list(registered.filter(name=target))
    else:
        raise DrillError(f"scope {scope!r} is invalid: use one of {', '.join(SCOPES)}")
    if not clusters:
        raise DrillError(f"{scope} {target!r} has no clusters to take down")
    return clusters


def providers_with_clusters() -> list[Provider]:
    return list(Provider.objects.filter(regions__clusters__isnull=False).distinct().order_by("name"))


def regions_with_clusters() -> list[str]:
    regions = Region.objects.filter(clusters__isnull=False).distinct().select_related("provider")
    return sorted(f"{region.provider.name}/{region.code}" for region in regions)


def known(names: Iterable[str], near: str = "", shown: int = 6) -> str:
    """Return "valid names include ..." for an error message, names that contain ``near`` first."""
    names = sorted(set(names), key=lambda name: (near.lower() not in name.lower(), name))
    if not names:
        return "there are none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"valid names include {', '.join(names[:shown])}{more}"


# The drill.


@dataclass
class DrillState:
    """State of the drill loop, kept between heartbeats."""

    timeline: Timeline
    cluster_ids: set[int]
    # Replicas per deployment and cluster in the plan that was applied before the fault.
    baseline: dict[int, dict[int, int]]
    tiers: dict[int, str]  # deployment id -> tier
    executed_plan_id: int | None = None
    execution_done: bool = True
    seen_outages: set[tuple[str, int]] = field(default_factory=set)
    first_cluster_event: bool = False
    failback_replanned: bool = False
    ready_tiers: dict[str, float] = field(default_factory=dict)
    routes_tiers: dict[str, float] = field(default_factory=dict)


def run_drill(
    *,
    scope: str,
    target: str,
    emulated: list[EmulatedCluster],
    recover: bool = False,
    progress: Callable[[str], None] = lambda line: None,
    heartbeat_s: float = 10.0,
    timeout_s: float | None = None,
    failback_after_s: float | None = None,
    baseline_version: int | None = None,
    pending_timeout_s: float | None = None,
) -> Timeline:
    """Take a provider's, region's or cluster's emulated clusters down (or back up) and time MCM's response.

    ``emulated`` are the running emulated clusters, matched to MCM's clusters by name. With
    ``recover`` the drill brings them back and times failback. ``failback_after_s`` then replaces
    ``MCM_FAILBACK_AFTER_S`` for the drill, and ``baseline_version`` names the plan whose replicas
    should return (default: the last plan that placed replicas on these clusters). The health
    thresholds are the configured ones. ``MCM_HEARTBEAT_INTERVAL_S`` is set to ``heartbeat_s`` for
    the drill. ``pending_timeout_s``, if given, replaces ``MCM_EXECUTION_TIMEOUT_S``: how long a
    replica may stay pending before it is placed elsewhere. Tasks that the loop enqueues, such
    as a re-plan after that time-out, run at once in this process. Raises ``DrillError`` before
    switching anything when the drill cannot run.
    """
    if heartbeat_s <= 0:
        raise DrillError(f"heartbeat {heartbeat_s} s is invalid: use a positive number of seconds")
    clusters = resolve_scope(scope, target)
    by_name = {cluster.name: cluster for cluster in emulated}
    missing = [cluster.name for cluster in clusters if cluster.name not in by_name]
    if missing:
        raise DrillError(f"clusters without a running emulator: {', '.join(missing[:6])}; start the emulated fleet")
    baseline_plan = pick_baseline(clusters, recover=recover, version=baseline_version)

    overrides = {"MCM_HEARTBEAT_INTERVAL_S": heartbeat_s}
    if pending_timeout_s is not None:
        if pending_timeout_s <= 0:
            raise DrillError(f"pending time-out {pending_timeout_s} s is invalid: use a positive number of seconds")
        overrides["MCM_EXECUTION_TIMEOUT_S"] = pending_timeout_s
    if failback_after_s is not None:
        if failback_after_s < 0:
            raise DrillError(f"failback delay {failback_after_s} s is invalid: use 0 or more seconds")
        overrides["MCM_FAILBACK_AFTER_S"] = failback_after_s
    with tasks_in_process(), override_settings(**overrides):
        if timeout_s is None:
            timeout_s = DEFAULT_TIMEOUT_S + (settings.MCM_FAILBACK_AFTER_S if recover else 0)
        check_start(clusters, recover=recover)
        state = start_state(scope, target, clusters, baseline_plan, heartbeat_s, recover=recover)
        affected = sum(
            replicas
            for deployment_id in affected_deployments(state)
            for cluster_id, replicas in state.baseline[deployment_id].items()
            if cluster_id in state.cluster_ids
        )
        progress(
            f"Plan v{baseline_plan.version} runs {affected} replicas of "
            f"{len(affected_deployments(state))} deployments on these clusters."
        )
        # One heartbeat before the fault, so that the health monitor has run and the fault falls
        # between two heartbeats as a real one would.
        progress(f"Heartbeat before the fault: reading {executable_clusters().count()} clusters...")
        collect_and_evaluate(state, record=False)

        for cluster in clusters:
            by_name[cluster.name].set_unreachable(not recover)
        state.timeline.started_at = timezone.now()
        action = "unreachable" if not recover else "reachable again"
        switched = "switched on" if not recover else "cleared"
        state.timeline.add(0.0, f"fault {switched}: {len(clusters)} clusters {action}")
        progress(f"{len(clusters)} clusters of {scope} {target} are {action}; running MCM's loop...")
        run_loop(state, heartbeat_s=heartbeat_s, timeout_s=timeout_s, recover=recover, progress=progress)
    return state.timeline


@contextmanager
def tasks_in_process() -> Iterator[None]:
    """Run enqueued Celery tasks at once in this process, as embedded mode does, then restore the setting."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = before


def pick_baseline(clusters: list[Cluster], *, recover: bool, version: int | None) -> PlacementPlan:
    plan = current_plan()
    if plan is None:
        raise DrillError("no applied plan: plan and converge the fleet before a drill")
    if version is not None:
        found = PlacementPlan.objects.filter(version=version).first()
        if found is None:
            raise DrillError(f"baseline plan v{version} not found")
        return found
    if not recover:
        return plan
    # The last plan, applied or superseded, that placed replicas on these clusters.
    found = (
        PlacementPlan.objects.filter(
            status__in=[PlanStatus.APPLIED, PlanStatus.SUPERSEDED], assignments__cluster__in=clusters
        )
        .order_by("-version")
        .first()
    )
    return found or plan


def check_start(clusters: list[Cluster], *, recover: bool) -> None:
    """Raise ``DrillError`` when an outage drill's clusters are already lost to placement."""
    fresh = Cluster.objects.filter(pk__in=[cluster.pk for cluster in clusters]).select_related("region")
    availability = cluster_availability(fresh)
    lost = sorted(cluster.name for cluster in clusters if availability[cluster.pk].lost)
    if not recover and lost:
        raise DrillError(f"clusters already lost to placement: {', '.join(lost[:6])}; recover them first")


def start_state(
    scope: str, target: str, clusters: list[Cluster], plan: PlacementPlan, heartbeat_s: float, *, recover: bool
) -> DrillState:
    baseline: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for deployment_id, cluster_id, replicas in Assignment.objects.filter(plan=plan).values_list(
        "deployment_id", "cluster_id", "replicas"
    ):
        baseline[deployment_id][cluster_id] += replicas
    tiers = dict(Deployment.objects.values_list("pk", "customer__tier"))
    timeline = Timeline(
        kind=RECOVERY if recover else OUTAGE,
        scope=scope,
        target=target,
        clusters=[cluster.name for cluster in clusters],
        heartbeat_s=heartbeat_s,
        started_at=timezone.now(),
        baseline_version=plan.version,
        tiers={tier.value: TierResult(tier.value) for tier in TIER_ORDER},
    )
    return DrillState(
        timeline=timeline,
        cluster_ids={cluster.pk for cluster in clusters},
        baseline={deployment: dict(by_cluster) for deployment, by_cluster in baseline.items()},
        tiers=tiers,
    )


def run_loop(
    state: DrillState, *, heartbeat_s: float, timeout_s: float, recover: bool, progress: Callable[[str], None]
) -> None:
    """Run heartbeats, reconcile passes and execution passes on their intervals until done or timed out."""
    poll_s = min(settings.MCM_EXECUTION_POLL_S, heartbeat_s)
    reconcile_s = RECONCILE_EVERY_HEARTBEATS * heartbeat_s
    started = time.monotonic()
    next_heartbeat = started + heartbeat_s
    next_reconcile = started + reconcile_s
    next_pass = started + poll_s
    while True:
        if time.monotonic() >= next_heartbeat:
            heartbeat(state, recover=recover, progress=progress)
            next_heartbeat = max(next_heartbeat + heartbeat_s, time.monotonic())
        if time.monotonic() >= next_reconcile:
            reconcile()
            next_reconcile = max(next_reconcile + reconcile_s, time.monotonic())
        if time.monotonic() >= next_pass:
            execution_pass(state)
            done = measure(state, recover=recover)
            state.timeline.elapsed_s = time.monotonic() - started
            if done:
                return
            if state.timeline.elapsed_s > timeout_s:
                time_out(state, progress)
                return
            next_pass = max(next_pass + poll_s, time.monotonic())
        time.sleep(max(0.0, min(next_heartbeat, next_reconcile, next_pass) - time.monotonic()))


def time_out(state: DrillState, progress: Callable[[str], None]) -> None:
    """Mark the timeline timed out, with the execution steps of the current plan still pending."""
    timeline = state.timeline
    timeline.timed_out = True
    plan = current_plan()
    if plan is not None:
        timeline.pending_steps = ExecutionStep.objects.filter(plan=plan, status=StepStatus.PENDING).count()
        timeline.pending_plan_version = plan.version
    progress(f"  timed out after {timeline.elapsed_s:.1f} s")


def heartbeat(state: DrillState, *, recover: bool, progress: Callable[[str], None]) -> None:
    """Run one heartbeat of MCM's loop: telemetry, health, approval expiry and a re-plan when needed."""
    timeline = state.timeline
    report = collect_and_evaluate(state, record=True)
    replan = bool(report.replan_needed)
    expired = expire_requests()
    if expired:
        timeline.add(timeline.offset(timezone.now()), f"{expired} failover approvals timed out; they proceed")
        replan = True
    if recover and not state.failback_replanned and failback_due(state):
        # A health change re-plans at once, but the end of the failback wait is no event: in
        # production the periodic re-plan ("plan placements", every 300 s by default) picks it up.
        # The drill re-plans as soon as it is due.
        replan = True
        state.failback_replanned = True
    if replan:
        trigger = PlanTrigger.HEALTH if report.replan_needed or expired else PlanTrigger.SCHEDULE
        make_plan(state, trigger, progress)
    offset = timeline.offset(timezone.now())
    progress(f"  {offset:6.1f} s  heartbeat: {describe_health(state)}")


def collect_and_evaluate(state: DrillState, *, record: bool):
    ids = list(executable_clusters().values_list("pk", flat=True))
    read_started = timezone.now()
    snapshots = collect_many(ids)
    report = evaluate_health()
    if record:
        note_reads(state, snapshots, read_started)
        note_health(state)
    return report


def note_reads(state: DrillState, snapshots: list[TelemetrySnapshot], read_started: datetime) -> None:
    timeline = state.timeline
    if timeline.first_heartbeat_s is not None:
        return
    mine = [snapshot for snapshot in snapshots if snapshot.cluster_id in state.cluster_ids]
    if timeline.kind == OUTAGE:
        failed = [snapshot for snapshot in mine if not snapshot.ok]
        if not failed:
            return
        # The cluster's own record of when its silence began, when health kept one after the fault.
        missed_at = Cluster.objects.filter(
            pk__in=state.cluster_ids, first_missed_heartbeat_at__gte=timeline.started_at
        ).values_list("first_missed_heartbeat_at", flat=True)
        first = min([*missed_at, *(snapshot.taken_at for snapshot in failed)])
        timeline.first_heartbeat_s = max(0.0, timeline.offset(first))
        timeline.add(timeline.first_heartbeat_s, f"first missed heartbeat ({len(failed)} of {len(mine)} reads failed)")
    else:
        answered = [snapshot for snapshot in mine if snapshot.ok]
        if not answered:
            return
        timeline.first_heartbeat_s = timeline.offset(min(snapshot.taken_at for snapshot in answered))
        timeline.add(timeline.first_heartbeat_s, f"first successful heartbeat ({len(answered)} of {len(mine)} reads)")


def note_health(state: DrillState) -> None:
    """Add the clusters' health changes and detected outages to the timeline."""
    timeline = state.timeline
    clusters = list(Cluster.objects.filter(pk__in=state.cluster_ids).select_related("region"))
    if timeline.kind == OUTAGE:
        availability = cluster_availability(clusters)
        lost = [cluster for cluster in clusters if availability[cluster.pk].lost]
        if lost and not state.first_cluster_event and len(clusters) > 1:
            state.first_cluster_event = True
            first = min(changed_at(cluster, timeline) for cluster in lost)
            timeline.add(timeline.offset(first), f"first cluster declared down ({lost[0].name})")
        if len(lost) == len(clusters) and timeline.declared_s is None:
            last = max(changed_at(cluster, timeline) for cluster in lost)
            timeline.declared_s = timeline.offset(last)
            reasons = sorted({availability[cluster.pk].reason for cluster in lost})
            timeline.add(timeline.declared_s, f"declared down: all {len(clusters)} clusters ({', '.join(reasons)})")
    else:
        healthy = [cluster for cluster in clusters if cluster.health == ClusterHealth.HEALTHY]
        if len(healthy) == len(clusters) and timeline.declared_s is None:
            last = max(changed_at(cluster, timeline) for cluster in healthy)
            timeline.declared_s = timeline.offset(last)
            timeline.add(timeline.declared_s, f"healthy again: all {len(clusters)} clusters")
    note_outages(state, clusters)


def changed_at(cluster: Cluster, timeline: Timeline) -> datetime:
    """When the cluster's health last changed during the drill; now when health did not record it."""
    if cluster.health_changed_at is not None and cluster.health_changed_at >= timeline.started_at:
        return cluster.health_changed_at
    return timezone.now()


def note_outages(state: DrillState, clusters: list[Cluster]) -> None:
    """Add the detected outages opened or cleared since the fault; more than a few of one kind make one line."""
    timeline = state.timeline
    region_ids = {cluster.region_id for cluster in clusters}
    provider_ids = {cluster.region.provider_id for cluster in clusters}
    outages = Outage.objects.filter(source=OutageSource.DETECTED).filter(
        Q(cluster_id__in=state.cluster_ids) | Q(region_id__in=region_ids) | Q(provider_id__in=provider_ids)
    )
    changes: dict[tuple[str, str], list[tuple[datetime, str]]] = defaultdict(list)
    for outage in outages.filter(Q(started_at__gte=timeline.started_at) | Q(cleared_at__gte=timeline.started_at)):
        opened = ("opened", outage.pk)
        if outage.started_at >= timeline.started_at and opened not in state.seen_outages:
            state.seen_outages.add(opened)
            changes["detected", outage.scope].append((outage.started_at, str(outage.target)))
        closed = ("closed", outage.pk)
        if outage.cleared_at is not None and closed not in state.seen_outages:
            state.seen_outages.add(closed)
            changes["cleared", outage.scope].append((outage.cleared_at, str(outage.target)))
    for (change, scope), items in sorted(changes.items()):
        items.sort()
        if len(items) <= 3:
            for moment, target in items:
                timeline.add(timeline.offset(moment), f"{scope} outage {change}: {target}")
            continue
        names = ", ".join(target for _, target in items[:3])
        timeline.add(
            timeline.offset(items[0][0]), f"{len(items)} {scope} outages {change} ({names} and {len(items) - 3} more)"
        )


def failback_due(state: DrillState) -> bool:
    """Return whether every recovered cluster is schedulable again, so failback may start; note when it became due.

    A recovered cluster keeps its replicas but gets no new ones until it has been healthy, and its
    detected outage cleared, for ``MCM_FAILBACK_AFTER_S`` (``fleet.availability``).
    """
    timeline = state.timeline
    clusters = list(Cluster.objects.filter(pk__in=state.cluster_ids).select_related("region"))
    availability = cluster_availability(clusters)
    if not all(availability[cluster.pk].schedulable for cluster in clusters):
        return False
    if timeline.failback_due_s is None:
        wait = timedelta(seconds=settings.MCM_FAILBACK_AFTER_S)
        moments = [cluster.healthy_since + wait for cluster in clusters if cluster.healthy_since is not None]
        moments += [
            outage.cleared_at + wait
            for outage in Outage.objects.filter(cleared_at__gte=timeline.started_at)
            if any(covers(outage, cluster) for cluster in clusters)
        ]
        due_at = min(max([timeline.started_at, *moments]), timezone.now())
        timeline.failback_due_s = timeline.offset(due_at)
        timeline.add(timeline.failback_due_s, f"failback due: healthy for {settings.MCM_FAILBACK_AFTER_S:g} s")
    return True


def make_plan(state: DrillState, trigger: str, progress: Callable[[str], None]) -> None:
    timeline = state.timeline
    plan = run_plan(actor=ACTOR, trigger=trigger)
    made = PlanMade(
        version=plan.version,
        offset_s=timeline.offset(plan.applied_at or plan.created_at),
        build_s=plan.build_seconds or 0.0,
        solve_s=plan.solve_seconds or 0.0,
        trigger=trigger,
        unmet_replicas=plan.summary.get("unmet_replicas", 0),
    )
    timeline.plans.append(made)
    timeline.add(
        made.offset_s,
        f"plan v{made.version} made (trigger {trigger}; model build {made.build_s:.2f} s, solve {made.solve_s:.2f} s, "
        f"{made.unmet_replicas} replicas unmet fleet-wide)",
    )
    progress(f"  {made.offset_s:6.1f} s  plan v{made.version} applied")
    # The applied plan's execution is enqueued on commit in production; here it starts at once.
    state.executed_plan_id = plan.pk
    state.execution_done = execute_plan(plan.pk).done


def execution_pass(state: DrillState) -> None:
    plan = current_plan()
    if plan is None or plan.version <= state.timeline.baseline_version:
        return
    if plan.pk != state.executed_plan_id:
        state.executed_plan_id = plan.pk
        state.execution_done = False
    if not state.execution_done:
        state.execution_done = execute_plan(plan.pk).done


def describe_health(state: DrillState) -> str:
    counts: dict[str, int] = defaultdict(int)
    for health in Cluster.objects.filter(pk__in=state.cluster_ids).values_list("health", flat=True):
        counts[health] += 1
    return ", ".join(f"{count} {health}" for health, count in sorted(counts.items()))


# Measurement.


def measure(state: DrillState, *, recover: bool) -> bool:
    """Observe the clusters the current plan uses for the moved replicas; return whether the drill is done."""
    timeline = state.timeline
    plan = current_plan()
    if plan is None:
        return False
    # Only a plan made once the clusters were declared down (or failback was due) moves replicas.
    gate_s = timeline.failback_due_s if recover else timeline.declared_s
    settled = gate_s is not None and any(made.offset_s >= gate_s for made in timeline.plans)
    if settled and timeline.plan is None:
        timeline.plan = next(made for made in timeline.plans if made.offset_s >= gate_s)

    targets = planned_targets(plan, state, recover=recover)
    observed = observe_targets(targets)
    now_s = round(timeline.offset(timezone.now()), 3)
    by_tier = {tier.value: TierResult(tier.value) for tier in TIER_ORDER}
    unready_tiers: set[str] = set()
    for deployment_id in affected_deployments(state):
        by_cluster = state.baseline[deployment_id]
        affected = sum(replicas for cluster_id, replicas in by_cluster.items() if cluster_id in state.cluster_ids)
        tier = by_tier[state.tiers.get(deployment_id, TIER_ORDER[-1].value)]
        tier.deployments += 1
        tier.affected += affected
        planned = targets.get(deployment_id, {})
        moved = 0
        if settled and recover:
            moved = min(sum(planned.values()), affected)
        elif settled:
            before_elsewhere = sum(r for cluster_id, r in by_cluster.items() if cluster_id not in state.cluster_ids)
            moved = max(0, min(sum(planned.values()) - before_elsewhere, affected))
        tier.moved += moved
        tier.unmet += affected - moved
        ready = settled and all(
            ready_on(observed.get(cluster_id), deployment_id) >= replicas for cluster_id, replicas in planned.items()
        )
        if not ready:
            unready_tiers.add(tier.tier)

    where = "elsewhere" if not recover else "back on the recovered clusters"
    for name, tier in by_tier.items():
        if tier.affected == 0:
            continue
        if name in unready_tiers:
            if state.ready_tiers.pop(name, None) is not None:
                timeline.add(now_s, f"{name}: replicas no longer all ready (a newer plan moved them)")
            continue
        if name not in state.ready_tiers:
            state.ready_tiers[name] = now_s
            unmet = f", {tier.unmet} unmet" if tier.unmet else ""
            timeline.add(now_s, f"{name}: {tier.moved} of {tier.affected} affected replicas ready {where}{unmet}")
        tier.ready_after_s = state.ready_tiers[name]
    timeline.tiers = by_tier
    routes_pending = note_routes(state, targets, settled=settled, recover=recover)

    affected_ids = affected_deployments(state)
    kind = FailoverKind.FAILBACK if recover else FailoverKind.FAILOVER
    timeline.awaiting_approval = FailoverRequest.objects.filter(
        deployment_id__in=affected_ids, kind=kind, status=FailoverStatus.PENDING
    ).count()
    timeline.blocked = Deployment.objects.filter(
        pk__in=affected_ids, condition=DeploymentCondition.FAILOVER_BLOCKED
    ).count()

    if not settled or timeline.awaiting_approval or unready_tiers or routes_pending:
        return False
    if timeline.ready_s is None:
        timeline.ready_s = max([0.0, *state.ready_tiers.values()])
        timeline.add(timeline.ready_s, f"every moved replica ready {where} (observed through the clusters' API)")
    return True


def note_routes(state: DrillState, targets: dict[int, dict[int, int]], *, settled: bool, recover: bool) -> bool:
    """Record per tier when the routes of its affected deployments were updated; return whether a tier waits.

    Outage: a deployment's routes are updated when they list no failed cluster and at least one
    other, or none at all when the plan made after the fault places none of its replicas
    elsewhere (blocked or unmet).
    Recovery: when they list a recovered cluster, if the plan returns replicas there. The routes
    are read where the API reads them: the route table in Redis, else the database.
    """
    timeline = state.timeline
    affected = affected_deployments(state)
    entries = cached_entries(affected)
    timeline.routes_source = "cache" if entries is not None else "database"
    entries = entries or {}
    missing = [deployment_id for deployment_id in affected if deployment_id not in entries]
    if missing:
        # An entry missing from the table is computed from the database, as the API does.
        timeline.routes_source = "database" if len(missing) == len(affected) else "cache and database"
        entries.update(serving_entries(missing))
    updated_at: dict[str, list[datetime]] = defaultdict(list)
    waiting: set[str] = set()
    without: dict[str, int] = defaultdict(int)
    for deployment_id in affected:
        tier = state.tiers.get(deployment_id, TIER_ORDER[-1].value)
        entry = entries.get(deployment_id, {"clusters": [], "refreshed_at": timezone.now().isoformat()})
        listed = {cluster["id"] for cluster in entry["clusters"]}
        planned = targets.get(deployment_id, {})
        if recover:
            done = settled and (not planned or bool(listed & state.cluster_ids))
        else:
            # A suspect or down cluster leaves the routes before any re-plan, when another cluster
            # serves; no route at all counts only once a plan placed nothing elsewhere.
            done = not (listed & state.cluster_ids) and (bool(listed) or (settled and not planned))
            without[tier] += 0 if listed else 1
        if done:
            updated_at[tier].append(datetime.fromisoformat(entry["refreshed_at"]))
        else:
            waiting.add(tier)
    for name, tier in timeline.tiers.items():
        tier.without_routes = without.get(name, 0)
        if tier.affected == 0 or name in waiting:
            continue
        if name not in state.routes_tiers:
            moment = min(max([timeline.started_at, *updated_at[name]]), timezone.now())
            state.routes_tiers[name] = round(timeline.offset(moment), 3)
            timeline.add(
                state.routes_tiers[name],
                f"{name}: routes of {tier.deployments} affected deployments updated ({timeline.routes_source})",
            )
        tier.routes_after_s = state.routes_tiers[name]
    return bool(waiting)


def affected_deployments(state: DrillState) -> list[int]:
    """Deployments that the baseline plan ran on the drill's clusters."""
    return [
        deployment_id
        for deployment_id, by_cluster in state.baseline.items()
        if any(cluster_id in state.cluster_ids for cluster_id in by_cluster)
    ]


def planned_targets(plan: PlacementPlan, state: DrillState, *, recover: bool) -> dict[int, dict[int, int]]:
    """Replicas the plan gives each affected deployment: elsewhere (outage) or on the recovered clusters."""
    rows = Assignment.objects.filter(plan=plan, deployment_id__in=affected_deployments(state))
    rows = rows.filter(cluster_id__in=state.cluster_ids) if recover else rows.exclude(cluster_id__in=state.cluster_ids)
    targets: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for deployment_id, cluster_id, replicas in rows.values_list("deployment_id", "cluster_id", "replicas"):
        targets[deployment_id][cluster_id] += replicas
    return {deployment: dict(by_cluster) for deployment, by_cluster in targets.items()}


def observe_targets(targets: dict[int, dict[int, int]]):
    cluster_ids = {cluster_id for by_cluster in targets.values() for cluster_id in by_cluster}
    if not cluster_ids:
        return {}
    with open_adapters() as adapters:
        return observe_clusters(executable_clusters().filter(pk__in=cluster_ids), adapters)


# Running drills from a command.


def settle_health(*, timeout_s: float = 60.0, progress: Callable[[str], None] = lambda line: None) -> list[str]:
    """Read every registered cluster and evaluate health until none is lost; return the names still lost.

    A freshly started emulated fleet has new endpoints, while the database may still hold the
    health of an earlier run, for example clusters left down by an interrupted drill. Recovery
    takes ``MCM_HEALTH_RECOVER_AFTER_SUCCESSES`` successful reads in a row, so this reads in a
    loop. A cluster under an open outage declared by staff stays lost.
    """
    started = time.monotonic()
    while True:
        collect_many(list(executable_clusters().values_list("pk", flat=True)))
        evaluate_health()
        registered = executable_clusters().select_related("region")
        availability = cluster_availability(registered)
        lost = sorted(cluster.name for cluster in registered if availability[cluster.pk].lost)
        if not lost or time.monotonic() - started > timeout_s:
            return lost
        progress(f"  {len(lost)} clusters still lost to placement ({', '.join(lost[:4])}); reading again")
        time.sleep(1.0)


def start_converged_fleet(
    *, ready_delay_s: float, converge_timeout_s: float, progress: Callable[[str], None], verbose: bool = True
) -> list:
    """Start the emulated fleet, let health settle and converge the applied plan; return the clusters.

    Raises ``DrillError`` when the plan does not converge within ``converge_timeout_s``, after
    stopping the clusters it started.
    """
    from placements import demo_loop  # it imports the emulator, which only demos and drills need

    started = time.monotonic()
    progress(f"Starting one emulated Kubernetes cluster per fleet cluster (ready delay {ready_delay_s:.2g} s)...")
    emulated = demo_loop.start_emulated_fleet(ready_delay_s=ready_delay_s)
    try:
        progress(f"  {len(emulated)} clusters listening on 127.0.0.1; reading them until health settles")
        lost = settle_health(progress=progress)
        if lost:
            progress(f"  still lost to placement: {', '.join(lost[:6])} (an open outage?)")
        plan = current_plan()
        progress(f"Converging plan v{plan.version}: collect, execute, reconcile...")
        state = demo_loop.run_loop(plan, timeout_s=converge_timeout_s, progress=progress if verbose else print_nothing)
        if not state.done:
            raise DrillError(
                f"only {state.converged} of {state.deployments} deployments run what plan v{plan.version} decided "
                f"after {state.seconds:.0f} s; raise --converge-timeout"
            )
        progress(f"  converged in {time.monotonic() - started:.1f} s")
    except BaseException:
        demo_loop.stop_emulated_fleet(emulated)
        raise
    return emulated


def print_nothing(line: str) -> None:
    """Drop a progress line."""


def run_drills(
    *,
    scope: str,
    target: str,
    emulated: list[EmulatedCluster],
    recover: bool,
    heartbeat_s: float,
    timeout_s: float | None,
    failback_after_s: float | None,
    write: Callable[[str], None],
    pending_timeout_s: float | None = None,
) -> list[Timeline]:
    """Run an outage drill, and with ``recover`` the recovery after it; write each timeline. Returns them."""
    outage = run_drill(
        scope=scope,
        target=target,
        emulated=emulated,
        progress=write,
        heartbeat_s=heartbeat_s,
        timeout_s=timeout_s,
        pending_timeout_s=pending_timeout_s,
    )
    write("")
    write(outage.format())
    timelines = [outage]
    if recover:
        write("")
        recovery = run_drill(
            scope=scope,
            target=target,
            emulated=emulated,
            recover=True,
            progress=write,
            heartbeat_s=heartbeat_s,
            timeout_s=timeout_s,
            failback_after_s=failback_after_s,
            baseline_version=outage.baseline_version,
            pending_timeout_s=pending_timeout_s,
        )
        write("")
        write(recovery.format())
        timelines.append(recovery)
    return timelines
