"""The autoscaler: each deployment's desired replicas follow its measured traffic.

``decide`` is the rule, a pure function of a policy, the traffic of one window and the state kept
from earlier decisions. ``autoscale_pass`` applies it to every deployment with an enabled
``AutoscalingPolicy``, records each change as a ``ScalingDecision`` with its measurements and an
audit event, and runs one plan (trigger ``autoscale``) so that the global scheduler places the new
replicas and chooses which ones go.

The rule, per deployment:

- concurrency is the window's mean in-flight requests when reported, else requests per second x
  ``seconds_per_request``;
- the recommendation is ceil(concurrency / (target_concurrency x target_utilization)), at least 1
  while there is any traffic, bounded by min_replicas and max_replicas;
- scale-up goes to the recommendation at once;
- scale-down goes to the highest recommendation in force during the last ``scale_down_delay_s``
  (a stabilisation window, as the Kubernetes HPA has), and removes at most
  max(1, floor(replicas at the start of the rate period x max_scale_down_fraction)) per rate period
  (60 s by default);
- zero replicas only with ``scale_to_zero`` and min_replicas 0, so only after scale_down_delay_s of
  samples that all show no traffic;
- a window without samples never scales down: the replicas are held.
"""

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from django.db import transaction
from django.utils import timezone

from compliance.services import record_event
from fleet.models import Cluster
from placements.models import AutoscalingPolicy, Deployment, PlanTrigger, ScalingDecision, ScalingDirection
from placements.scheduler.problem import DemandOriginInput
from placements.traffic import TrafficWindow, window_traffic

logger = logging.getLogger(__name__)

ACTOR = "autoscaler"
# Seconds per scale-down rate period: max_scale_down_fraction is a share of replicas per minute.
RATE_PERIOD_S = 60.0
# Traffic window used to weight demand origins of a deployment that has no autoscaling policy.
DEFAULT_DEMAND_WINDOW_S = 300.0


class PolicyValues(Protocol):
    """The fields of ``AutoscalingPolicy`` that ``decide`` reads."""

    target_concurrency: float
    target_utilization: float
    window_s: int
    scale_down_delay_s: int
    max_scale_down_fraction: float
    scale_to_zero: bool
    seconds_per_request: float


@dataclass
class Decision:
    """What ``decide`` returns: the replicas to run, why, the measurements behind it and the state to keep."""

    replicas: int
    reason: str
    measurements: dict[str, Any]
    state: dict[str, Any]
    limits: list[str] = field(default_factory=list)  # what held the count away from the recommendation


def decide(
    policy: PolicyValues,
    *,
    current: int,
    min_replicas: int,
    max_replicas: int,
    traffic: TrafficWindow | None,
    state: dict,
    now: float,
    rate_period_s: float = RATE_PERIOD_S,
    cluster_names: Mapping[int, str] | None = None,
) -> Decision:
    """Decide a deployment's replicas from the traffic of one window; ``now`` is in seconds (any epoch).

    ``state`` is the previous decision's ``Decision.state`` (empty at first); it is not modified.
    ``rate_period_s`` is the period of the scale-down rate (a replay that compresses time shortens it).
    ``cluster_names`` maps cluster ids to names for the measurements' per-cluster traffic.
    """
    floor = min_replicas if policy.scale_to_zero else max(min_replicas, 1)
    floor = min(floor, max_replicas)
    history = _history(state, current=current, now=now)
    measurements = measure(policy, traffic, cluster_names=cluster_names)
    measurements.update(min_replicas=min_replicas, max_replicas=max_replicas)

    if traffic is None or traffic.samples == 0:
        # Holding records the current count as the need, so a later scale-down waits the full delay.
        held = min(max(current, floor), max_replicas)
        history["recommendations"].append([now, held])
        reason = f"no traffic samples in the last {policy.window_s} s: holding {held} replicas"
        if held != current:
            reason = f"no traffic samples in the last {policy.window_s} s: {held} replicas to stay within min and max"
        return _finish(held, current, reason, measurements, history, now, policy, rate_period_s, ["no_telemetry"])

    recommendation = recommend(measurements, policy, floor=floor, max_replicas=max_replicas)
    measurements["recommendation"] = recommendation
    history["recommendations"].append([now, recommendation])
    limits = []
    if recommendation == max_replicas and measurements["raw_recommendation"] > max_replicas:
        limits.append("max_replicas")
    if recommendation == floor and measurements["raw_recommendation"] < floor:
        limits.append("min_replicas")

    if current < floor or current > max_replicas:
        target = min(max(current, floor), max_replicas)
        reason = f"{current} replicas are outside min {floor} and max {max_replicas}: set to {target}"
        return _finish(target, current, reason, measurements, history, now, policy, rate_period_s, limits)
    if recommendation >= current:
        need = _need_text(measurements, recommendation)
        if recommendation > current:
            reason = f"{need}: scaled up from {current} to {recommendation}"
        else:
            reason = f"{need}: held at {current}"
        return _finish(recommendation, current, reason, measurements, history, now, policy, rate_period_s, limits)
    return _scale_down(policy, current, recommendation, measurements, history, now, rate_period_s, limits)


