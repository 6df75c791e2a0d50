"""The lock guard of the executor: an assignment that breaks a lock is rejected before any write."""

from types import SimpleNamespace

import pytest

from compliance.models import AuditEvent, PlacementLock
from fleet.models import Alert
from placements.execution import execute_plan
from placements.lock_guard import effective_locks, rejected_placements
from placements.models import ExecutionStep, StepStatus
from placements.reconcile import reconcile
from tests.placements.execution_factories import H100_LABEL, apply_plan, poll, start_site

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 5


@pytest.fixture
def sites(fleet):
    nodes = [("h100-a", H100_LABEL, 8), ("h100-b", H100_LABEL, 8)]
    east = start_site(fleet.clusters["aws-use1-a"], nodes)  # jurisdiction us
    west = start_site(fleet.clusters["aws-euw1-a"], nodes)  # jurisdiction eu
    yield SimpleNamespace(east=east, west=west)
    east.emulated.stop()
    west.emulated.stop()


@pytest.fixture
def eu_only(acme_chat):
    return PlacementLock.objects.create(deployment=acme_chat, allowed_jurisdictions=["eu"], reason="GDPR clause 4.2")


def execute_until_done(plan, timeout_s: float = 5.0):
    return poll(lambda: execute_plan(plan.pk).done and execute_plan(plan.pk), timeout_s)


def step_on(plan, cluster) -> ExecutionStep:
    return ExecutionStep.objects.get(plan=plan, cluster=cluster)


def open_lock_alerts(deployment):
    return Alert.objects.filter(
        kind="lock_violation", subject_id=str(deployment.pk), subject_type="placements.deployment", resolved_at=None
    )


def test_forced_assignment_outside_lock_rejected(sites, acme_chat, eu_only):
    # The plan is written directly, as if the scheduler had been bypassed.
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])

    report = execute_until_done(plan)

    assert report.done
    rejected = step_on(plan, sites.east.cluster)
    assert rejected.status == StepStatus.FAILED
    assert rejected.attempts == 0
    assert f"lock {eu_only.pk} on deployment acme/chat" in rejected.last_error
    assert "jurisdiction us is not allowed" in rejected.last_error
    assert "GDPR clause 4.2" in rejected.last_error
    assert sites.east.observed(acme_chat) is None
    # The allowed part of the plan runs, without waiting for the rejected replicas.
    assert step_on(plan, sites.west.cluster).status == StepStatus.EXECUTED
    assert sites.west.ready(acme_chat) == 1

    event = AuditEvent.objects.get(action="execution_step.lock_rejected")
    assert event.subject_id == str(rejected.pk)
    assert f"lock {eu_only.pk}" in event.reason
    alert = open_lock_alerts(acme_chat).get()
    assert alert.severity == "critical"
    assert "aws-use1-a" in alert.message
    assert "GDPR clause 4.2" in alert.message


def test_customer_lock_binds_its_deployments(sites, acme, acme_chat):
    lock = PlacementLock.objects.create(customer=acme, reason="no AWS for this customer")
    lock.excluded_providers.set([sites.east.cluster.region.provider])
    plan = apply_plan([(acme_chat, sites.west.cluster, 1)])

    execute_plan(plan.pk)

    step = step_on(plan, sites.west.cluster)
    assert step.status == StepStatus.FAILED
    assert f"lock {lock.pk} on customer acme" in step.last_error
    assert "provider aws is excluded" in step.last_error
    assert sites.west.observed(acme_chat) is None


def test_lock_added_after_plan_applies(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])
    PlacementLock.objects.create(deployment=acme_chat, allowed_jurisdictions=["eu"], reason="new contract")

    execute_plan(plan.pk)

    assert step_on(plan, sites.east.cluster).status == StepStatus.FAILED
    assert sites.east.observed(acme_chat) is None


def test_removal_from_forbidden_cluster_allowed(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    execute_until_done(first)
    PlacementLock.objects.create(deployment=acme_chat, allowed_jurisdictions=["eu"], reason="moved to the EU")
    second = apply_plan([(acme_chat, sites.west.cluster, 2)])

    report = execute_until_done(second)

    assert report.done
    assert report.failed == 0
    assert sites.east.observed(acme_chat) is None
    assert sites.west.ready(acme_chat) == 2
    assert not AuditEvent.objects.filter(action="execution_step.lock_rejected").exists()


def test_reconcile_skips_rejected_step(sites, acme_chat, eu_only):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])
    execute_until_done(plan)
    assert step_on(plan, sites.east.cluster).status == StepStatus.FAILED

    # Reconciliation re-applies failed steps whose cluster does not match them. This one must stay unwritten.
    reconcile()
    reconcile()

    assert sites.east.observed(acme_chat) is None
    assert step_on(plan, sites.east.cluster).status == StepStatus.FAILED
    assert sites.west.ready(acme_chat) == 1


def test_alert_resolved_by_compliant_plan(sites, acme_chat, eu_only):
    forced = apply_plan([(acme_chat, sites.east.cluster, 2)])
    execute_plan(forced.pk)
    assert open_lock_alerts(acme_chat).count() == 1

    compliant = apply_plan([(acme_chat, sites.west.cluster, 2)])
    execute_until_done(compliant)

    assert open_lock_alerts(acme_chat).count() == 0
    assert Alert.objects.filter(kind="lock_violation").count() == 1


def test_effective_locks_join_levels(fleet, acme, acme_chat, globex_search):
    customer = PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu", "us"], reason="contract")
    own = PlacementLock.objects.create(deployment=acme_chat, allowed_jurisdictions=["eu"], reason="GDPR")

    locks = effective_locks([acme_chat.pk, globex_search.pk])

    assert [lock.source for lock in locks[acme_chat.pk]] == [
        f"lock {customer.pk} on customer acme",
        f"lock {own.pk} on deployment acme/chat",
    ]
    assert locks[globex_search.pk] == ()
    east, west = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    rejected = rejected_placements([(acme_chat.pk, east, 1), (acme_chat.pk, west, 1), (acme_chat.pk, east, 0)])
    assert set(rejected) == {(acme_chat.pk, east.pk)}
    assert f"lock {own.pk}" in rejected[acme_chat.pk, east.pk]


def test_platform_lock_binds_every_deployment(sites, acme_chat, globex_search):
    platform = PlacementLock.objects.create(allowed_jurisdictions=["eu"], reason="EU-only platform")
    plan = apply_plan([(acme_chat, sites.east.cluster, 1), (acme_chat, sites.west.cluster, 1)])

    execute_until_done(plan)

    assert f"lock {platform.pk} on the platform" in step_on(plan, sites.east.cluster).last_error
    assert sites.east.observed(acme_chat) is None
    assert sites.west.ready(acme_chat) == 1
    assert [lock.source for lock in effective_locks([globex_search.pk])[globex_search.pk]] == [
        f"lock {platform.pk} on the platform"
    ]
