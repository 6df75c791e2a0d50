"""Traffic replay: drive deployments with a request-rate trace, compressed in time, against emulated clusters.

Demo and benchmark only: it sets traffic on emulated clusters, which MCM's product code never
does. Trace time runs ``factor`` times faster than wall time: trace time = ``start_s`` + wall
seconds since the start x ``factor``. Each tick runs MCM's loop in this process, as the outage
drill does. It collects telemetry, which pulls the traffic set on the clusters into traffic
samples. It judges health and re-plans when health requests it, runs the autoscaler pass, executes
the current plan and reconciles. Tasks that the loop enqueues run at once in this process.

Then the tick sets the next traffic. Each deployment's offered rate is its model's trace rate x
its rate scale, split over its demand origins by share. Each origin's requests go to the clusters
that ``placements.routing.routes_for`` returns for the origin's coordinates, filled in rank order
up to their capacity: ready replicas x the policy's ``target_concurrency / seconds_per_request``
req/s. Origins with the larger share take capacity first. What fits is served. What does not fit
is not served, and is reported anyway so that the autoscaler sees the whole demand: it is added to
the origin's first-ranked cluster as queued requests, counted in that cluster's request rate and
in its in-flight requests (served rate x seconds per request, plus the queued rate x seconds per
request, as a load balancer that queues requests counts them). An origin with no route at all
(no ready replica anywhere, e.g. after a scale to zero) is recorded as a pushed traffic sample
without a cluster, as a gateway in front of the deployment would report it.

The report integrates over trace time with the values of each tick until the next tick (a left
Riemann sum): offered and served requests, and replica-hours of ready replicas as the pull
collector read them.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime

from django.db.models import Count
from django.utils import timezone

from emulator import EmulatedCluster
from fleet.health import evaluate_health
from fleet.models import Cluster
from fleet.telemetry import collect_many
from placements.execution import execute_plan
from placements.models import AutoscalingPolicy, Deployment, PlanTrigger, ScalingDecision, ScalingDirection
from placements.observation import executable_clusters, kubernetes_name
from placements.planning import run_plan
from placements.reconcile import reconcile
from placements.services import current_plan
from placements.traces import Trace, TraceError

logger = logging.getLogger(__name__)

ACTOR = "traffic replay"
# With the automatic rate scale, the trace's peak needs this share of the deployment's max replicas
# at the policy's target utilisation, so that the autoscaler has room above the peak.
AUTO_PEAK_SHARE_OF_MAX = 0.8
RECONCILE_EVERY_TICKS = 2


class ReplayError(ValueError):
    """A replay that cannot run: a deployment without demand origins, a trace that does not cover the run."""


# Demand and its split over clusters.


@dataclass(frozen=True)
class Origin:
    label: str
    latitude: float
    longitude: float
    share: float


@dataclass(frozen=True)
class Route:
    """One cluster of an origin's routes, in rank order, with the requests per second it can serve."""

    cluster_id: int
    capacity_rps: float


@dataclass
class Split:
    """The split of one deployment's offered requests over clusters at one tick."""

    offered_rps: float = 0.0
    served_rps: float = 0.0
    # cluster id -> origin label -> [requests per second, in-flight requests], queued ones included.
    by_cluster: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    # origin label -> requests per second that no cluster could take, because no route existed.
    unrouted: dict[str, float] = field(default_factory=dict)

    @property
    def unserved_rps(self) -> float:
        return self.offered_rps - self.served_rps


def split_demand(
    rate_rps: float, origins: list[Origin], routes: dict[str, list[Route]], *, seconds_per_request: float
) -> Split:
    """Split ``rate_rps`` over the origins by share and fill each origin's routes in rank order.

    A cluster's capacity is shared by the origins it serves; origins with the larger share take
    theirs first. See the module docstring for where unserved requests are reported.
    """
    split = Split(offered_rps=rate_rps)
    remaining: dict[int, float] = {}
    for origin_routes in routes.values():
        for route in origin_routes:
            remaining[route.cluster_id] = route.capacity_rps
    total_share = sum(origin.share for origin in origins)
    for origin in sorted(origins, key=lambda origin: -origin.share):
        left = rate_rps * origin.share / total_share
        origin_routes = routes.get(origin.label, [])
        for route in origin_routes:
            served = min(left, remaining[route.cluster_id])
            if served <= 0:
                continue
            remaining[route.cluster_id] -= served
            left -= served
            split.served_rps += served
            add_traffic(split, route.cluster_id, origin.label, served, served * seconds_per_request)
        if left <= 1e-12:
            continue
        if origin_routes:
            add_traffic(split, origin_routes[0].cluster_id, origin.label, left, left * seconds_per_request)
        else:
            split.unrouted[origin.label] = split.unrouted.get(origin.label, 0.0) + left
    return split