def _scale_down(policy, current, recommendation, measurements, history, now, rate_period_s, limits) -> Decision:
    """Apply the stabilisation window and the rate limit to a recommendation below ``current``."""
    stabilised = stabilised_recommendation(history["recommendations"], now=now, delay_s=policy.scale_down_delay_s)
    measurements["stabilised_recommendation"] = stabilised
    target = max(recommendation, min(stabilised, current))
    if target > recommendation:
        limits.append("scale_down_delay")

    removed = sum(
        before - after for at, before, after in history["changes"] if after < before and at > now - rate_period_s
    )
    period_start = current + removed
    allowed = max(1, math.floor(period_start * policy.max_scale_down_fraction)) - removed
    lowest = current - max(0, allowed)
    if target < lowest:
        target = lowest
        limits.append("scale_down_rate")
    measurements["scale_down_allowed"] = max(0, allowed)

    need = _need_text(measurements, recommendation)
    if target == current:
        reason = f"{need}: held at {current} by {', '.join(limits)}"
    else:
        reason = f"{need}: scaled down from {current} to {target}"
        if limits:
            reason += f" (limited by {', '.join(limits)})"
    return _finish(target, current, reason, measurements, history, now, policy, rate_period_s, limits)


def measure(
    policy: PolicyValues, traffic: TrafficWindow | None, *, cluster_names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """Return the measurements of one decision: the window's traffic and the concurrency derived from it.

    Per-cluster traffic is keyed by cluster name, as ``/traffic/`` shows it; a cluster missing from
    ``cluster_names`` is keyed by its id.
    """
    names = cluster_names or {}
    per_replica = policy.target_concurrency * policy.target_utilization
    measurements: dict[str, Any] = {
        "window_s": policy.window_s,
        "samples": 0,
        "per_replica_concurrency": per_replica,
    }
    if traffic is None or traffic.samples == 0:
        return measurements
    if traffic.in_flight is not None:
        concurrency, source = traffic.in_flight, "in_flight"
    else:
        concurrency, source = traffic.requests_per_second * policy.seconds_per_request, "requests_per_second"
    measurements.update(
        samples=traffic.samples,
        newest_at=traffic.newest_at.isoformat() if traffic.newest_at else None,
        requests_per_second=traffic.requests_per_second,
        in_flight=traffic.in_flight,
        concurrency=concurrency,
        concurrency_source=source,
        by_cluster=_by_name(traffic.by_cluster, names),
        in_flight_by_cluster=_by_name(traffic.in_flight_by_cluster, names),
        by_origin=dict(sorted(traffic.by_origin.items())),
    )
    return measurements


def _by_name(values: Mapping[int, float], names: Mapping[int, str]) -> dict[str, float]:
    return dict(sorted((names.get(cluster, str(cluster)), value) for cluster, value in values.items()))


def recommend(measurements: dict, policy: PolicyValues, *, floor: int, max_replicas: int) -> int:
    """Return the replicas the measured concurrency needs, bounded by ``floor`` and ``max_replicas``."""
    concurrency = measurements["concurrency"]
    raw = math.ceil(concurrency / measurements["per_replica_concurrency"] - 1e-9)
    busy = concurrency > 0 or measurements["requests_per_second"] > 0
    if busy:
        raw = max(raw, 1)
    measurements["raw_recommendation"] = raw
    bounded = min(max(raw, floor), max_replicas)
    if busy and max_replicas >= 1:
        bounded = max(bounded, 1)
    return bounded


def stabilised_recommendation(recommendations: list[list[float]], *, now: float, delay_s: float) -> int:
    """Return the highest recommendation in force during (now - delay_s, now].

    Each recommendation is in force until the next one, so the one made last at or before the window's
    start counts too: a lower need must last the whole delay.
    """
    start = now - delay_s
    inside = [int(value) for at, value in recommendations if at > start]
    before = [value for at, value in recommendations if at <= start]
    if before:
        inside.append(int(before[-1]))
    return max(inside)


def _history(state: dict, *, current: int, now: float) -> dict[str, list]:
    """Copy the kept history; a first decision starts with the current count as the need in force."""
    recommendations = [list(entry) for entry in state.get("recommendations", [])]
    if not recommendations:
        recommendations.append([now, current])
    return {"recommendations": recommendations, "changes": [list(entry) for entry in state.get("changes", [])]}


def _finish(target, current, reason, measurements, history, now, policy, rate_period_s, limits) -> Decision:
    """Record the change in the history, prune what no later decision reads, and build the ``Decision``."""
    if target != current:
        history["changes"].append([now, current, target])
    start = now - policy.scale_down_delay_s
    recommendations = history["recommendations"]
    # Keep the last entry at or before the window's start: it is in force at the start.
    older = [entry for entry in recommendations if entry[0] <= start][-1:]
    history["recommendations"] = older + [entry for entry in recommendations if entry[0] > start]
    history["changes"] = [entry for entry in history["changes"] if entry[0] > now - rate_period_s]
    measurements["limits"] = list(limits)
    return Decision(replicas=target, reason=reason, measurements=measurements, state=history, limits=list(limits))


def _need_text(measurements: dict, recommendation: int) -> str:
    """Describe the need: the raw recommendation, and the bound that moved it when one did."""
    source = "in-flight" if measurements["concurrency_source"] == "in_flight" else "from requests per second"
    raw = measurements["raw_recommendation"]
    text = (
        f"concurrency {measurements['concurrency']:.3g} ({source}) at {measurements['per_replica_concurrency']:.3g} "
        f"per replica needs {raw}"
    )
    if recommendation < raw:
        text += f", capped at max_replicas {recommendation}"
    elif recommendation > raw and recommendation == measurements["min_replicas"]:
        text += f", raised to min_replicas {recommendation}"
    elif recommendation > raw:
        text += f", raised to {recommendation} because scale_to_zero is off"
    return text


# The pass over the database.


def autoscale_pass(
    *, now: datetime | None = None, plan: bool = True, rate_period_s: float = RATE_PERIOD_S
) -> list[ScalingDecision]:
    """Decide every deployment with an enabled policy, store the changes, and place them with one plan.

    Each change sets the deployment's desired replicas and writes a ``ScalingDecision`` and a
    ``deployment.scaled`` audit event. When any changed and ``plan`` is true, one plan with trigger
    ``autoscale`` runs (under the scheduler lock, through ``placements.planning.run_plan``), the
    decisions point to it, and its execution is enqueued on commit. ``rate_period_s`` is passed to
    ``decide`` (a traffic replay that compresses time shortens it).
    """
    now = now or timezone.now()
    decisions = decide_all(now, rate_period_s=rate_period_s)
    if not decisions or not plan:
        return decisions

    # Imported here: planning imports this module for the measured demand.
    from placements.planning import run_plan
    from placements.tasks import enqueue_execution

    placement = run_plan(actor=ACTOR, trigger=PlanTrigger.AUTOSCALE)
    ScalingDecision.objects.filter(pk__in=[decision.pk for decision in decisions]).update(plan=placement)
    for decision in decisions:
        decision.plan = placement
    transaction.on_commit(partial(enqueue_execution, placement.pk))
    logger.info("autoscaler changed %s deployments; plan v%s", len(decisions), placement.version)
    return decisions


def decide_all(now: datetime, *, rate_period_s: float = RATE_PERIOD_S) -> list[ScalingDecision]:
    """Decide and store every enabled policy in one transaction; return the changes."""
    with transaction.atomic():
        # Deployments first, then policies: the deployment services lock in the same order.
        deployments = {
            deployment.pk: deployment
            for deployment in Deployment.objects.select_for_update(of=("self",))
            .filter(autoscaling__enabled=True)
            .select_related("customer")
            .order_by("pk")
        }
        policies = list(
            AutoscalingPolicy.objects.select_for_update().filter(deployment_id__in=deployments, enabled=True)
        )
        traffic = traffic_by_policy(policies, now=now)
        cluster_ids = {cluster for window in traffic.values() for cluster in window.by_cluster}
        cluster_ids.update(cluster for window in traffic.values() for cluster in window.in_flight_by_cluster)
        names = dict(Cluster.objects.filter(pk__in=cluster_ids).values_list("pk", "name"))
        changes = []
        for policy in policies:
            change = apply_policy(
                policy,
                deployments[policy.deployment_id],
                traffic.get(policy.deployment_id),
                now,
                rate_period_s,
                cluster_names=names,
            )
            if change is not None:
                changes.append(change)
    return changes


def traffic_by_policy(policies: Iterable[AutoscalingPolicy], *, now: datetime) -> dict[int, TrafficWindow]:
    """Return each policy's deployment traffic over the policy's own window (one query per window length)."""
    by_window: dict[int, list[int]] = {}
    for policy in policies:
        by_window.setdefault(policy.window_s, []).append(policy.deployment_id)
    result: dict[int, TrafficWindow] = {}
    for window_s, deployment_ids in by_window.items():
        result.update(window_traffic(deployment_ids, window_s=window_s, now=now))
    return result


def apply_policy(
    policy: AutoscalingPolicy,
    deployment: Deployment,
    traffic: TrafficWindow | None,
    now: datetime,
    rate_period_s: float = RATE_PERIOD_S,
    *,
    cluster_names: Mapping[int, str] | None = None,
) -> ScalingDecision | None:
    """Decide one deployment, keep the policy's state, and store a change; the caller holds both row locks."""
    decision = decide(
        policy,
        current=deployment.desired_replicas,
        min_replicas=deployment.min_replicas,
        max_replicas=deployment.max_replicas,
        traffic=traffic,
        state=policy.state or {},
        now=now.timestamp(),
        rate_period_s=rate_period_s,
        cluster_names=cluster_names,
    )
    policy.state = decision.state
    policy.save(update_fields=["state", "updated_at"])
    before = deployment.desired_replicas
    if decision.replicas == before:
        return None

    deployment.desired_replicas = decision.replicas
    deployment.save(update_fields=["desired_replicas", "updated_at"])
    direction = ScalingDirection.UP if decision.replicas > before else ScalingDirection.DOWN
    change = ScalingDecision.objects.create(
        deployment=deployment,
        decided_at=now,
        direction=direction,
        from_replicas=before,
        to_replicas=decision.replicas,
        reason=decision.reason,
        measurements=decision.measurements,
    )
    record_event(
        actor=ACTOR,
        action="deployment.scaled",
        subject=deployment,
        reason=decision.reason,
        before={"desired_replicas": before},
        after={"desired_replicas": decision.replicas, "scaling_decision": change.pk},
    )
    logger.info("autoscaler: deployment %s %s -> %s (%s)", deployment.pk, before, decision.replicas, decision.reason)
    return change


# Measured demand for the scheduler.


def measured_traffic(deployment_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, TrafficWindow]:
    """Return the traffic of each deployment over its policy's window, or DEFAULT_DEMAND_WINDOW_S without one.

    Only deployments with samples in their window are in the result.
    """
    now = now or timezone.now()
    ids = list(deployment_ids)
    windows = dict(AutoscalingPolicy.objects.filter(deployment_id__in=ids).values_list("deployment_id", "window_s"))
    by_window: dict[float, list[int]] = {}
    for deployment_id in ids:
        by_window.setdefault(float(windows.get(deployment_id, DEFAULT_DEMAND_WINDOW_S)), []).append(deployment_id)
    result: dict[int, TrafficWindow] = {}
    for window_s, members in by_window.items():
        result.update(window_traffic(members, window_s=window_s, now=now))
    return result


def weighted_origins(origins: list[DemandOriginInput], traffic: TrafficWindow | None) -> tuple[DemandOriginInput, ...]:
    """Weight declared demand origins by measured traffic, so that new replicas go where demand grows.

    Measured requests per second whose origin label matches an origin's name (case-insensitive)
    count for that origin. Traffic with no matching origin is spread over the origins by their
    declared shares. The result's shares are the origins' fractions of the measured total. Without
    measured traffic the declared origins are returned unchanged. An origin with no measured
    traffic left is dropped, unless that would drop them all.
    """
    if not origins or traffic is None or traffic.requests_per_second <= 0:
        return tuple(origins)
    total = traffic.requests_per_second
    measured_by_name: dict[str, float] = {}
    for label, rps in traffic.by_origin.items():
        key = label.strip().casefold()
        measured_by_name[key] = measured_by_name.get(key, 0.0) + rps
    matched = {origin.name.strip().casefold() for origin in origins}
    unmatched = total - sum(rps for key, rps in measured_by_name.items() if key in matched)
    declared_total = sum(origin.share for origin in origins)
    weighted = []
    for origin in origins:
        rps = measured_by_name.get(origin.name.strip().casefold(), 0.0)
        rps += max(0.0, unmatched) * origin.share / declared_total
        share = min(1.0, rps / total)
        if share > 0:
            weighted.append(DemandOriginInput(origin.name, origin.latitude, origin.longitude, share))
    return tuple(weighted) if weighted else tuple(origins)


def served_per_replica(
    traffic: TrafficWindow | None, replicas_by_cluster: dict[int, int]
) -> tuple[tuple[int, float], ...]:
    """Return (cluster id, measured requests per second per running replica) for each cluster running replicas.

    Empty when the traffic is not reported per cluster. A cluster that runs replicas but reports
    no traffic serves 0 per replica.
    """
    if traffic is None or not traffic.by_cluster:
        return ()
    return tuple(
        (cluster_id, traffic.by_cluster.get(cluster_id, 0.0) / replicas)
        for cluster_id, replicas in sorted(replicas_by_cluster.items())
        if replicas > 0
    )
