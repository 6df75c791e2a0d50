"""Failover and failback: what each plan does with replicas on lost clusters, and staff decisions on it.

Planning calls ``plan_failover`` with the scheduler's input. A deployment with replicas on lost
clusters (its lost replicas) is one of:

- blocked: no schedulable cluster outside the lost ones complies with its locks and offers one of
  its SKUs. Its replicas stay on the lost clusters (``hold_clusters``): nothing is placed elsewhere
  and nothing is deleted, until the clusters come back.
- failing over: a ``FailoverRequest`` records the move. Under the automatic policy it is approved
  at once by "automatic". Under the approval policy it is pending until staff decide or its
  deadline passes, and the replicas stay on the lost clusters meanwhile. A rejected failover keeps
  them there until the clusters recover.

While a failover is open (its clusters are not all schedulable again) the deployment's spread rule
is capped (hard spread) or off (soft spread). Once every cluster of a failover is schedulable,
its replicas return to their preferred places. Under the automatic failback policy that happens
in the same plan (``churn_free``). Under the approval policy it waits for staff to approve a
failback request, and those clusters are excluded for the deployment until then.

Only an applied run writes requests, audit events and alerts. A dry run computes the same
decisions from the stored state and keeps them in its plan's parameters.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compliance.services import record_event
from fleet.alerts import raise_alert, resolve_alert
from fleet.models import AlertSeverity
from placements.approvals import ACTOR, MOVED, FailoverDecisionError, approve, expire_due, expire_requests, reject
from placements.models import (
    ClusterAvoidance,
    Deployment,
    DeploymentCondition,
    DeploymentOutcome,
    FailoverKind,
    FailoverPolicy,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    SpreadMode,
)
from placements.scheduler.locks import describe_lock_rule, lock_violation_kind
from placements.scheduler.problem import (
    SPREAD_CAPPED,
    SPREAD_FULL,
    SPREAD_OFF,
    ClusterInput,
    DeploymentInput,
    PlacementKey,
)

# Staff decisions live in placements.approvals; callers reach them through this module too.
__all__ = [
    "FailoverDecisionError",
    "FailoverDecisions",
    "approve",
    "expire_requests",
    "plan_failover",
    "record_failbacks",
    "record_loss",
    "reject",
    "update_conditions",
]

logger = logging.getLogger(__name__)

AUTOMATIC = "automatic"

# A deployment's failover state in a plan, stored in PlacementPlan.parameters["failover"].
BLOCKED = "blocked"
AWAITING_APPROVAL = "awaiting_approval"
REJECTED = "rejected"
FAILING_OVER = "failing_over"


@dataclass
class FailoverDecisions:
    """One run's failover state per deployment, and the failbacks to record once its plan is applied."""

    # deployment id -> {"state": BLOCKED | AWAITING_APPROVAL | REJECTED | FAILING_OVER, "reason", "clusters"}
    states: dict[int, dict] = field(default_factory=dict)
    # FailoverRequest ids whose replicas return to their clusters in this plan.
    failing_back: list[int] = field(default_factory=list)

    def as_parameters(self) -> dict:
        return {
            "deployments": {str(pk): state for pk, state in sorted(self.states.items())},
            "failing_back": sorted(self.failing_back),
        }


@dataclass(frozen=True)
class Policy:
    """A deployment's failover settings, which the scheduler's input does not carry."""

    spread_mode: str
    failover_policy: str
    approval_timeout_s: int
    failback_policy: str


def plan_failover(
    clusters: list[ClusterInput],
    deployments: list[DeploymentInput],
    current: dict[PlacementKey, int],
    *,
    lost: set[int],
    now: datetime,
    write: bool,
) -> tuple[list[DeploymentInput], FailoverDecisions]:
    """Fill in each deployment's spread, holds, exclusions, penalties and failback for this run.

    ``lost`` are the ids of the lost clusters (for a dry run, with the excluded ones). With
    ``write`` (an applied run, inside its transaction), requests past their deadline time out
    first, and new requests, their audit events and alerts are written.
    """
    if write:
        expire_due(now)
    planner = FailoverPlanner(clusters, current, lost=lost, now=now, write=write)
    return [planner.decide(deployment) for deployment in deployments], planner.decisions


