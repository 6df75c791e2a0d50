"""Failover and failback approval on PostgreSQL: pending holds, approval, rejection, emergency time-out."""

from datetime import timedelta

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from fleet.models import Alert, AlertSeverity
from placements.failover import FailoverDecisionError, approve, expire_requests, reject
from placements.models import (
    Customer,
    DeploymentCondition,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
    Tier,
)
from tests.placements.failover_factories import bring_back, build_fleet, make_deployment, placed_on, plan, take_down

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(db):
    """acme/chat (approval policy, 600 s time-out) runs one replica on aws-use1-a, which goes down."""
    fleet = build_fleet({"aws-use1-a": 8, "gcp-use4-a": 8})
    acme = Customer.objects.create(name="acme", tier=Tier.PREMIUM)
    chat = make_deployment(
        acme,
        "chat",
        replicas=1,
        preference=["aws/us-east-1", "gcp/us-east4"],
        failover_policy="approval",
        approval_timeout_s=600,
    )
    first = plan()
    assert placed_on(first, chat) == {"aws-use1-a": 1}
    take_down(fleet.clusters["aws-use1-a"])
    return fleet, chat


def pending_failover(chat) -> FailoverRequest:
    return FailoverRequest.objects.get(deployment=chat, kind=FailoverKind.FAILOVER, status=FailoverStatus.PENDING)


def test_pending_failover_holds_replicas(setup):
    fleet, chat = setup

    held = plan()

    assert placed_on(held, chat) == {"aws-use1-a": 1}
    request = pending_failover(chat)
    assert request.replicas == 1
    assert list(request.clusters.values_list("name", flat=True)) == ["aws-use1-a"]
    assert request.deadline is not None
    assert request.deadline - request.created_at == pytest.approx(timedelta(seconds=600), abs=timedelta(seconds=5))
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.AWAITING_APPROVAL
    assert "awaits staff approval" in chat.condition_reason
    alert = Alert.objects.get(kind="failover.awaiting_approval", resolved_at__isnull=True)
    assert alert.severity == AlertSeverity.WARNING
    assert alert.subject_id == str(chat.pk)
    assert AuditEvent.objects.filter(action="failover.requested", subject_id=str(request.pk)).count() == 1


def test_pending_failover_is_requested_once(setup):
    fleet, chat = setup
    plan()

    plan()

    assert FailoverRequest.objects.filter(deployment=chat).count() == 1
    assert AuditEvent.objects.filter(action="failover.requested").count() == 1


def test_approve_records_decision(setup, ops, django_capture_on_commit_callbacks):
    fleet, chat = setup
    plan()
    request = pending_failover(chat)

    with django_capture_on_commit_callbacks() as callbacks:
        decided = approve(request, actor=ops, reason="region is gone for hours")

    assert decided.status == FailoverStatus.APPROVED
    assert decided.decided_by == ops
    assert decided.decided_by_label == "ops"
    assert decided.decided_at is not None
    assert decided.decision_reason == "region is gone for hours"
    event = AuditEvent.objects.get(action="failover.approved", subject_id=str(request.pk))
    assert event.actor == ops
    assert event.reason == "region is gone for hours"
    assert not Alert.objects.filter(kind="failover.awaiting_approval", resolved_at__isnull=True).exists()
    assert len(callbacks) == 1


def test_approved_failover_proceeds(setup, ops):
    fleet, chat = setup
    plan()
    approve(pending_failover(chat), actor=ops, reason="region is gone for hours")

    after = plan()

    assert placed_on(after, chat) == {"gcp-use4-a": 1}
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.NORMAL


def test_rejected_failover_holds_until_recovery(setup, ops):
    fleet, chat = setup
    plan()
    reject(pending_failover(chat), actor=ops, reason="the provider promises a fix in minutes")

    held = plan()

    assert placed_on(held, chat) == {"aws-use1-a": 1}
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.DEGRADED
    assert "rejected by ops" in chat.condition_reason
    assert "the provider promises a fix in minutes" in chat.condition_reason
    assert AuditEvent.objects.filter(action="failover.rejected", actor=ops).exists()


def test_rejection_ends_when_cluster_recovers(setup, ops):
    fleet, chat = setup
    plan()
    request = pending_failover(chat)
    reject(request, actor=ops, reason="the provider promises a fix in minutes")
    plan()

    bring_back(fleet.clusters["aws-use1-a"])
    recovered = plan()

    assert placed_on(recovered, chat) == {"aws-use1-a": 1}
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.NORMAL
    request.refresh_from_db()
    assert request.failed_back_at is not None
    assert AuditEvent.objects.filter(action="failover.recovered", subject_id=str(request.pk)).exists()


def test_next_loss_after_rejection_asks_again(setup, ops):
    fleet, chat = setup
    plan()
    reject(pending_failover(chat), actor=ops, reason="the provider promises a fix in minutes")
    plan()
    bring_back(fleet.clusters["aws-use1-a"])
    plan()

    take_down(fleet.clusters["aws-use1-a"])
    plan()

    assert pending_failover(chat).status == FailoverStatus.PENDING
    assert FailoverRequest.objects.filter(deployment=chat).count() == 2


