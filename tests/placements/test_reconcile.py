"""Reconciliation of emulated clusters with the current plan: drift, repairs, time-outs."""

from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from fleet.models import ClusterCapacity
from placements import reconcile as reconcile_module
from placements.execution import execute_plan
from placements.models import DriftRecord, ExecutionStep, StepStatus
from placements.planning import build_problem
from placements.reconcile import reconcile
from tests.placements.execution_factories import H100_LABEL, apply_plan, poll, start_site

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 2


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
    yield SimpleNamespace(east=east, west=west)
    east.emulated.stop()
    west.emulated.stop()


def step_on(plan, site) -> ExecutionStep:
    return ExecutionStep.objects.get(plan=plan, cluster=site.cluster)


def reconcile_until(check, timeout_s: float = 5.0):
    return poll(lambda: reconcile() and check(), timeout_s)


def test_reconcile_executes_plan_until_ready(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])

    converged = reconcile_until(lambda: not ExecutionStep.objects.filter(status=StepStatus.PENDING).exists())

    assert converged
    assert step_on(plan, sites.east).status == StepStatus.EXECUTED
    assert sites.east.ready(acme_chat) == 2
    assert sites.west.ready(acme_chat) == 1


def test_returning_cluster_cleaned_after_replacements_ready(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    sites.east.run_directly(acme_chat, 2)
    poll(lambda: sites.east.ready(acme_chat) == 2)
    sites.west.emulated.set_never_ready(True)

    first = reconcile()

    drift = DriftRecord.objects.get(cluster=sites.east.cluster)
    assert first.steps_created == 2
    assert drift.action == "removal_scheduled"
    assert drift.observed_replicas == 2
    assert sites.east.ready(acme_chat) == 2
    assert sites.west.replicas(acme_chat) == 2
    assert sites.west.ready(acme_chat) == 0

    sites.west.emulated.set_never_ready(False)
    removed = reconcile_until(lambda: sites.east.observed(acme_chat) is None)

    assert removed
    assert sites.west.ready(acme_chat) == 2
    assert step_on(plan, sites.east).status == StepStatus.EXECUTED


def test_partition_heal_removes_replicas_of_failed_step(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    poll(lambda: execute_plan(first.pk).done)
    sites.east.emulated.set_unreachable(True)
    second = apply_plan([(acme_chat, sites.west.cluster, 2)])
    poll(lambda: execute_plan(second.pk).done)
    assert step_on(second, sites.east).status == StepStatus.FAILED

    sites.east.emulated.set_unreachable(False)
    report = reconcile()

    assert report.repaired == 1
    assert sites.east.observed(acme_chat) is None
    assert step_on(second, sites.east).status == StepStatus.EXECUTED
    assert AuditEvent.objects.filter(action="execution_step.recovered").count() == 1
    assert DriftRecord.objects.get(cluster=sites.east.cluster).action == "deleted"


def test_drift_on_executed_step_is_repaired(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])
    poll(lambda: execute_plan(plan.pk).done)
    sites.east.run_directly(acme_chat, 1)

    report = reconcile()

    drift = DriftRecord.objects.get(cluster=sites.east.cluster)
    assert report.repaired == 1
    assert drift.action == "scaled"
    assert drift.observed_replicas == 1
    assert drift.repaired_at is not None
    assert sites.east.replicas(acme_chat) == 2
    assert AuditEvent.objects.filter(action="drift.repaired").count() == 1


def test_extra_replicas_wait_for_replacements(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 1), (acme_chat, sites.west.cluster, 1)])
    poll(lambda: execute_plan(plan.pk).done)
    sites.east.run_directly(acme_chat, 3)
    sites.west.emulated.lose_capacity("h100-a")
    sites.west.emulated.lose_capacity("h100-b")

    reconcile()
    reconcile()

    drift = DriftRecord.objects.filter(cluster=sites.east.cluster)
    assert sites.east.replicas(acme_chat) == 3
    assert drift.count() == 1
    assert drift.get().action == "waiting_for_replacements"


def test_stray_of_deleted_deployment_is_removed(sites, acme_chat):
    sites.east.run_directly(acme_chat, 1, name="old-model-99999")
    acme_chat.delete()

    report = reconcile()

    drift = DriftRecord.objects.get(kubernetes_name="old-model-99999")
    assert report.repaired == 1
    assert drift.action == "deleted"
    assert drift.deployment is None
    assert sites.east.adapter().list_managed_deployments() == []


def test_timed_out_step_fails_and_requests_replan(
    settings, sites, acme_chat, replans, django_capture_on_commit_callbacks
):
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    sites.west.emulated.set_never_ready(True)
    reconcile()
    later = timezone.now() + timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S + 1)

    with django_capture_on_commit_callbacks(execute=True):
        report = reconcile(now=later)

    step = step_on(plan, sites.west)
    assert report.steps_timed_out == 1
    assert report.replan_requested_for == ["aws-euw1-a"]
    assert step.status == StepStatus.FAILED
    assert "timed out" in step.last_error
    assert AuditEvent.objects.filter(action="execution_step.timed_out", subject_id=str(step.pk)).exists()
    assert AuditEvent.objects.get(action="cluster.not_converged").subject_id == str(sites.west.cluster.pk)
    assert replans == [True]
    assert sites.west.cluster.state == "active"


def test_replan_avoids_cluster_that_did_not_converge(settings, sites, acme_chat, replans):
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    sites.west.emulated.set_never_ready(True)
    reconcile()
    later = timezone.now() + timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S + 1)

    reconcile(now=later)

    capacity = ClusterCapacity.objects.get(cluster=sites.west.cluster, sku=step_on(plan, sites.west).sku)
    assert capacity.avoid_until == later + timedelta(seconds=settings.MCM_NOT_CONVERGED_AVOID_S)
    west = next(cluster for cluster in build_problem().clusters if cluster.id == sites.west.cluster.pk)
    assert west.free_gpus[capacity.sku.name] == 0


def test_replan_keeps_cluster_that_waited_to_scale_down(settings, sites, acme_chat, replans):
    """A scale-down held for replacements that never start elsewhere does not make its cluster avoided."""
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    assert reconcile_until(lambda: step_on(first, sites.east).status == StepStatus.EXECUTED)
    assert poll(lambda: sites.east.ready(acme_chat) == 2)
    sites.west.emulated.set_never_ready(True)
    move = apply_plan([(acme_chat, sites.west.cluster, 2)])
    reconcile()
    later = timezone.now() + timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S + 1)

    report = reconcile(now=later)

    assert report.steps_timed_out == 2
    assert step_on(move, sites.east).status == StepStatus.FAILED
    assert sites.east.ready(acme_chat) == 2
    sku = step_on(move, sites.west).sku
    assert ClusterCapacity.objects.get(cluster=sites.west.cluster, sku=sku).avoid_until is not None
    assert ClusterCapacity.objects.get(cluster=sites.east.cluster, sku=sku).avoid_until is None


def test_unreachable_cluster_is_reported(sites):
    sites.east.emulated.set_unreachable(True)

    report = reconcile()

    assert report.clusters_unreachable == ["aws-use1-a"]
    assert report.clusters_observed == 2