class FailoverPlanner:
    """The state one run's failover decisions read, and the decisions made so far."""

    def __init__(self, clusters, current, *, lost: set[int], now: datetime, write: bool):
        self.clusters = {cluster.id: cluster for cluster in clusters}
        self.schedulable = [cluster for cluster in clusters if cluster.schedulable]
        self.lost = lost
        self.now = now
        self.write = write
        self.decisions = FailoverDecisions()
        self.current: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for (deployment_id, cluster_id, _sku), replicas in current.items():
            self.current[deployment_id][cluster_id] += replicas
        self.requests = _open_requests(lock=write)
        self.request_clusters = {
            request.pk: {cluster.pk for cluster in request.clusters.all()}
            for requests in self.requests.values()
            for request in requests
        }
        self.penalised = _penalised_clusters(now)
        policy_fields = ("spread_mode", "failover_policy", "approval_timeout_s", "failback_policy")
        self.policies = {
            row["pk"]: Policy(**{name: row[name] for name in policy_fields})
            for row in Deployment.objects.values("pk", *policy_fields)
        }

    def decide(self, deployment: DeploymentInput) -> DeploymentInput:
        """Return the deployment's scheduler input with this run's spread, holds, exclusions and penalties."""
        policy = self.policies.get(deployment.id)
        if policy is None:  # created after the deployments were read, so the next run plans it
            return deployment

        lost_here = {
            cluster: replicas for cluster, replicas in self.current[deployment.id].items() if cluster in self.lost
        }
        requests = self.settle_recovered(deployment, self.requests.get(deployment.id, []), lost_here)
        excluded, churn_free = self.decide_failback(deployment, policy, requests)
        hold: frozenset[int] = frozenset()
        if lost_here:
            hold = self.decide_failover(deployment, policy, requests, lost_here, excluded)

        still_open = any(
            request.kind == FailoverKind.FAILOVER and not self.all_schedulable(request) for request in requests
        )
        # Replicas on a cordoned, suspect, recovering or draining cluster constrain the deployment too.
        # Under the full rule they could stay only if other replicas ran elsewhere, so a deployment
        # with nowhere else to go would lose all of them.
        constrained = any(
            cluster in self.clusters and not self.clusters[cluster].schedulable
            for cluster, replicas in self.current[deployment.id].items()
            if replicas > 0
        )
        spread = SPREAD_FULL
        if lost_here or still_open or constrained:
            spread = SPREAD_CAPPED if policy.spread_mode == SpreadMode.HARD else SPREAD_OFF

        return replace(
            deployment,
            spread=spread,
            hold_clusters=hold,
            penalised_clusters=self.penalised.get(deployment.id, frozenset()),
            excluded_clusters=excluded,
            churn_free=churn_free,
        )

    # Requests whose clusters came back.

    def settle_recovered(self, deployment, requests: list[FailoverRequest], lost_here: dict[int, int]) -> list:
        """Withdraw or close requests whose clusters recovered; return the requests still open."""
        still_open = []
        for request in requests:
            clusters = self.request_clusters[request.pk]
            if request.kind == FailoverKind.FAILOVER and request.status == FailoverStatus.PENDING:
                if not clusters & lost_here.keys():
                    self.withdraw(deployment, request, f"clusters {self.names(clusters)} recovered before a decision")
                    continue
            elif request.kind == FailoverKind.FAILOVER and request.status == FailoverStatus.REJECTED:
                if not clusters & self.lost:
                    self.close_rejected(deployment, request)
                    continue
            elif request.kind == FailoverKind.FAILBACK and request.status == FailoverStatus.PENDING:
                if not self.all_schedulable(request):
                    self.withdraw(deployment, request, f"clusters {self.names(clusters)} are not schedulable any more")
                    continue
            still_open.append(request)
        return still_open

    def withdraw(self, deployment: DeploymentInput, request: FailoverRequest, reason: str) -> None:
        if not self.write:
            return
        request.status = FailoverStatus.WITHDRAWN
        request.decided_by_label = ACTOR
        request.decided_at = self.now
        request.decision_reason = reason
        request.save(update_fields=["status", "decided_by_label", "decided_at", "decision_reason"])
        record_event(
            actor=ACTOR,
            action=f"{request.kind}.withdrawn",
            subject=request,
            reason=reason,
            before={"status": FailoverStatus.PENDING},
            after={"status": request.status, "deployment": deployment.name},
        )
        resolve_alert(f"{request.kind}.awaiting_approval", deployment_subject(deployment))

    def close_rejected(self, deployment: DeploymentInput, request: FailoverRequest) -> None:
        """End a rejected failover once its clusters are back; the replicas it kept there stay."""
        if not self.write:
            return
        request.failed_back_at = self.now
        request.save(update_fields=["failed_back_at"])
        record_event(
            actor=ACTOR,
            action="failover.recovered",
            subject=request,
            reason=f"clusters {self.names(self.request_clusters[request.pk])} recovered; "
            "the replicas kept there after the rejection stay",
            after={"deployment": deployment.name, "failed_back_at": self.now.isoformat()},
        )

    # Failover.

    def decide_failover(self, deployment, policy: Policy, requests, lost_here: dict[int, int], excluded) -> frozenset:
        """Decide the move of the lost replicas; return the lost clusters where they stay for now."""
        blocked = self.blocked_reason(deployment, lost_here, excluded)
        if blocked:
            self.record(deployment, BLOCKED, blocked, lost_here)
            return frozenset(lost_here)

        pending = next(
            (r for r in requests if r.kind == FailoverKind.FAILOVER and r.status == FailoverStatus.PENDING), None
        )
        moved = self.clusters_of(requests, MOVED)
        if pending is not None and pending.deadline is not None and pending.deadline <= self.now:
            # Only in a dry run: an applied run times such a request out first, and then it proceeds.
            moved |= self.request_clusters[pending.pk]
            pending = None
        rejected = self.clusters_of(requests, (FailoverStatus.REJECTED,))
        waiting = self.request_clusters[pending.pk] if pending is not None else set()
        new = set(lost_here) - moved - rejected - waiting
        deadline = pending.deadline if pending is not None else None
        if new:
            replicas = sum(lost_here[cluster] for cluster in new)
            if policy.failover_policy == FailoverPolicy.AUTOMATIC:
                self.start_automatic(deployment, new, replicas)
            else:
                deadline = self.request_approval(deployment, policy, pending, new, replicas)
                waiting = waiting | new

        held_waiting = waiting & lost_here.keys()
        held_rejected = (rejected & lost_here.keys()) - held_waiting
        if held_waiting:
            replicas = sum(lost_here[cluster] for cluster in held_waiting)
            when = deadline.isoformat(timespec="seconds") if deadline else "its deadline"
            reason = (
                f"failover of {replicas} replicas off {self.names(held_waiting)} awaits staff approval; "
                f"it proceeds by itself at {when}"
            )
            self.record(deployment, AWAITING_APPROVAL, reason, lost_here)
        elif held_rejected:
            self.record(deployment, REJECTED, self.rejection_reason(requests, held_rejected), lost_here)
        else:
            replicas = sum(lost_here.values())
            reason = f"{replicas} replicas on lost clusters {self.names(lost_here)} are placed elsewhere"
            self.record(deployment, FAILING_OVER, reason, lost_here)
        return frozenset(held_waiting | held_rejected)

    def blocked_reason(self, deployment: DeploymentInput, lost_here, excluded: frozenset[int]) -> str:
        """Return why no cluster can take the lost replicas, or "" when at least one can."""
        skus = set(deployment.skus)
        offering = [
            cluster
            for cluster in self.schedulable
            if cluster.id not in self.lost and cluster.id not in excluded and skus & cluster.free_gpus.keys()
        ]
        violations = set()
        for cluster in offering:
            broken = [(lock, kind) for lock in deployment.locks if (kind := lock_violation_kind(lock, cluster))]
            if not broken:
                return ""
            violations.update(broken)
        where = f"no schedulable cluster outside the lost ones ({self.names(lost_here)})"
        if not offering:
            return f"{where} offers {' or '.join(deployment.skus)}"
        rules = sorted(
            f"{lock.source} ({describe_lock_rule(lock, kind)}; reason: {lock.reason})" for lock, kind in violations
        )
        return f"{where} complies with its locks: " + "; ".join(rules)

    def start_automatic(self, deployment: DeploymentInput, clusters: set[int], replicas: int) -> None:
        if not self.write:
            return
        request = self.create_request(deployment, FailoverKind.FAILOVER, clusters, replicas)
        request.status = FailoverStatus.APPROVED
        request.decided_by_label = AUTOMATIC
        request.decided_at = self.now
        request.decision_reason = "the deployment's failover policy is automatic"
        request.save(update_fields=["status", "decided_by_label", "decided_at", "decision_reason"])
        record_event(
            actor=ACTOR,
            action="failover.automatic",
            subject=request,
            reason=request.reason,
            after=request_snapshot(request, deployment, clusters),
        )
        self.record_losses(deployment, clusters)

    def request_approval(self, deployment, policy: Policy, pending, clusters: set[int], replicas: int) -> datetime:
        """Open a pending failover (or add clusters to the open one); return its deadline."""
        if pending is not None:
            if self.write:
                pending.clusters.add(*clusters)
                pending.replicas += replicas
                pending.save(update_fields=["replicas"])
                record_event(
                    actor=ACTOR,
                    action="failover.requested",
                    subject=pending,
                    reason=f"more clusters lost: {self.names(clusters)}",
                    after=request_snapshot(pending, deployment, self.request_clusters[pending.pk] | clusters),
                )
                self.record_losses(deployment, clusters)
            return pending.deadline or self.now
        deadline = self.now + timedelta(seconds=policy.approval_timeout_s)
        if not self.write:
            return deadline
        request = self.create_request(deployment, FailoverKind.FAILOVER, clusters, replicas, deadline=deadline)
        record_event(
            actor=ACTOR,
            action="failover.requested",
            subject=request,
            reason=request.reason,
            after=request_snapshot(request, deployment, clusters),
        )
        raise_alert(
            "failover.awaiting_approval",
            AlertSeverity.WARNING,
            deployment_subject(deployment),
            f"{request.reason}; approve or reject before {deadline.isoformat(timespec='seconds')}, "
            "when it proceeds by itself",
        )
        self.record_losses(deployment, clusters)
        return deadline

    def record_losses(self, deployment: DeploymentInput, clusters: set[int]) -> None:
        for cluster in sorted(clusters):
            record_loss(deployment.id, cluster, now=self.now)

    def rejection_reason(self, requests, held: set[int]) -> str:
        rejection = next(
            r for r in reversed(requests) if r.status == FailoverStatus.REJECTED and self.request_clusters[r.pk] & held
        )
        return (
            f"failover off {self.names(held)} rejected by {rejection.decided_by_label} "
            f"({rejection.decision_reason}); its replicas stay there until the clusters recover"
        )

    # Failback.

    def decide_failback(self, deployment, policy: Policy, requests) -> tuple[frozenset[int], bool]:
        """Return (clusters excluded for the deployment, churn_free) for failovers whose clusters are back."""
        returning = [
            r for r in requests if r.kind == FailoverKind.FAILOVER and r.status in MOVED and self.all_schedulable(r)
        ]
        if not returning:
            return frozenset(), False
        if policy.failback_policy == FailoverPolicy.AUTOMATIC:
            self.decisions.failing_back.extend(request.pk for request in returning)
            return frozenset(), True

        approved = [r for r in requests if r.kind == FailoverKind.FAILBACK and r.status == FailoverStatus.APPROVED]
        approved_clusters = set().union(*(self.request_clusters[r.pk] for r in approved))
        covered = [r for r in returning if self.request_clusters[r.pk] <= approved_clusters]
        waiting = [r for r in returning if r not in covered]
        if covered:
            self.decisions.failing_back.extend(request.pk for request in covered + approved)
        excluded = set().union(*(self.request_clusters[r.pk] for r in waiting))
        if excluded:
            pending = next(
                (r for r in requests if r.kind == FailoverKind.FAILBACK and r.status == FailoverStatus.PENDING), None
            )
            self.suggest_failback(deployment, pending, excluded, waiting)
        return frozenset(excluded), bool(covered)

    def suggest_failback(self, deployment, pending, clusters: set[int], failovers: list) -> None:
        if not self.write or (pending is not None and clusters <= self.request_clusters[pending.pk]):
            return
        replicas = sum(request.replicas for request in failovers)
        if pending is not None:
            pending.clusters.add(*clusters)
            pending.replicas = replicas
            pending.save(update_fields=["replicas"])
            request = pending
        else:
            request = self.create_request(deployment, FailoverKind.FAILBACK, clusters, replicas)
        record_event(
            actor=ACTOR,
            action="failback.suggested",
            subject=request,
            reason=request.reason,
            after=request_snapshot(request, deployment, clusters),
        )
        raise_alert(
            "failback.awaiting_approval",
            AlertSeverity.WARNING,
            deployment_subject(deployment),
            f"{request.reason}; approve to let its replicas return, or reject to keep them where they are",
        )

    # Helpers.

    def create_request(self, deployment, kind: str, clusters: set[int], replicas: int, *, deadline=None):
        if kind == FailoverKind.FAILOVER:
            reason = f"clusters {self.names(clusters)} lost: {replicas} replicas of {deployment.name} to move"
        else:
            reason = f"clusters {self.names(clusters)} are schedulable again: {deployment.name} may return there"
        request = FailoverRequest.objects.create(
            deployment_id=deployment.id, kind=kind, replicas=replicas, reason=reason, deadline=deadline
        )
        request.clusters.set(clusters)
        self.request_clusters[request.pk] = set(clusters)
        return request

    def record(self, deployment: DeploymentInput, state: str, reason: str, lost_here) -> None:
        self.decisions.states[deployment.id] = {"state": state, "reason": reason, "clusters": self.names(lost_here)}

    def clusters_of(self, requests, statuses) -> set[int]:
        chosen = [r for r in requests if r.kind == FailoverKind.FAILOVER and r.status in statuses]
        return set().union(*(self.request_clusters[r.pk] for r in chosen))

    def all_schedulable(self, request: FailoverRequest) -> bool:
        clusters = self.request_clusters[request.pk]
        return all(cluster in self.clusters and self.clusters[cluster].schedulable for cluster in clusters)

    def names(self, cluster_ids) -> str:
        return ", ".join(sorted(self.clusters[pk].name if pk in self.clusters else str(pk) for pk in cluster_ids))