def add_traffic(split: Split, cluster_id: int, origin: str, rps: float, in_flight: float) -> None:
    entry = split.by_cluster.setdefault(cluster_id, {}).setdefault(origin, [0.0, 0.0])
    entry[0] += rps
    entry[1] += in_flight


# The report.


@dataclass
class DeploymentReport:
    """One deployment's results of a replay, with requests and replica-hours in trace time."""

    deployment_id: int
    name: str
    model: str
    rate_scale: float
    offered_requests: float = 0.0
    served_requests: float = 0.0
    replica_hours: float = 0.0
    scale_ups: int = 0
    scale_downs: int = 0
    max_ready_replicas: int = 0
    min_ready_replicas: int | None = None

    @property
    def served_share(self) -> float | None:
        return self.served_requests / self.offered_requests if self.offered_requests else None

    def add(self, *, offered_rps: float, served_rps: float, ready_replicas: int, seconds: float) -> None:
        """Add ``seconds`` of trace time at these rates and this many ready replicas."""
        if seconds < 0:
            raise ValueError(f"seconds must be 0 or more, got {seconds}")
        self.offered_requests += offered_rps * seconds
        self.served_requests += served_rps * seconds
        self.replica_hours += ready_replicas * seconds / 3600
        self.max_ready_replicas = max(self.max_ready_replicas, ready_replicas)
        if self.min_ready_replicas is None or ready_replicas < self.min_ready_replicas:
            self.min_ready_replicas = ready_replicas

    def as_dict(self) -> dict:
        return {**asdict(self), "served_share": self.served_share}


# Report fields that describe one deployment and have no meaning in the totals.
PER_DEPLOYMENT = ("deployment_id", "name", "model", "rate_scale", "min_ready_replicas")


@dataclass
class ReplayReport:
    deployments: list[DeploymentReport]
    start_s: float
    duration_s: float
    factor: float
    start_delay_s: float
    ticks: int = 0
    wall_seconds: float = 0.0
    max_tick_seconds: float = 0.0
    plans: int = 0
    # Policy durations as the run used them, in wall seconds: deployment id -> field -> seconds.
    policy_overrides: dict[int, dict[str, int]] = field(default_factory=dict)

    def totals(self) -> DeploymentReport:
        total = DeploymentReport(0, "all", "", 0.0)
        for item in self.deployments:
            total.offered_requests += item.offered_requests
            total.served_requests += item.served_requests
            total.replica_hours += item.replica_hours
            total.scale_ups += item.scale_ups
            total.scale_downs += item.scale_downs
            total.max_ready_replicas += item.max_ready_replicas
        return total

    def as_dict(self) -> dict:
        return {
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "factor": self.factor,
            "start_delay_s": self.start_delay_s,
            "ticks": self.ticks,
            "wall_seconds": round(self.wall_seconds, 3),
            "max_tick_seconds": round(self.max_tick_seconds, 3),
            "plans": self.plans,
            "policy_overrides": {str(key): value for key, value in self.policy_overrides.items()},
            "deployments": [item.as_dict() for item in self.deployments],
            "totals": {key: value for key, value in self.totals().as_dict().items() if key not in PER_DEPLOYMENT},
        }

    def format(self) -> str:
        header = (
            f"{'deployment':<32} {'model':<8} {'offered req':>12} {'served req':>12} {'served':>7} "
            f"{'replica-h':>9} {'up':>4} {'down':>4} {'max':>4}"
        )
        lines = [header]
        for item in [*self.deployments, self.totals()]:
            share = f"{item.served_share:.1%}" if item.served_share is not None else "-"
            lines.append(
                f"{item.name[:32]:<32} {item.model:<8} {item.offered_requests:>12,.0f} {item.served_requests:>12,.0f} "
                f"{share:>7} {item.replica_hours:>9.2f} {item.scale_ups:>4} {item.scale_downs:>4} "
                f"{item.max_ready_replicas:>4}"
            )
        return "\n".join(lines)


# Preparing a run.


@dataclass
class ReplayTarget:
    """One replayed deployment: the trace it follows and what its replicas can serve."""

    deployment: Deployment
    trace: Trace
    rate_scale: float
    origins: list[Origin]
    capacity_per_replica_rps: float
    seconds_per_request: float

    @property
    def kubernetes_name(self) -> str:
        return kubernetes_name(self.deployment)

    def rate_at(self, t_s: float) -> float:
        return self.trace.rate_at(t_s) * self.rate_scale


