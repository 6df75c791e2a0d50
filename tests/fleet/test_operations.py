"""Operator controls: cluster state changes and outages are audited, alerted and re-planned."""

import pytest

from compliance.models import AuditEvent
from fleet import operations
from fleet.availability import cluster_availability, lost_cluster_ids
from fleet.models import Alert, Cluster, ClusterState, Outage, OutageScope, OutageSource
from fleet.operations import OperationError
from placements import tasks as placement_tasks
from placements.models import Assignment, PlacementPlan, PlanStatus, PlanTrigger
from tasks.tasks import plan_placements

pytestmark = pytest.mark.django_db


@pytest.fixture
def replans(monkeypatch) -> list[dict]:
    """Record each re-plan the controls enqueue, with its arguments, instead of sending it to the broker."""
    requested: list[dict] = []
    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: requested.append(kwargs))
    return requested


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


# Cluster state.


@pytest.mark.parametrize(
    ("operation", "start", "end", "action"),
    [
        (operations.cordon, ClusterState.ACTIVE, ClusterState.CORDONED, "cluster.cordoned"),
        (operations.cordon, ClusterState.DRAINING, ClusterState.CORDONED, "cluster.cordoned"),
        (operations.uncordon, ClusterState.CORDONED, ClusterState.ACTIVE, "cluster.uncordoned"),
        (operations.uncordon, ClusterState.DRAINING, ClusterState.ACTIVE, "cluster.uncordoned"),
        (operations.uncordon, ClusterState.DOWN, ClusterState.ACTIVE, "cluster.uncordoned"),
        (operations.drain, ClusterState.ACTIVE, ClusterState.DRAINING, "cluster.draining"),
        (operations.drain, ClusterState.CORDONED, ClusterState.DRAINING, "cluster.draining"),
    ],
)
def test_state_change_is_audited_and_replanned(
    fleet, ops, replans, django_capture_on_commit_callbacks, operation, start, end, action
):
    cluster = fleet.clusters["aws-use1-a"]
    Cluster.objects.filter(pk=cluster.pk).update(state=start)

    with django_capture_on_commit_callbacks(execute=True):
        operation(cluster, actor=ops, reason="  Kernel upgrade on every node.  ")

    cluster.refresh_from_db()
    assert cluster.state == end
    [event] = events(action)
    assert event.actor == ops
    assert event.subject_id == str(cluster.pk)
    assert event.reason == "Kernel upgrade on every node."
    assert event.before["state"] == start
    assert event.after["state"] == end
    assert replans == [{"trigger": "operator"}]


@pytest.mark.parametrize(
    ("operation", "start"),
    [
        (operations.cordon, ClusterState.CORDONED),
        (operations.cordon, ClusterState.DOWN),
        (operations.uncordon, ClusterState.ACTIVE),
        (operations.drain, ClusterState.DRAINING),
        (operations.drain, ClusterState.DOWN),
    ],
)
def test_invalid_transition_changes_nothing(fleet, ops, replans, django_capture_on_commit_callbacks, operation, start):
    cluster = fleet.clusters["aws-use1-a"]
    Cluster.objects.filter(pk=cluster.pk).update(state=start)

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(OperationError) as raised:
        operation(cluster, actor=ops, reason="maintenance")

    assert raised.value.field == "state"
    assert f"aws-use1-a is {start}" in str(raised.value)
    cluster.refresh_from_db()
    assert cluster.state == start
    assert not AuditEvent.objects.exists()
    assert callbacks == []


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_state_change_needs_reason(fleet, ops, django_capture_on_commit_callbacks, reason):
    cluster = fleet.clusters["aws-use1-a"]

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(OperationError) as raised:
        operations.drain(cluster, actor=ops, reason=reason)

    assert raised.value.field == "reason"
    assert repr(reason) in str(raised.value)
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    assert not AuditEvent.objects.exists()
    assert callbacks == []


def test_cordoned_cluster_holds_its_replicas(fleet, ops):
    cluster = fleet.clusters["aws-use1-a"]

    operations.cordon(cluster, actor=ops, reason="flaky network")

    availability = cluster_availability()[cluster.pk]
    assert availability.holds_current
    assert not availability.schedulable