def _open_requests(*, lock: bool) -> dict[int, list[FailoverRequest]]:
    """Return the requests that still steer planning, by deployment id, oldest first.

    With ``lock``, their rows stay locked until the run commits. A staff decision made meanwhile
    waits, then reads what the run wrote, so the run does not overwrite it.
    """
    requests = (
        FailoverRequest.objects.filter(
            Q(status=FailoverStatus.PENDING)
            | Q(kind=FailoverKind.FAILOVER, status__in=[*MOVED, FailoverStatus.REJECTED], failed_back_at__isnull=True)
            | Q(kind=FailoverKind.FAILBACK, status=FailoverStatus.APPROVED, failed_back_at__isnull=True)
        )
        .prefetch_related("clusters")
        .order_by("created_at", "pk")
    )
    if lock:
        requests = requests.select_for_update()
    by_deployment: dict[int, list[FailoverRequest]] = defaultdict(list)
    for request in requests:
        by_deployment[request.deployment_id].append(request)
    return by_deployment


def _penalised_clusters(now: datetime) -> dict[int, frozenset[int]]:
    pairs = ClusterAvoidance.objects.filter(avoid_until__gt=now).values_list("deployment_id", "cluster_id")
    by_deployment: dict[int, set[int]] = defaultdict(set)
    for deployment_id, cluster_id in pairs:
        by_deployment[deployment_id].add(cluster_id)
    return {deployment_id: frozenset(clusters) for deployment_id, clusters in by_deployment.items()}


