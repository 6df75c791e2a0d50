"""Failover driven by a real Celery worker process: health evaluation, re-plan and execution as tasks.

No beat runs: the test enqueues the periodic tasks by hand, in the order beat would run them.
The worker runs the follow-up tasks that the tasks enqueue themselves: the re-plan after a health
change and the execution of a plan. The worker serves a queue of its own and uses the test database
through ``DATABASE_URL``.
"""

import os
import signal
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.db import connection
from kombu import Exchange, Queue

from fleet.models import Cluster, ClusterHealth, TelemetrySnapshot
from fleet.tasks import evaluate_health
from mcm_site.celery import app
from placements.models import FailoverRequest, FailoverStatus, PlacementPlan, PlanTrigger
from placements.tasks import collect_telemetry
from tasks.models import TaskRun, TaskRunStatus
from tasks.tasks import plan_placements
from tests.e2e.conftest import ClusterSpec, deploy
from tests.placements.execution_factories import poll

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKER_DEADLINE_S = 30.0
STOP_TIMEOUT_S = 10.0

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


def database_url() -> str:
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    queue = f"mcm-e2e-{uuid.uuid4().hex[:12]}"
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with django_db_blocker.unblock():
        url = database_url()
    env = {**os.environ, "DATABASE_URL": url, **WORKER_SETTINGS}
    command = [
        str(Path(settings.BASE_DIR) / ".venv" / "bin" / "celery"),
        "-A",
        "mcm_site",
        "worker",
        "--pool=solo",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield SimpleNamespace(queue=queue, process=process, log_path=log_path)

    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # Queued messages (a pending poll of execute_plan) and the queue's bindings would otherwise
    # stay in Redis. Declaring the queue lets kombu find the bindings it deletes.
    with app.connection_for_write() as broker:
        bound = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(broker.default_channel)
        bound.declare()
        bound.delete()


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