def test_drain_moves_replicas_off_in_operator_plan(
    monkeypatch, fleet, ops, applied_plan, replans, django_capture_on_commit_callbacks
):
    executions: list[tuple] = []
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", lambda *args, **kwargs: executions.append(args))
    cluster = fleet.clusters["aws-use1-a"]
    assert Assignment.objects.filter(plan=applied_plan, cluster=cluster).exists()

    with django_capture_on_commit_callbacks(execute=True):
        operations.drain(cluster, actor=ops, reason="decommission")
    # Run the enqueued re-plan in process, as a worker would.
    with django_capture_on_commit_callbacks(execute=True):
        version = plan_placements.apply(kwargs=replans[0]).get()

    plan = PlacementPlan.objects.get(version=version)
    assert plan.status == PlanStatus.APPLIED
    assert plan.trigger == PlanTrigger.OPERATOR
    assert not Assignment.objects.filter(plan=plan, cluster=cluster).exists()
    assert executions == [((plan.pk,),)]


# Outages.


def outage_targets(fleet) -> dict:
    return {"cluster": fleet.clusters["gcp-usw4-a"], "region": fleet.us_east, "provider": fleet.aws}


@pytest.mark.parametrize("scope", ["cluster", "region", "provider"])
def test_declared_outage_is_audited_alerted_and_replanned(
    fleet, ops, replans, django_capture_on_commit_callbacks, scope
):
    target = outage_targets(fleet)[scope]

    with django_capture_on_commit_callbacks(execute=True):
        outage = operations.declare_outage(scope=scope, target=target, actor=ops, reason="Provider status page: down.")

    assert outage.scope == scope
    assert outage.target == target
    assert outage.source == OutageSource.DECLARED
    assert outage.declared_by == "ops"
    assert outage.is_open
    [event] = events("outage.declared")
    assert event.actor == ops
    assert event.subject_id == str(outage.pk)
    assert event.reason == "Provider status page: down."
    assert event.after["target"] == str(target)
    alert = Alert.objects.get(kind="outage.open")
    assert alert.severity == "critical"
    assert alert.subject_id == str(outage.pk)
    assert alert.resolved_at is None
    assert replans == [{"trigger": "operator"}]


def test_declared_region_outage_makes_its_clusters_lost(fleet, ops):
    operations.declare_outage(scope="region", target=fleet.us_east, actor=ops, reason="power loss")

    lost = lost_cluster_ids()
    assert lost == {fleet.clusters["aws-use1-a"].pk, fleet.clusters["aws-use1-b"].pk}


def test_second_open_outage_of_target_rejected(fleet, ops, django_capture_on_commit_callbacks):
    first = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(OperationError) as raised:
        operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="again")

    assert raised.value.field == "provider"
    assert "provider aws already has an open declared outage" in str(raised.value)
    assert f"id {first.pk}" in str(raised.value)
    assert Outage.objects.count() == 1
    assert len(events("outage.declared")) == 1
    assert callbacks == []


def test_outage_after_cleared_one_accepted(fleet, ops):
    first = operations.declare_outage(scope="cluster", target=fleet.clusters["aws-use1-a"], actor=ops, reason="x")
    operations.clear_outage(first, actor=ops, reason="back")

    second = operations.declare_outage(scope="cluster", target=fleet.clusters["aws-use1-a"], actor=ops, reason="y")

    assert second.pk != first.pk
    assert second.is_open


def test_detected_outage_does_not_block_declared_one(fleet, ops):
    Outage.objects.create(
        scope=OutageScope.PROVIDER,
        provider=fleet.gcp,
        source=OutageSource.DETECTED,
        reason="all down",
        declared_by="health",
    )

    outage = operations.declare_outage(scope="provider", target=fleet.gcp, actor=ops, reason="confirmed by gcp")

    assert outage.source == OutageSource.DECLARED