def deployment_subject(deployment: DeploymentInput) -> tuple[str, int, str]:
    """Return the alert subject of a deployment, without loading its row."""
    return (Deployment._meta.label_lower, deployment.id, deployment.name)


def request_snapshot(request: FailoverRequest, deployment: DeploymentInput, clusters) -> dict:
    return {
        "deployment": deployment.name,
        "kind": request.kind,
        "status": request.status,
        "clusters": sorted(clusters),
        "replicas": request.replicas,
        "deadline": request.deadline.isoformat() if request.deadline else None,
    }


# After an applied plan.


def record_failbacks(plan: PlacementPlan, decisions: FailoverDecisions, now: datetime) -> None:
    """Stamp the failovers whose replicas returned in ``plan``, and the failback approvals it used."""
    requests = FailoverRequest.objects.filter(
        pk__in=decisions.failing_back, failed_back_at__isnull=True
    ).select_related("deployment__customer")
    for request in requests.prefetch_related("clusters"):
        request.failed_back_at = now
        request.save(update_fields=["failed_back_at"])
        if request.kind != FailoverKind.FAILOVER:
            continue
        names = ", ".join(sorted(cluster.name for cluster in request.clusters.all()))
        record_event(
            actor=ACTOR,
            action="failback.applied",
            subject=request,
            reason=f"clusters {names} are schedulable again; plan v{plan.version} returns the replicas "
            "to their preferred places, make-before-break",
            after={"deployment": str(request.deployment), "plan_version": plan.version},
        )


