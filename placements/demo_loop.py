"""The demo's workload planes: one emulated Kubernetes cluster per fleet cluster, and the loop.

Demo-only: it imports the emulator, which MCM's product code never does. Each emulated cluster
gets nodes of up to 8 GPUs per SKU, as many GPUs as the cluster's allocatable capacity, and is
registered with its URL and a bearer token like a real cluster. The loop then runs MCM's own
services against them, in this process: collect telemetry, execute the applied plan, reconcile
until every cluster runs what the plan decided.
"""

import logging
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import OperationalError, close_old_connections

from emulator import EmulatedCluster
from fleet.clusters import register_cluster
from fleet.models import Cluster, ClusterCapacity
from fleet.skus import gpu_product_for_sku
from fleet.telemetry import collect_many
from placements.execution import execute_plan
from placements.models import Assignment, PlacementPlan
from placements.observation import executable_clusters, observe_clusters, open_adapters
from placements.reconcile import reconcile

logger = logging.getLogger(__name__)

GPUS_PER_NODE = 8


def node_specs(cluster: Cluster) -> list[tuple[str, str, int]]:
    nodes = []
    for capacity in ClusterCapacity.objects.filter(cluster=cluster).select_related("sku"):
        label = gpu_product_for_sku(capacity.sku.name)
        if label is None:
            logger.warning("no GPU product label for SKU %s; cluster %s emulated without it", capacity.sku, cluster)
            continue
        remaining, index = capacity.allocatable_gpus, 0
        while remaining > 0:
            gpus = min(GPUS_PER_NODE, remaining)
            nodes.append((f"{capacity.sku.name.lower()}-{index}", label, gpus))
            remaining -= gpus
            index += 1
    return nodes


def start_emulated_fleet(*, ready_delay_s: float) -> list[EmulatedCluster]:
    """Start and register one emulated cluster per fleet cluster."""
    emulated = []
    try:
        for cluster in Cluster.objects.order_by("name"):
            token = secrets.token_urlsafe(24)
            started = EmulatedCluster(cluster.name, node_specs(cluster), ready_delay_s=ready_delay_s, token=token)
            emulated.append(started.start())
            register_cluster(actor="demo", cluster=cluster, api_endpoint=started.url, credentials={"token": token})
    except Exception:
        stop_emulated_fleet(emulated)
        raise
    return emulated


def stop_emulated_fleet(emulated: list[EmulatedCluster]) -> None:
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda cluster: cluster.stop(), emulated))


def collect_all() -> int:
    """Collect telemetry from every registered cluster, concurrently; return the number read successfully."""
    snapshots = collect_many(executable_clusters().values_list("pk", flat=True))
    return sum(1 for snapshot in snapshots if snapshot.ok)


@dataclass
class Convergence:
    deployments: int = 0
    converged: int = 0
    seconds: float = 0.0
    rounds: int = 0
    by_provider: dict[str, list[int]] = field(default_factory=dict)  # provider -> [desired, ready]

    @property
    def done(self) -> bool:
        return self.deployments == self.converged


def measure(plan: PlacementPlan) -> Convergence:
    """Compare the plan's replicas with the ready replicas every cluster reports now."""
    desired: dict[tuple[int, int], int] = defaultdict(int)
    providers: dict[int, str] = {}
    for row in Assignment.objects.filter(plan=plan).select_related("cluster__region__provider"):
        desired[row.deployment_id, row.cluster_id] += row.replicas
        providers[row.cluster_id] = row.cluster.region.provider.name
    with open_adapters() as adapters:
        observations = observe_clusters(executable_clusters(), adapters)
    result = Convergence()
    converged: dict[int, bool] = {}
    by_provider: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (deployment_id, cluster_id), replicas in desired.items():
        observation = observations.get(cluster_id)
        current = observation.deployments.get(deployment_id) if observation and observation.error is None else None
        ready = current.ready_replicas if current else 0
        converged[deployment_id] = converged.get(deployment_id, True) and ready == replicas
        by_provider[providers[cluster_id]][0] += replicas
        by_provider[providers[cluster_id]][1] += ready
    result.deployments = len(converged)
    result.converged = sum(converged.values())
    result.by_provider = dict(sorted(by_provider.items()))
    return result