@pytest.mark.parametrize(
    ("scope", "target_name", "reason", "field", "message"),
    [
        ("zone", "aws", "x", "scope", "scope 'zone' is not valid"),
        ("cluster", None, "x", "cluster", "cluster is missing"),
        ("region", "aws", "x", "region", "is not a stored Region"),
        ("provider", "aws", "", "reason", "reason '' is empty"),
        ("provider", "aws", " \n ", "reason", "is empty"),
    ],
)
def test_bad_outage_rejected(fleet, ops, scope, target_name, reason, field, message):
    target = {"aws": fleet.aws, None: None}[target_name]

    with pytest.raises(OperationError) as raised:
        operations.declare_outage(scope=scope, target=target, actor=ops, reason=reason)

    assert raised.value.field == field
    assert message in str(raised.value)
    assert not Outage.objects.exists()
    assert not AuditEvent.objects.exists()
    assert not Alert.objects.exists()


def test_clear_outage_audits_and_resolves_alert(fleet, ops, replans, django_capture_on_commit_callbacks):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    with django_capture_on_commit_callbacks(execute=True):
        cleared = operations.clear_outage(outage, actor=ops, reason="AWS reports recovery.")

    assert cleared.cleared_at is not None
    assert cleared.cleared_by == "ops"
    [event] = events("outage.cleared")
    assert event.reason == "AWS reports recovery."
    assert event.before["cleared_at"] is None
    assert event.after["cleared_at"] == cleared.cleared_at.isoformat()
    alert = Alert.objects.get(kind="outage.open")
    assert alert.resolved_at is not None
    assert replans == [{"trigger": "operator"}]
    assert fleet.clusters["aws-use1-a"].pk not in lost_cluster_ids()


def test_clear_outage_twice_rejected(fleet, ops, django_capture_on_commit_callbacks):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")
    operations.clear_outage(outage, actor=ops, reason="recovered")
    cleared_at = Outage.objects.get(pk=outage.pk).cleared_at

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(OperationError) as raised:
        operations.clear_outage(outage, actor="someone else", reason="again")

    assert raised.value.field == "cleared_at"
    assert f"Outage {outage.pk} was already cleared" in str(raised.value)
    assert Outage.objects.get(pk=outage.pk).cleared_at == cleared_at
    assert len(events("outage.cleared")) == 1
    assert callbacks == []


def test_clear_outage_needs_reason(fleet, ops):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    with pytest.raises(OperationError) as raised:
        operations.clear_outage(outage, actor=ops, reason="")

    assert raised.value.field == "reason"
    assert Outage.objects.get(pk=outage.pk).is_open
    assert Alert.objects.get(kind="outage.open").resolved_at is None


# Re-plan preview.


def test_preview_excluding_provider_applies_nothing(fleet, ops, applied_plan):
    aws_before = sum(
        Assignment.objects.filter(plan=applied_plan, cluster__region__provider=fleet.aws).values_list(
            "replicas", flat=True
        )
    )

    preview = operations.preview_replan(actor=ops, exclude_providers=["aws"])

    dry_run = PlacementPlan.objects.get(pk=preview["plan_id"])
    assert dry_run.status == PlanStatus.DRY_RUN
    assert not Assignment.objects.filter(plan=dry_run, cluster__region__provider=fleet.aws).exists()
    assert preview["current_plan_version"] == applied_plan.version
    assert preview["by_provider"]["aws"] == -aws_before
    assert preview["exclusions"]["providers"] == ["aws"]
    assert preview["unmet_by_tier"]["after"] == dry_run.summary["unmet_by_tier"]
    assert PlacementPlan.objects.filter(status=PlanStatus.APPLIED).get() == applied_plan


def test_apply_replan_enqueues_execution(monkeypatch, fleet, ops, applied_plan, django_capture_on_commit_callbacks):
    executions: list[tuple] = []
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", lambda *args, **kwargs: executions.append(args))

    with django_capture_on_commit_callbacks(execute=True):
        plan = operations.apply_replan(actor=ops)

    assert plan.status == PlanStatus.APPLIED
    assert plan.trigger == PlanTrigger.OPERATOR
    assert executions == [((plan.pk,),)]
    applied_plan.refresh_from_db()
    assert applied_plan.status == PlanStatus.SUPERSEDED