def build_targets(
    deployments: list[Deployment], traces: dict[str, Trace], models: list[str], rate_scale: float | None
) -> list[ReplayTarget]:
    """Pair each deployment with a model, ``models[i % len(models)]``; ``rate_scale`` None picks one per deployment.

    The automatic scale makes the model's peak over the whole trace need ``AUTO_PEAK_SHARE_OF_MAX``
    of the deployment's max replicas at the policy's target utilisation.
    """
    targets = []
    for index, deployment in enumerate(deployments):
        policy = deployment.autoscaling
        origins = [
            Origin(origin.name, origin.latitude, origin.longitude, origin.share)
            for origin in deployment.demand_origins.all()
        ]
        if not origins:
            raise ReplayError(f"deployment {deployment} (id {deployment.pk}) has no demand origins; add one")
        trace = traces[models[index % len(models)]]
        capacity = policy.target_concurrency / policy.seconds_per_request
        scale = rate_scale
        if scale is None:
            peak_need_rps = AUTO_PEAK_SHARE_OF_MAX * deployment.max_replicas * capacity * policy.target_utilization
            scale = peak_need_rps / trace.peak_rps if trace.peak_rps > 0 else 1.0
        targets.append(ReplayTarget(deployment, trace, scale, origins, capacity, policy.seconds_per_request))
    return targets


def check_coverage(targets: list[ReplayTarget], start_s: float, duration_s: float) -> None:
    for target in targets:
        if start_s < 0 or start_s + duration_s > target.trace.duration_s:
            raise TraceError(
                f"trace time {start_s:g} to {start_s + duration_s:g} s is outside model {target.trace.model}'s "
                f"trace (0 to {target.trace.duration_s} s)"
            )


def compressed(seconds: int, factor: float) -> int:
    """Return a policy duration divided by ``factor``, at least 1 s because the fields hold whole seconds."""
    return max(1, round(seconds / factor))


@contextmanager
def compressed_policies(targets: list[ReplayTarget], factor: float) -> Iterator[dict[int, dict[str, int]]]:
    """Divide each replayed policy's window and scale-down delay by ``factor``, and restore them afterwards.

    The autoscaler measures both in wall seconds, while the replay runs trace time ``factor``
    times faster. Yields the durations used, by deployment id. The rows are changed in place, so a
    process killed without unwinding (SIGKILL) leaves the shortened values behind.
    """
    # NOTE: a duration shorter than ``factor`` seconds becomes 1 s of wall time, which is ``factor``
    # trace seconds: longer than the policy sets. Exact durations need fractional policy fields.
    saved = {}
    used = {}
    for target in targets:
        policy = AutoscalingPolicy.objects.get(deployment=target.deployment)
        saved[policy.pk] = (policy.window_s, policy.scale_down_delay_s)
        policy.window_s = compressed(policy.window_s, factor)
        policy.scale_down_delay_s = compressed(policy.scale_down_delay_s, factor)
        policy.save(update_fields=["window_s", "scale_down_delay_s"])
        used[target.deployment.pk] = {"window_s": policy.window_s, "scale_down_delay_s": policy.scale_down_delay_s}
    try:
        yield used
    finally:
        for pk, (window_s, delay_s) in saved.items():
            AutoscalingPolicy.objects.filter(pk=pk).update(window_s=window_s, scale_down_delay_s=delay_s)


@contextmanager
def ready_delay(emulated: Iterable[EmulatedCluster], seconds: float) -> Iterator[None]:
    """Set the emulated clusters' replica start delay to ``seconds`` of wall time, and restore it afterwards."""
    clusters = list(emulated)
    saved = [cluster.ready_delay_s for cluster in clusters]
    for cluster in clusters:
        cluster.ready_delay_s = seconds
    try:
        yield
    finally:
        for cluster, before in zip(clusters, saved, strict=True):
            cluster.ready_delay_s = before


# The run.


@dataclass
class LoopState:
    """State kept from one tick to the next: the traffic set, and the values the report integrates."""

    cluster_ids: list[int]
    emulated_by_id: dict[int, EmulatedCluster]
    trace_s: float | None = None
    splits: dict[int, Split] = field(default_factory=dict)
    ready: dict[int, int] = field(default_factory=dict)
    # (cluster id, Kubernetes name) -> origins whose traffic the replay has set there.
    reported: dict[tuple[int, str], set[str]] = field(default_factory=dict)


