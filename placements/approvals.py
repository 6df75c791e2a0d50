"""Staff decisions on failover and failback requests, and the emergency time-out of failovers.

Each decision is atomic, audited with the actor and reason, resolves the request's alert and
enqueues a re-plan on commit, which carries it out. ``placements.failover`` re-exports these
functions; planning creates the requests.
"""

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from compliance.services import record_event
from fleet.alerts import resolve_alert
from placements.models import Deployment, FailoverKind, FailoverRequest, FailoverStatus, PlanTrigger

logger = logging.getLogger(__name__)

# Actor of the decisions the system makes by itself.
ACTOR = "failover"

# A failover whose replicas moved, or were let move, and have not returned yet.
MOVED = (FailoverStatus.APPROVED, FailoverStatus.TIMED_OUT)
DECIDABLE_KINDS = (FailoverKind.FAILOVER, FailoverKind.FAILBACK)


class FailoverDecisionError(ValueError):
    """A decision on a failover or failback request that cannot be made; nothing was changed."""


def approve(request: FailoverRequest, *, actor, reason: str) -> FailoverRequest:
    """Approve a pending failover or failback; the re-plan that carries it out is enqueued on commit."""
    return _decide(request, FailoverStatus.APPROVED, actor=actor, reason=reason)


def reject(request: FailoverRequest, *, actor, reason: str) -> FailoverRequest:
    """Reject a pending failover (replicas stay on the lost clusters) or failback (replicas stay where they are)."""
    return _decide(request, FailoverStatus.REJECTED, actor=actor, reason=reason)


def _decide(request: FailoverRequest, status: str, *, actor, reason: str) -> FailoverRequest:
    if not isinstance(reason, str) or not reason.strip():
        raise FailoverDecisionError(f"reason: a reason is required to decide request {request.pk}, got {reason!r}")
    now = timezone.now()
    with transaction.atomic():
        locked = FailoverRequest.objects.select_for_update().get(pk=request.pk)
        if locked.kind not in DECIDABLE_KINDS or locked.status != FailoverStatus.PENDING:
            raise FailoverDecisionError(
                f"status: request {locked.pk} is {locked.status}; only a pending request can be approved or rejected"
            )
        locked.status = status
        locked.decided_by = None if isinstance(actor, str) else actor
        locked.decided_by_label = actor if isinstance(actor, str) else actor.get_username()
        locked.decided_at = now
        locked.decision_reason = reason.strip()
        locked.save(update_fields=["status", "decided_by", "decided_by_label", "decided_at", "decision_reason"])
        closed = []
        if locked.kind == FailoverKind.FAILBACK and status == FailoverStatus.REJECTED:
            closed = _close_failovers_kept_in_place(locked, now)
        deployment = Deployment.objects.select_related("customer").get(pk=locked.deployment_id)
        record_event(
            actor=actor,
            action=f"{locked.kind}.{status}",
            subject=locked,
            reason=locked.decision_reason,
            before={"status": FailoverStatus.PENDING},
            after={"status": status, "deployment": str(deployment), "failovers_kept_in_place": closed},
        )
        resolve_alert(f"{locked.kind}.awaiting_approval", deployment)
        transaction.on_commit(enqueue_replan)
    logger.info("%s request %s of %s %s by %s", locked.kind, locked.pk, deployment, status, locked.decided_by_label)
    return locked


def _close_failovers_kept_in_place(failback: FailoverRequest, now: datetime) -> list[int]:
    """Mark the failovers a rejected failback concerned as finished, so failback is not suggested again."""
    clusters = set(failback.clusters.values_list("pk", flat=True))
    closed = []
    failovers = FailoverRequest.objects.filter(
        deployment_id=failback.deployment_id, kind=FailoverKind.FAILOVER, status__in=MOVED, failed_back_at__isnull=True
    ).prefetch_related("clusters")
    for failover in failovers:
        if {cluster.pk for cluster in failover.clusters.all()} <= clusters:
            failover.failed_back_at = now
            failover.save(update_fields=["failed_back_at"])
            closed.append(failover.pk)
    return closed


def expire_requests(now: datetime | None = None) -> int:
    """Time out pending failovers past their deadline, so they proceed; return how many timed out.

    Failback requests have no deadline and wait for staff. A re-plan is enqueued on commit when
    any request timed out.
    """
    with transaction.atomic():
        expired = expire_due(now or timezone.now())
        if expired:
            transaction.on_commit(enqueue_replan)
    return expired


def expire_due(now: datetime) -> int:
    requests = FailoverRequest.objects.select_for_update().filter(
        kind=FailoverKind.FAILOVER, status=FailoverStatus.PENDING, deadline__lte=now
    )
    expired = 0
    for request in requests.select_related("deployment__customer"):
        request.status = FailoverStatus.TIMED_OUT
        request.decided_by_label = ACTOR
        request.decided_at = now
        request.decision_reason = "no decision before the emergency time-out; the failover proceeds"
        request.save(update_fields=["status", "decided_by_label", "decided_at", "decision_reason"])
        record_event(
            actor=ACTOR,
            action="failover.timed_out",
            subject=request,
            reason=request.decision_reason,
            before={"status": FailoverStatus.PENDING},
            after={"status": request.status, "deadline": request.deadline.isoformat() if request.deadline else None},
        )
        resolve_alert("failover.awaiting_approval", request.deployment)
        logger.warning("failover request %s of %s timed out; it proceeds", request.pk, request.deployment)
        expired += 1
    return expired


def enqueue_replan() -> None:
    from tasks.tasks import plan_placements  # imported here: the tasks module imports this app

    plan_placements.delay(trigger=PlanTrigger.APPROVAL.value)
