"""Failover driven by a real Celery worker process: health evaluation, re-plan and execution as tasks.

No beat runs: the test enqueues the periodic tasks by hand, in the order beat would run them.
The worker runs the follow-up tasks that the tasks enqueue themselves: the re-plan after a health
change and the execution of a plan. The worker serves a queue of its own and uses the test database
through ``DATABASE_URL``.
"""

import pytest

from fleet.models import Cluster, ClusterHealth, TelemetrySnapshot
from fleet.tasks import evaluate_health
from placements.models import FailoverRequest, FailoverStatus, PlacementPlan, PlanTrigger
from placements.tasks import collect_telemetry
from tasks.models import TaskRun, TaskRunStatus
from tasks.tasks import plan_placements
from tests.celery_worker import database_url, running_worker
from tests.e2e.conftest import ClusterSpec, deploy
from tests.placements.execution_factories import poll

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKER_DEADLINE_S = 30.0

# Settings of the worker process, which reads them from its environment. Heartbeat-age limits are
# long, so that only failed reads decide health however long the worker takes between tasks.
WORKER_SETTINGS = {
    "MCM_CLUSTER_CALLS_PER_SECOND": "1000",
    "MCM_CLUSTER_API_TIMEOUT_S": "1",
    "MCM_EXECUTION_POLL_S": "0.2",
    "MCM_SCHEDULER_TIME_LIMIT_S": "10",
    "MCM_HEARTBEAT_INTERVAL_S": "1",
    "MCM_HEALTH_SUSPECT_AFTER_FAILURES": "1",
    "MCM_HEALTH_DOWN_AFTER_FAILURES": "2",
    "MCM_HEALTH_SUSPECT_AFTER_S": "60",
    "MCM_HEALTH_DOWN_AFTER_S": "120",
    "MCM_HEALTH_MONITOR_GAP_S": "600",
}

FLEET = (
    ClusterSpec("aws-use1-a", "aws", "us-east-1", "us", 39.0, -77.5, {"H100": 16}, "2.00"),
    ClusterSpec("gcp-usc1-a", "gcp", "us-central1", "us", 41.3, -95.9, {"H100": 16}, "2.60"),
    ClusterSpec("azure-eus-a", "azure", "eastus", "us", 37.4, -79.0, {"H100": 16}, "2.90"),
)


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        url = database_url()
    with running_worker(
        prefix="mcm-e2e", log_dir=tmp_path_factory.mktemp("worker"), database=url, env=WORKER_SETTINGS
    ) as started:
        yield started


def succeeded(task_name: str) -> int:
    return TaskRun.objects.filter(task_name=task_name, status=TaskRunStatus.SUCCEEDED).count()


def collect_and_wait(worker, cluster_count: int) -> bool:
    """Enqueue one telemetry round and wait until the worker stored a snapshot of every cluster."""
    before = TelemetrySnapshot.objects.count()
    collect_telemetry.apply_async(queue=worker.queue)
    return poll(lambda: TelemetrySnapshot.objects.count() >= before + cluster_count, WORKER_DEADLINE_S)


def ready_replicas(sites, deployment) -> dict[str, int]:
    ready = {}
    for name, site in sites.items():
        if site.emulated.is_unreachable:
            continue
        count = site.ready(deployment)
        if count:
            ready[name] = count
    return ready


def test_worker_fails_over_down_cluster(worker, sites_factory, customers):
    sites = sites_factory(FLEET)
    chat = deploy(customers["acme"], "chat", replicas=3, region_preference=["aws/us-east-1"])
    log = worker.log_path.read_text

    assert collect_and_wait(worker, len(sites)), log()
    plan_placements.apply_async(queue=worker.queue)
    started = poll(lambda: sum(ready_replicas(sites, chat).values()) == 3, WORKER_DEADLINE_S)
    assert started, log()
    assert ready_replicas(sites, chat).get("aws-use1-a"), ready_replicas(sites, chat)

    sites["aws-use1-a"].emulated.set_unreachable(True)
    for _ in range(2):
        assert collect_and_wait(worker, len(sites)), log()
    evaluate_health.apply_async(queue=worker.queue)
    down = poll(lambda: Cluster.objects.get(name="aws-use1-a").health == ClusterHealth.DOWN, WORKER_DEADLINE_S)
    assert down, log()
    moved = poll(lambda: sum(ready_replicas(sites, chat).values()) == 3, WORKER_DEADLINE_S)

    assert moved, log()
    latest = PlacementPlan.objects.order_by("-version").first()
    assert latest.trigger == PlanTrigger.HEALTH
    assert not latest.assignments.filter(cluster__name="aws-use1-a").exists()
    assert "aws-use1-a" not in ready_replicas(sites, chat)
    assert FailoverRequest.objects.get(deployment=chat, kind="failover").status == FailoverStatus.APPROVED
    assert succeeded("evaluate_health") == 1
    assert succeeded("plan_placements") == 2
    assert succeeded("execute_plan") >= 2