def run_replay(
    targets: list[ReplayTarget],
    *,
    emulated: dict[str, EmulatedCluster],
    start_s: float,
    duration_s: float,
    factor: float,
    start_delay_s: float,
    tick_s: float = 1.0,
    progress: Callable[[str], None] = lambda line: None,
) -> ReplayReport:
    """Replay ``duration_s`` of trace time from ``start_s``, ``factor`` times faster than real time.

    ``emulated`` are the running emulated clusters by cluster name, ``start_delay_s`` the replica
    start delay in trace seconds, ``tick_s`` the wall seconds between ticks. Each replayed
    deployment needs an ``AutoscalingPolicy``; its window and scale-down delay are divided by
    ``factor`` for the run (``compressed_policies``), and so is the autoscaler's scale-down rate
    period. Returns the report; see the module docstring.
    """
    # Imported here: the drill module imports the emulator and the whole failover stack.
    from placements.drill import tasks_in_process

    if factor <= 0:
        raise ReplayError(f"factor {factor} is invalid: use a positive number")
    if duration_s <= 0:
        raise ReplayError(f"duration {duration_s} s is invalid: use a positive number of seconds")
    check_coverage(targets, start_s, duration_s)
    cluster_ids = list(executable_clusters().values_list("pk", flat=True))
    names = dict(Cluster.objects.filter(pk__in=cluster_ids).values_list("pk", "name"))
    state = LoopState(
        cluster_ids=cluster_ids,
        emulated_by_id={pk: emulated[name] for pk, name in names.items() if name in emulated},
    )
    report = ReplayReport(
        deployments=[
            DeploymentReport(target.deployment.pk, str(target.deployment), target.trace.model, target.rate_scale)
            for target in targets
        ],
        start_s=start_s,
        duration_s=duration_s,
        factor=factor,
        start_delay_s=start_delay_s,
    )
    started_at = timezone.now()
    end_s = start_s + duration_s
    wall_start = time.monotonic()
    with (
        tasks_in_process(),
        compressed_policies(targets, factor) as used,
        ready_delay(emulated.values(), start_delay_s / factor),
    ):
        report.policy_overrides = used
        try:
            while True:
                trace_s = min(start_s + (time.monotonic() - wall_start) * factor, end_s)
                tick_started = time.monotonic()
                finished = tick(state, targets, report, trace_s=trace_s, end_s=end_s)
                report.max_tick_seconds = max(report.max_tick_seconds, time.monotonic() - tick_started)
                if finished:
                    break
                if report.ticks % max(1, round(10 / tick_s)) == 0:
                    progress(describe_tick(targets, state, trace_s))
                next_wall = wall_start + report.ticks * tick_s
                time.sleep(max(0.0, next_wall - time.monotonic()))
        finally:
            clear_traffic(state)
    report.wall_seconds = time.monotonic() - wall_start
    count_decisions(report, started_at)
    return report


def tick(state: LoopState, targets: list[ReplayTarget], report: ReplayReport, *, trace_s: float, end_s: float) -> bool:
    """Run one tick at trace time ``trace_s``; return True when the run has reached ``end_s``."""
    snapshots = collect_many(state.cluster_ids)
    ready = ready_by_deployment(snapshots, [target.deployment.pk for target in targets])
    if state.trace_s is not None:
        account(report, state, trace_s - state.trace_s)
    report.ticks += 1
    if trace_s >= end_s:
        return True

    if evaluate_health().replan_needed:
        run_plan(actor=ACTOR, trigger=PlanTrigger.HEALTH)
        report.plans += 1
    # Imported here: the autoscaler imports the traffic module, which the report part does not need.
    from placements.autoscaling import RATE_PERIOD_S, autoscale_pass

    # The scale-down rate is a share of replicas per minute of wall time; the replay's minute is shorter.
    if autoscale_pass(rate_period_s=RATE_PERIOD_S / report.factor):
        report.plans += 1
    plan = current_plan()
    if plan is not None:
        execute_plan(plan.pk)
    if report.ticks % RECONCILE_EVERY_TICKS == 0:
        reconcile()

    state.trace_s = trace_s
    state.ready = ready
    state.splits = {target.deployment.pk: route_demand(target, target.rate_at(trace_s)) for target in targets}
    set_traffic(state, targets)
    return False


def ready_by_deployment(snapshots, deployment_ids: list[int]) -> dict[int, int]:
    """Sum the ready replicas of each deployment over the clusters read successfully."""
    ready = dict.fromkeys(deployment_ids, 0)
    for snapshot in snapshots:
        if not snapshot.ok:
            continue
        for key, observed in snapshot.deployments.items():
            if int(key) in ready:
                ready[int(key)] += int(observed.get("ready", 0))
    return ready


