"""The execution loop's tasks run by a real Celery worker process against emulated clusters.

The worker serves a queue of its own, so it takes no other test's or engineer's messages, and it
uses the test database through ``DATABASE_URL``.
"""

from types import SimpleNamespace

import pytest

from fleet.models import TelemetrySnapshot
from placements.models import ExecutionStep, StepStatus
from placements.tasks import collect_telemetry, execute_plan, reconcile_clusters
from tasks.models import TaskRun, TaskRunStatus
from tests.celery_worker import database_url, running_worker
from tests.placements.execution_factories import H100_LABEL, apply_plan, poll, start_site

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKER_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        url = database_url()
    with running_worker(
        prefix="mcm-test",
        log_dir=tmp_path_factory.mktemp("worker"),
        database=url,
        env={"MCM_CLUSTER_CALLS_PER_SECOND": "1000", "MCM_EXECUTION_POLL_S": "0.2"},
    ) as started:
        yield started


@pytest.fixture
def sites(fleet):
    nodes = [("h100-a", H100_LABEL, 8), ("h100-b", H100_LABEL, 8)]
    east = start_site(fleet.clusters["aws-use1-a"], nodes)
    west = start_site(fleet.clusters["aws-euw1-a"], nodes)
    yield SimpleNamespace(east=east, west=west)
    east.emulated.stop()
    west.emulated.stop()


def worker_log(worker) -> str:
    return worker.log_path.read_text()


def succeeded_runs(task_name: str) -> int:
    return TaskRun.objects.filter(task_name=task_name, status=TaskRunStatus.SUCCEEDED).count()


def test_worker_collects_telemetry_of_every_cluster(worker, sites):
    collect_telemetry.apply_async(queue=worker.queue)

    collected = poll(lambda: TelemetrySnapshot.objects.filter(ok=True).count() == 2, WORKER_DEADLINE_S)

    assert collected, worker_log(worker)
    assert succeeded_runs("collect_telemetry") == 1
    assert succeeded_runs("collect_cluster_telemetry") == 2
    sites.east.cluster.refresh_from_db()
    assert sites.east.cluster.last_heartbeat_at is not None


def test_worker_executes_and_reconciles_plan(worker, sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])

    execute_plan.apply_async((plan.pk,), queue=worker.queue)
    executed = poll(
        lambda: ExecutionStep.objects.filter(plan=plan, status=StepStatus.EXECUTED).count() == 2, WORKER_DEADLINE_S
    )
    sites.east.run_directly(acme_chat, 1)
    reconcile_clusters.apply_async(queue=worker.queue)
    reconciled = poll(lambda: succeeded_runs("reconcile_clusters") == 1, WORKER_DEADLINE_S)

    assert executed, worker_log(worker)
    assert reconciled, worker_log(worker)
    assert sites.east.replicas(acme_chat) == 2
    assert sites.west.ready(acme_chat) == 1
    assert succeeded_runs("execute_plan") >= 2