def update_conditions(plan: PlacementPlan, now: datetime | None = None) -> int:
    """Set every deployment's condition from an applied plan; return how many conditions changed.

    Blocked and awaiting approval come from the plan's failover decisions, degraded from a
    rejection or from unmet replicas, normal otherwise. A change of condition is audited, and
    entering or leaving "failover blocked" raises or resolves its alert.
    """
    now = now or timezone.now()
    states = plan.parameters.get("failover", {}).get("deployments", {})
    outcomes = {
        deployment_id: (placed, unmet)
        for deployment_id, placed, unmet in DeploymentOutcome.objects.filter(plan=plan).values_list(
            "deployment_id", "placed_replicas", "unmet_replicas"
        )
    }
    deployments = Deployment.objects.filter(pk__in=outcomes).select_related("customer")
    changed = 0
    for deployment in deployments:
        state = states.get(str(deployment.pk))
        condition, reason = condition_for(deployment, state, *outcomes[deployment.pk])
        if condition == deployment.condition and reason == deployment.condition_reason:
            continue
        before = {"condition": deployment.condition, "reason": deployment.condition_reason}
        previous = deployment.condition
        deployment.condition_reason = reason
        fields = ["condition_reason"]
        if condition != previous:
            deployment.condition = condition
            deployment.condition_since = now
            fields += ["condition", "condition_since"]
        deployment.save(update_fields=fields)
        record_blocked_change(deployment, previous, state)
        if condition != previous:
            changed += 1
            record_event(
                actor=ACTOR,
                action="deployment.condition_changed",
                subject=deployment,
                reason=reason or "all desired replicas placed",
                before=before,
                after={"condition": condition, "reason": reason, "plan_version": plan.version},
            )
    return changed