def account(report: ReplayReport, state: LoopState, seconds: float) -> None:
    for item in report.deployments:
        split = state.splits.get(item.deployment_id, Split())
        item.add(
            offered_rps=split.offered_rps,
            served_rps=split.served_rps,
            ready_replicas=state.ready.get(item.deployment_id, 0),
            seconds=seconds,
        )


def route_demand(target: ReplayTarget, rate_rps: float) -> Split:
    """Ask MCM's routing for each origin's ranked clusters, and split the rate over them."""
    # Imported here: routing reads the route table in Redis, which the report part does not need.
    from placements.routing import ClientLocation, routes_for

    routes = {}
    for origin in target.origins:
        location = ClientLocation(origin.latitude, origin.longitude, origin.label, "coordinates")
        answer = routes_for(target.deployment.pk, location)
        routes[origin.label] = [
            Route(route["cluster_id"], route["ready_replicas"] * target.capacity_per_replica_rps)
            for route in answer["routes"]
        ]
    return split_demand(rate_rps, target.origins, routes, seconds_per_request=target.seconds_per_request)


def set_traffic(state: LoopState, targets: list[ReplayTarget]) -> None:
    """Set each cluster's traffic from the tick's splits; record unrouted demand as pushed samples.

    A (cluster, origin) pair that had traffic earlier in the run and has none now is reported with
    0 req/s, as a metrics adapter reports an idle series. Removing it instead would leave its
    earlier samples alone in the autoscaler's window, and the window's traffic, a sum of series
    means, would count requests that moved to another cluster twice.
    """
    # Imported here: the traffic module is needed only while a replay runs.
    from placements.traffic import record_traffic

    pushed = []
    now = timezone.now()
    for target in targets:
        split = state.splits[target.deployment.pk]
        name = target.kubernetes_name
        for cluster_id, by_origin in split.by_cluster.items():
            if cluster_id not in state.emulated_by_id:
                logger.warning("replay: cluster id %s has no emulated cluster; its traffic is not set", cluster_id)
                continue
            state.reported.setdefault((cluster_id, name), set()).update(by_origin)
        for (cluster_id, reported_name), origins in state.reported.items():
            if reported_name != name:
                continue
            traffic: dict[str, tuple[float, float | None]] = dict.fromkeys(origins, (0.0, 0.0))
            for origin, (rps, in_flight) in split.by_cluster.get(cluster_id, {}).items():
                traffic[origin] = (rps, in_flight)
            state.emulated_by_id[cluster_id].set_traffic(name, traffic)
        for origin, rps in split.unrouted.items():
            pushed.append(unrouted_sample(target, origin, rps, now))
    if pushed:
        record_traffic(pushed, source="push")


def unrouted_sample(target: ReplayTarget, origin: str, rps: float, now: datetime) -> dict:
    return {
        "deployment_id": target.deployment.pk,
        "cluster_id": None,
        "origin": origin,
        "requests_per_second": rps,
        "in_flight": rps * target.seconds_per_request,
        "observed_at": now,
    }


def clear_traffic(state: LoopState) -> None:
    for cluster_id, name in state.reported:
        state.emulated_by_id[cluster_id].set_traffic(name, {})
    state.reported = {}


def count_decisions(report: ReplayReport, since: datetime) -> None:
    """Fill in each deployment's scaling actions: the autoscaler's decisions since the run started."""
    rows = (
        ScalingDecision.objects.filter(
            deployment_id__in=[item.deployment_id for item in report.deployments], decided_at__gte=since
        )
        .values("deployment_id", "direction")
        .annotate(count=Count("id"))
        .order_by()
    )
    counts = defaultdict(int)
    for row in rows:
        counts[row["deployment_id"], row["direction"]] = row["count"]
    for item in report.deployments:
        item.scale_ups = counts[item.deployment_id, ScalingDirection.UP]
        item.scale_downs = counts[item.deployment_id, ScalingDirection.DOWN]


def describe_tick(targets: list[ReplayTarget], state: LoopState, trace_s: float) -> str:
    parts = []
    for target in targets:
        split = state.splits.get(target.deployment.pk, Split())
        target.deployment.refresh_from_db(fields=["desired_replicas"])
        parts.append(
            f"{target.deployment.name} {split.offered_rps:.0f} req/s, {split.served_rps:.0f} served, "
            f"{state.ready.get(target.deployment.pk, 0)}/{target.deployment.desired_replicas} ready"
        )
    return f"  trace {format_trace_time(trace_s)}: " + "; ".join(parts)


def format_trace_time(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"day {days} {hours:02d}:{rest // 60:02d}"