def test_time_out_lets_failover_proceed(setup):
    fleet, chat = setup
    plan()
    request = pending_failover(chat)

    assert expire_requests(now=request.deadline - timedelta(seconds=1)) == 0
    assert expire_requests(now=request.deadline + timedelta(seconds=1)) == 1

    request.refresh_from_db()
    assert request.status == FailoverStatus.TIMED_OUT
    assert request.decided_by_label == "failover"
    event = AuditEvent.objects.get(action="failover.timed_out", subject_id=str(request.pk))
    assert event.actor_label == "failover"
    after = plan()
    assert placed_on(after, chat) == {"gcp-use4-a": 1}


def test_expire_task_enqueues_replan(setup, monkeypatch, django_capture_on_commit_callbacks):
    from placements.models import FailoverRequest
    from placements.tasks import expire_failover_requests
    from tasks.models import TaskRun
    from tasks.tasks import plan_placements

    fleet, chat = setup
    plan()
    request = pending_failover(chat)
    FailoverRequest.objects.filter(pk=request.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    enqueued = []
    monkeypatch.setattr(plan_placements, "delay", lambda **kwargs: enqueued.append(kwargs))

    with django_capture_on_commit_callbacks(execute=True):
        assert expire_failover_requests.apply().get() == 1

    request.refresh_from_db()
    assert request.status == FailoverStatus.TIMED_OUT
    assert TaskRun.objects.get(task_name="expire_failover_requests").summary == {"timed_out": 1}
    assert enqueued == [{"trigger": "approval"}]


def test_recovery_withdraws_pending_failover(setup):
    fleet, chat = setup
    plan()
    request = pending_failover(chat)

    bring_back(fleet.clusters["aws-use1-a"])
    plan()

    request.refresh_from_db()
    assert request.status == FailoverStatus.WITHDRAWN
    assert AuditEvent.objects.filter(action="failover.withdrawn", subject_id=str(request.pk)).exists()
    assert not Alert.objects.filter(kind="failover.awaiting_approval", resolved_at__isnull=True).exists()
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.NORMAL


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_decision_without_reason_changes_nothing(setup, ops, reason):
    fleet, chat = setup
    plan()
    request = pending_failover(chat)

    with pytest.raises(FailoverDecisionError, match="reason"):
        approve(request, actor=ops, reason=reason)

    request.refresh_from_db()
    assert request.status == FailoverStatus.PENDING
    assert not AuditEvent.objects.filter(action="failover.approved").exists()


def test_decided_request_cannot_be_decided_again(setup, ops):
    fleet, chat = setup
    plan()
    request = pending_failover(chat)
    approve(request, actor=ops, reason="go")

    with pytest.raises(FailoverDecisionError, match="approved"):
        reject(request, actor=ops, reason="changed my mind")

    request.refresh_from_db()
    assert request.status == FailoverStatus.APPROVED
    assert not AuditEvent.objects.filter(action="failover.rejected").exists()


# Failback by approval.


@pytest.fixture
def failback_pending(setup, ops, settings):
    """acme/chat failed over to gcp-use4-a; aws-use1-a is schedulable again and the failback awaits approval."""
    settings.MCM_FAILBACK_AFTER_S = 0
    fleet, chat = setup
    chat.failback_policy = "approval"
    chat.save(update_fields=["failback_policy"])
    plan()
    approve(pending_failover(chat), actor=ops, reason="go")
    moved = plan()
    assert placed_on(moved, chat) == {"gcp-use4-a": 1}
    bring_back(fleet.clusters["aws-use1-a"])
    plan()
    failback = FailoverRequest.objects.get(deployment=chat, kind=FailoverKind.FAILBACK)
    assert failback.status == FailoverStatus.PENDING
    return fleet, chat, failback


def test_approved_failback_returns_replicas(failback_pending, ops):
    fleet, chat, failback = failback_pending

    approve(failback, actor=ops, reason="cluster stable for an hour")
    after = plan()

    assert placed_on(after, chat) == {"aws-use1-a": 1}
    failover = FailoverRequest.objects.get(deployment=chat, kind=FailoverKind.FAILOVER)
    assert failover.failed_back_at is not None
    assert AuditEvent.objects.filter(action="failback.approved", actor=ops).exists()
    assert AuditEvent.objects.filter(action="failback.applied", subject_id=str(failover.pk)).exists()
    assert not Alert.objects.filter(kind="failback.awaiting_approval", resolved_at__isnull=True).exists()


def test_rejected_failback_is_not_suggested_again(failback_pending, ops):
    fleet, chat, failback = failback_pending

    reject(failback, actor=ops, reason="keep it on gcp for now")
    plan()

    failover = FailoverRequest.objects.get(deployment=chat, kind=FailoverKind.FAILOVER)
    assert failover.failed_back_at is not None
    assert FailoverRequest.objects.filter(deployment=chat, kind=FailoverKind.FAILBACK).count() == 1
    event = AuditEvent.objects.get(action="failback.rejected", subject_id=str(failback.pk))
    assert event.after["failovers_kept_in_place"] == [failover.pk]


def test_failback_requests_do_not_time_out(failback_pending):
    fleet, chat, failback = failback_pending

    assert expire_requests(now=failback.created_at + timedelta(days=30)) == 0

    failback.refresh_from_db()
    assert failback.status == FailoverStatus.PENDING