def run_loop(plan: PlacementPlan, *, timeout_s: float, progress: Callable[[str], None]) -> Convergence:
    """Execute ``plan`` and reconcile until observed equals desired everywhere, or ``timeout_s``."""
    started = time.monotonic()
    read_ok = collect_all()
    progress(f"  telemetry: {read_ok} clusters read")
    report = execute_plan(plan.pk)
    progress(f"  execution pass: {report.as_dict()}")
    rounds = 0
    while True:
        rounds += 1
        state = measure(plan)
        state.rounds = rounds
        state.seconds = time.monotonic() - started
        progress(f"  round {rounds}: {state.converged}/{state.deployments} deployments ready, {state.seconds:.1f} s")
        if state.done or state.seconds > timeout_s:
            return state
        time.sleep(1.0)
        reconcile()


def run_loop_on_celery(plan: PlacementPlan, *, timeout_s: float, progress: Callable[[str], None]) -> Convergence:
    """Run the loop on a real Celery worker and beat, started here and stopped at the end.

    Beat drives telemetry and reconciliation from the database schedules; the demo enqueues the
    plan's execution and watches the clusters until they converge.
    """
    # Imported here: the in-process loop needs neither a broker nor the task module.
    from django.core.management import call_command

    from placements.tasks import execute_plan as execute_plan_task

    call_command("setup_schedules", telemetry_every=10, reconcile_every=5, plan_every=300, verbosity=0)
    processes = [
        start_process(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "mcm_site",
                "worker",
                "--loglevel=WARNING",
                "--concurrency=2",
                "--hostname=mcm-demo@%h",
            ]
        ),
        start_process(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "mcm_site",
                "beat",
                "--loglevel=WARNING",
                "--schedule",
                str(Path(tempfile.gettempdir()) / "mcm-demo-beat"),
            ]
        ),
    ]
    progress(f"  worker pid {processes[0].pid}, beat pid {processes[1].pid}")
    started = time.monotonic()
    try:
        execute_plan_task.delay(plan.pk)
        rounds = 0
        while True:
            rounds += 1
            time.sleep(2.0)
            state = measure(plan)
            state.rounds = rounds
            state.seconds = time.monotonic() - started
            progress(f"  {state.converged}/{state.deployments} deployments ready, {state.seconds:.1f} s")
            if state.done or state.seconds > timeout_s:
                return state
    finally:
        for process in processes:
            stop_process(process)


def start_process(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True)


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("process %s did not stop within %s s after SIGTERM; killing it", process.pid, timeout_s)
        process.kill()
        process.wait()


class BackgroundLoop:
    """MCM's control loop on a thread, for the embedded demo while it serves the admin.

    Embedded mode has no Celery worker or beat, so without it an operator's drain or outage would
    get one execution pass and stop. Each tick reads every cluster, judges health, lets overdue
    failovers proceed, re-plans when health or the autoscaler requests it, and runs an execution
    pass and a reconcile. A failed tick is logged and the next one runs.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcm-demo-loop", daemon=True)

    def start(self) -> "BackgroundLoop":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                tick()
            except OperationalError as error:
                # SQLite lets one transaction write at a time; an admin action can hold it past the wait.
                logger.warning("control loop tick skipped: %s; the next tick runs in %s s", error, self.interval_s)
            except Exception:
                logger.exception("control loop tick failed; the next tick runs in %s s", self.interval_s)
            finally:
                close_old_connections()


def tick() -> None:
    """Run one round of MCM's control loop in this process: telemetry, health, failover, autoscaling, execution."""
    # Imported here: the failover stack is needed only while serving.
    from fleet.health import evaluate_health
    from placements.autoscaling import autoscale_pass
    from placements.failover import expire_requests
    from placements.models import PlanTrigger
    from placements.planning import run_plan
    from placements.services import current_plan
    from tasks.runs import recorded_run

    # Each step is recorded as a task run under its Celery task's name, so the admin's task runs and
    # background health pages show the in-process loop as they show the worker.
    with recorded_run("collect_telemetry") as set_summary:
        snapshots = collect_many(list(executable_clusters().values_list("pk", flat=True)))
        set_summary({"clusters": len(snapshots)})
    with recorded_run("evaluate_health") as set_summary:
        replan_needed = evaluate_health().replan_needed
        set_summary({"replan_needed": replan_needed})
    if replan_needed:
        run_plan(actor="control loop", trigger=PlanTrigger.HEALTH)
    # In embedded mode the re-plan this enqueues runs at once, in this call.
    with recorded_run("expire_failover_requests"):
        expire_requests()
    # Plans when any deployment's desired replicas changed; the execution pass below applies it.
    with recorded_run("autoscale"):
        autoscale_pass()
    plan = current_plan()
    if plan is not None:
        with recorded_run("execute_plan") as set_summary:
            execute_plan(plan.pk)
            set_summary({"plan": plan.version})
    with recorded_run("reconcile_clusters"):
        reconcile()