def condition_for(deployment: Deployment, state: dict | None, placed: int, unmet: int) -> tuple[str, str]:
    if state is not None and state["state"] == BLOCKED:
        return DeploymentCondition.FAILOVER_BLOCKED, state["reason"]
    if state is not None and state["state"] == AWAITING_APPROVAL:
        return DeploymentCondition.AWAITING_APPROVAL, state["reason"]
    if state is not None and state["state"] == REJECTED:
        return DeploymentCondition.DEGRADED, state["reason"]
    if unmet > 0:
        reason = (
            f"{placed} of {placed + unmet} replicas placed: short of capacity that its locks and GPU models allow "
            f"(tier {deployment.customer.tier}); its explanation names the limit"
        )
        return DeploymentCondition.DEGRADED, reason
    return DeploymentCondition.NORMAL, ""


def record_blocked_change(deployment: Deployment, previous: str, state: dict | None) -> None:
    """Raise, update or resolve the deployment's "failover blocked" alert, auditing entry and exit."""
    blocked = deployment.condition == DeploymentCondition.FAILOVER_BLOCKED
    if blocked:
        raise_alert("failover.blocked", AlertSeverity.CRITICAL, deployment, deployment.condition_reason)
        if previous != DeploymentCondition.FAILOVER_BLOCKED:
            record_event(
                actor=ACTOR,
                action="failover.blocked",
                subject=deployment,
                reason=deployment.condition_reason,
                after={"clusters": state["clusters"] if state else ""},
            )
            logger.warning("failover of %s blocked: %s", deployment, deployment.condition_reason)
    elif previous == DeploymentCondition.FAILOVER_BLOCKED:
        resolve_alert("failover.blocked", deployment)
        if state is not None and state["state"] == FAILING_OVER:
            reason = "a cluster that complies with its locks is available: the failover proceeds"
        else:
            reason = "its lost clusters recovered"
        record_event(actor=ACTOR, action="failover.unblocked", subject=deployment, reason=reason)
        logger.info("failover of %s no longer blocked: %s", deployment, reason)


