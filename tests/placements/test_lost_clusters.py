"""The executor and the reconciler leave lost clusters alone, and clean them up once they are back."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from fleet.models import ClusterCapacity, ClusterHealth, Outage, OutageScope, OutageSource
from placements import reconcile as reconcile_module
from placements.execution import execute_plan, fail_timed_out_steps
from placements.models import Assignment, ClusterAvoidance, DriftRecord, ExecutionStep, PlanTrigger, StepStatus
from placements.planning import run_plan
from placements.reconcile import reconcile
from tests.placements.execution_factories import H100_LABEL, apply_plan, poll, start_site

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 2
    settings.MCM_CLUSTER_API_TIMEOUT_S = 1.0


@pytest.fixture
def replans(monkeypatch) -> list[bool]:
    requested: list[bool] = []
    monkeypatch.setattr(reconcile_module, "enqueue_replan", lambda: requested.append(True))
    return requested


@pytest.fixture
def sites(fleet):
    nodes = [("h100-a", H100_LABEL, 8), ("h100-b", H100_LABEL, 8)]
    east = start_site(fleet.clusters["aws-use1-a"], nodes)
    west = start_site(fleet.clusters["aws-euw1-a"], nodes)
    usw = start_site(fleet.clusters["gcp-usw4-a"], nodes)
    yield SimpleNamespace(east=east, west=west, usw=usw)
    for site in (east, west, usw):
        site.emulated.stop()


def declare_outage(site) -> Outage:
    return Outage.objects.create(
        scope=OutageScope.CLUSTER,
        cluster=site.cluster,
        source=OutageSource.DECLARED,
        reason="test outage",
        declared_by="test",
    )


def clear_outage(outage: Outage) -> None:
    outage.cleared_at = timezone.now()
    outage.cleared_by = "test"
    outage.save(update_fields=["cleared_at", "cleared_by"])


def step_on(plan, site) -> ExecutionStep:
    return ExecutionStep.objects.get(plan=plan, cluster=site.cluster)


def run_first_plan(placements):
    plan = apply_plan(placements)
    assert poll(lambda: execute_plan(plan.pk).done)
    return plan


def test_step_on_lost_cluster_not_attempted(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    declare_outage(sites.east)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])

    report = execute_plan(plan.pk)

    east_step = step_on(plan, sites.east)
    assert report.waiting_for_cluster == 1
    assert report.retryable_error is None
    assert east_step.status == StepStatus.PENDING
    assert east_step.attempts == 0
    assert sites.east.replicas(acme_chat) == 2


def test_unreachable_lost_cluster_gives_no_retryable_error(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    declare_outage(sites.east)
    sites.east.emulated.set_unreachable(True)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])

    report = poll(lambda: execute_plan(plan.pk).done and execute_plan(plan.pk))

    assert report
    assert report.retryable_error is None
    assert report.waiting_for_cluster == 1
    assert report.failed == 0
    assert report.as_dict()["retryable_error"] == ""
    assert step_on(plan, sites.east).attempts == 0
    assert step_on(plan, sites.west).status == StepStatus.EXECUTED
    assert sites.west.ready(acme_chat) == 2


def test_down_cluster_counts_as_lost(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    sites.east.cluster.health = ClusterHealth.DOWN
    sites.east.cluster.save(update_fields=["health"])
    sites.east.emulated.set_unreachable(True)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])

    report = execute_plan(plan.pk)

    assert report.waiting_for_cluster == 1
    assert report.retryable_error is None


def test_lost_cluster_step_does_not_time_out(settings, sites, acme_chat, replans):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    declare_outage(sites.east)
    sites.east.emulated.set_unreachable(True)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    assert poll(lambda: execute_plan(plan.pk).done)
    later = timezone.now() + timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S + 1)

    report = reconcile(now=later)

    assert fail_timed_out_steps(plan, later) == []
    assert report.steps_timed_out == 0
    assert replans == []
    assert step_on(plan, sites.east).status == StepStatus.PENDING


def test_recovered_cluster_times_out_from_recovery(settings, sites, acme_chat, replans):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    outage = declare_outage(sites.east)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2), (acme_chat, sites.east.cluster, 2)])
    sites.east.emulated.set_never_ready(True)
    sites.east.emulated.lose_capacity("h100-a")
    sites.east.emulated.lose_capacity("h100-b")
    ExecutionStep.objects.filter(plan=plan).update(
        created_at=timezone.now() - timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S + 1)
    )
    clear_outage(outage)

    report = reconcile()

    assert report.steps_timed_out == 0
    assert step_on(plan, sites.east).status == StepStatus.PENDING


def test_reconcile_does_not_read_lost_cluster(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])
    declare_outage(sites.east)
    sites.east.emulated.set_unreachable(True)

    report = reconcile()

    assert report.clusters_lost == ["aws-use1-a"]
    assert report.clusters_unreachable == []
    assert report.clusters_observed == 2
    assert report.repaired == 0
    assert not DriftRecord.objects.filter(cluster=sites.east.cluster).exists()


def test_lost_target_does_not_block_scale_down(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 1), (acme_chat, sites.west.cluster, 3)])
    declare_outage(sites.east)
    sites.east.emulated.set_unreachable(True)
    plan = apply_plan([(acme_chat, sites.east.cluster, 1), (acme_chat, sites.west.cluster, 2)])

    report = execute_plan(plan.pk)

    assert report.blocked == 0
    assert sites.west.replicas(acme_chat) == 2
    assert poll(lambda: execute_plan(plan.pk).done)
    assert step_on(plan, sites.west).status == StepStatus.EXECUTED
    assert step_on(plan, sites.east).status == StepStatus.PENDING


def test_make_before_break_holds_beside_lost_target(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])
    declare_outage(sites.usw)
    sites.usw.emulated.set_unreachable(True)
    sites.west.emulated.set_never_ready(True)
    plan = apply_plan([(acme_chat, sites.west.cluster, 3), (acme_chat, sites.usw.cluster, 1)])

    for _ in range(3):
        report = execute_plan(plan.pk)

    assert report.blocked == 1
    assert report.waiting_for_cluster == 1
    assert sites.east.ready(acme_chat) == 2
    assert sites.west.replicas(acme_chat) == 3
    assert step_on(plan, sites.east).status == StepStatus.PENDING

    sites.west.emulated.set_never_ready(False)
    assert poll(lambda: execute_plan(plan.pk).done)
    assert sites.east.observed(acme_chat) is None
    assert sites.west.ready(acme_chat) == 3


def test_recovered_cluster_cleaned_after_replacements_ready(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    outage = declare_outage(sites.east)
    sites.east.emulated.set_unreachable(True)
    sites.west.emulated.set_never_ready(True)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    reconcile()
    assert step_on(plan, sites.east).attempts == 0

    clear_outage(outage)
    sites.east.emulated.set_unreachable(False)
    report = reconcile()

    assert report.clusters_lost == []
    assert report.execution["blocked"] == 1
    assert sites.east.ready(acme_chat) == 2
    assert sites.west.replicas(acme_chat) == 2
    assert sites.west.ready(acme_chat) == 0

    sites.west.emulated.set_never_ready(False)
    removed = poll(lambda: reconcile() and sites.east.observed(acme_chat) is None)

    assert removed
    assert sites.west.ready(acme_chat) == 2
    assert step_on(plan, sites.east).status == StepStatus.EXECUTED


def test_leftovers_unknown_to_plan_removed_after_recovery(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])
    outage = declare_outage(sites.east)
    sites.east.emulated.set_unreachable(True)
    sites.west.emulated.set_never_ready(True)
    apply_plan([(acme_chat, sites.west.cluster, 2)])
    reconcile()
    # A second plan made while the cluster is lost has no step for it.
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    reconcile()
    assert not ExecutionStep.objects.filter(plan=plan, cluster=sites.east.cluster).exists()

    clear_outage(outage)
    sites.east.emulated.set_unreachable(False)
    report = reconcile()

    drift = DriftRecord.objects.get(cluster=sites.east.cluster)
    assert report.steps_created == 1
    assert drift.action == "removal_scheduled"
    assert step_on(plan, sites.east).desired_replicas == 0
    assert sites.east.ready(acme_chat) == 2

    sites.west.emulated.set_never_ready(False)
    removed = poll(lambda: reconcile() and sites.east.observed(acme_chat) is None)

    assert removed
    assert sites.west.ready(acme_chat) == 2


def test_not_ready_drift_counts_one_loss_per_episode(sites, acme_chat):
    run_first_plan([(acme_chat, sites.east.cluster, 2)])

    sites.east.emulated.lose_capacity("h100-a")
    sites.east.emulated.lose_capacity("h100-b")
    reconcile()
    reconcile()

    avoidance = ClusterAvoidance.objects.get(deployment=acme_chat, cluster=sites.east.cluster)
    assert avoidance.losses == 1
    assert DriftRecord.objects.filter(cluster=sites.east.cluster, action="not_ready").count() == 1

    sites.east.emulated.restore_capacity()
    assert poll(lambda: sites.east.ready(acme_chat) == 2)
    reconcile()
    sites.east.emulated.lose_capacity("h100-a")
    sites.east.emulated.lose_capacity("h100-b")
    reconcile()

    avoidance.refresh_from_db()
    assert avoidance.losses == 2
    assert DriftRecord.objects.filter(cluster=sites.east.cluster, action="not_ready").count() == 2


def test_replan_moves_pending_replicas_away(settings, sites, acme_chat, replans):
    settings.MCM_NOT_CONVERGED_AVOID_S = 120
    apply_plan([(acme_chat, sites.west.cluster, 3)])
    sites.west.emulated.set_never_ready(True)
    reconcile()
    later = timezone.now() + timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S + 1)
    report = reconcile(now=later)
    assert report.replan_requested_for == ["aws-euw1-a"]

    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL)

    capacity = ClusterCapacity.objects.get(cluster=sites.west.cluster, sku=acme_chat.sku)
    placed = dict(Assignment.objects.filter(plan=plan, deployment=acme_chat).values_list("cluster__name", "replicas"))
    assert capacity.avoid_until == later + timedelta(seconds=120)
    assert "aws-euw1-a" not in placed
    assert sum(placed.values()) == acme_chat.desired_replicas
