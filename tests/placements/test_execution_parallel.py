"""Execution and reconciliation passes call clusters concurrently, from worker threads without the ORM.

A parallel pass records the same outcome as a pass that calls one cluster at a time.
"""

import threading
import time

import pytest
from django.db.backends.signals import connection_created

from compliance.models import AuditEvent
from placements.execution import execute_plan
from placements.models import ExecutionStep, PlacementPlan, StepStatus
from placements.reconcile import reconcile
from tests.placements.execution_factories import H100_LABEL, Site, apply_plan, poll, start_site

pytestmark = pytest.mark.django_db

SLOW_S = 0.3  # added by each emulated cluster to every API request


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 5


def start_slow_sites(fleet) -> list[Site]:
    nodes = [("h100-a", H100_LABEL, 8)]
    sites = [start_site(cluster, nodes) for cluster in fleet.clusters.values()]
    for site in sites:
        site.emulated.set_slow(SLOW_S)
    return sites


def stop_sites(sites: list[Site]) -> None:
    for site in sites:
        site.emulated.stop()


def timed_pass(plan: PlacementPlan) -> tuple[float, dict]:
    started = time.monotonic()
    report = execute_plan(plan.pk)
    return time.monotonic() - started, report.as_dict()


def finish_pass(plan: PlacementPlan) -> dict:
    """Run a second pass once the replicas are ready, so the steps become executed and audited."""
    time.sleep(0.3)  # the emulated clusters make a pod ready after 0.1 s
    return execute_plan(plan.pk).as_dict()


def outcome_of(plan: PlacementPlan, sites: list[Site], deployment) -> dict:
    """Return what the passes left behind: step rows, the steps' audit events and the clusters' state."""
    steps = ExecutionStep.objects.filter(plan=plan).select_related("cluster").order_by("cluster__name")
    step_ids = [str(step.pk) for step in steps]
    events = AuditEvent.objects.filter(action__startswith="execution_step.", subject_id__in=step_ids)
    return {
        "steps": [
            (step.cluster.name, step.status, step.attempts, step.desired_replicas, step.observed_replicas)
            for step in steps
        ],
        "events": sorted(events.values_list("action", flat=True)),
        "replicas": {site.cluster.name: site.replicas(deployment) for site in sites},
    }


def without_ids(report: dict) -> dict:
    return {key: value for key, value in report.items() if key not in {"plan_id", "plan_version"}}


def test_parallel_pass_faster_with_same_outcome(settings, fleet, acme_chat):
    settings.MCM_EXECUTION_PARALLEL_CLUSTERS = 1
    sites = start_slow_sites(fleet)
    try:
        sequential_plan = apply_plan([(acme_chat, site.cluster, 1) for site in sites])
        sequential_s, sequential_report = timed_pass(sequential_plan)
        sequential_finish = finish_pass(sequential_plan)
        sequential = outcome_of(sequential_plan, sites, acme_chat)
    finally:
        stop_sites(sites)

    # Fresh clusters, so the parallel pass starts from the same empty state.
    settings.MCM_EXECUTION_PARALLEL_CLUSTERS = 16
    sites = start_slow_sites(fleet)
    try:
        parallel_plan = apply_plan([(acme_chat, site.cluster, 1) for site in sites])
        parallel_s, parallel_report = timed_pass(parallel_plan)
        parallel_finish = finish_pass(parallel_plan)
        parallel = outcome_of(parallel_plan, sites, acme_chat)
    finally:
        stop_sites(sites)

    assert len(sites) == 4
    assert sequential_report["applied"] == 4
    assert sequential_finish["executed"] == 4
    assert without_ids(parallel_report) == without_ids(sequential_report)
    assert without_ids(parallel_finish) == without_ids(sequential_finish)
    assert parallel["steps"] == sequential["steps"]
    assert parallel["events"] == sequential["events"] == ["execution_step.executed"] * 4
    assert parallel["replicas"] == sequential["replicas"]
    # One read and two writes per cluster: about 3.6 s one cluster at a time, 0.9 s in parallel.
    assert sequential_s > 4 * 3 * SLOW_S
    assert parallel_s < 0.6 * sequential_s


def test_reconcile_repairs_clusters_in_parallel(settings, fleet, acme_chat):
    settings.MCM_EXECUTION_PARALLEL_CLUSTERS = 16
    sites = start_slow_sites(fleet)
    try:
        for site in sites:
            site.emulated.set_slow(0)
        plan = apply_plan([(acme_chat, site.cluster, 1) for site in sites])
        poll(lambda: execute_plan(plan.pk).done)
        for site in sites:
            site.run_directly(acme_chat, 2)
            site.emulated.set_slow(SLOW_S)

        started = time.monotonic()
        report = reconcile()
        elapsed_s = time.monotonic() - started

        replicas = {site.cluster.name: site.replicas(acme_chat) for site in sites}
    finally:
        stop_sites(sites)

    assert report.repaired == 4
    assert report.repairs_failed == 0
    assert set(ExecutionStep.objects.filter(plan=plan).values_list("status", flat=True)) == {StepStatus.EXECUTED}
    assert replicas == {site.cluster.name: 1 for site in sites}
    # One read and two writes per cluster take at least 3.6 s one cluster at a time.
    assert elapsed_s < 0.6 * 4 * 3 * SLOW_S


def test_worker_threads_open_no_database_connection(settings, fleet, acme_chat):
    settings.MCM_EXECUTION_PARALLEL_CLUSTERS = 16
    opened_on: list[str] = []

    def note_thread(sender, **kwargs):
        opened_on.append(threading.current_thread().name)

    sites = start_slow_sites(fleet)
    connection_created.connect(note_thread)
    try:
        plan = apply_plan([(acme_chat, site.cluster, 1) for site in sites])
        report = execute_plan(plan.pk)
        reconcile()
    finally:
        connection_created.disconnect(note_thread)
        stop_sites(sites)

    assert report.applied == 4
    assert [name for name in opened_on if name.startswith("mcm-cluster")] == []


def test_parallel_setting_below_one_rejected(settings, fleet, acme_chat):
    from django.core.exceptions import ImproperlyConfigured

    settings.MCM_EXECUTION_PARALLEL_CLUSTERS = 0
    site = start_site(fleet.clusters["aws-use1-a"], [("h100-a", H100_LABEL, 8)])
    try:
        plan = apply_plan([(acme_chat, site.cluster, 1)])
        with pytest.raises(ImproperlyConfigured, match="MCM_EXECUTION_PARALLEL_CLUSTERS"):
            execute_plan(plan.pk)
    finally:
        site.emulated.stop()