# Repeated losses.


def record_loss(deployment_id: int, cluster_id: int, now: datetime | None = None) -> ClusterAvoidance:
    """Count one loss of a deployment's replicas on a cluster; deprioritise the cluster after repeated ones.

    Losses are counted in a window of ``MCM_REPEATED_LOSS_WINDOW_S`` from the first one. At
    ``MCM_REPEATED_LOSS_COUNT`` losses in a window, the scheduler charges extra for the cluster for
    this deployment until ``MCM_REPEATED_LOSS_AVOID_S`` from now.
    """
    now = now or timezone.now()
    window = timedelta(seconds=settings.MCM_REPEATED_LOSS_WINDOW_S)
    with transaction.atomic():
        avoidance, created = ClusterAvoidance.objects.select_for_update().get_or_create(
            deployment_id=deployment_id,
            cluster_id=cluster_id,
            defaults={"losses": 0, "window_started_at": now, "last_loss_at": now},
        )
        if not created and now - avoidance.window_started_at > window:
            avoidance.losses = 0
            avoidance.window_started_at = now
        avoidance.losses += 1
        avoidance.last_loss_at = now
        if avoidance.losses >= settings.MCM_REPEATED_LOSS_COUNT:
            avoidance.avoid_until = now + timedelta(seconds=settings.MCM_REPEATED_LOSS_AVOID_S)
            record_event(
                actor=ACTOR,
                action="cluster.deprioritised",
                subject=(ClusterAvoidance._meta.label_lower, avoidance.pk),
                reason=f"{avoidance.losses} losses of the deployment's replicas on this cluster since "
                f"{avoidance.window_started_at.isoformat(timespec='seconds')}",
                after={
                    "deployment": deployment_id,
                    "cluster": cluster_id,
                    "losses": avoidance.losses,
                    "avoid_until": avoidance.avoid_until.isoformat(),
                },
            )
        avoidance.save()
    return avoidance
