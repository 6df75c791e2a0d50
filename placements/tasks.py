"""Celery tasks of the execution loop: telemetry, plan execution, reconciliation and autoscaling.

Each task records its run as a ``TaskRun`` row and calls a service. Follow-up tasks go to the
queue their parent came from, so a worker that serves one queue receives the whole chain.
"""

import logging

from celery import shared_task
from django.conf import settings

from fleet import telemetry
from fleet.kube import ClusterError
from fleet.models import Cluster
from placements import autoscaling, execution, failover, reconcile, traffic
from tasks.runs import recorded_run

logger = logging.getLogger(__name__)


def current_queue(task) -> str | None:
    """Return the queue the running task was delivered from, or None when it runs in process."""
    delivery = task.request.delivery_info or {}
    return delivery.get("routing_key") or None


@shared_task(bind=True, name="placements.collect_telemetry", acks_late=True)
def collect_telemetry(self) -> int:
    """Enqueue one telemetry collection per cluster with an API endpoint; returns how many."""
    with recorded_run("collect_telemetry", self.request.id or "") as set_summary:
        cluster_ids = list(Cluster.objects.exclude(api_endpoint="").values_list("pk", flat=True))
        queue = current_queue(self)
        for cluster_id in cluster_ids:
            collect_cluster_telemetry.apply_async((cluster_id,), queue=queue)
        set_summary({"clusters": len(cluster_ids)})
    return len(cluster_ids)


# No retry: a failed read is recorded as a snapshot with ok=False, and the schedule reads the
# cluster again within one interval, which is the retry.
@shared_task(bind=True, name="placements.collect_cluster_telemetry", acks_late=True)
def collect_cluster_telemetry(self, cluster_id: int) -> bool:
    """Read one cluster and record its snapshot; returns whether the read succeeded."""
    with recorded_run("collect_cluster_telemetry", self.request.id or "") as set_summary:
        snapshot = telemetry.collect_cluster(cluster_id)
        set_summary({"cluster_id": cluster_id, "ok": snapshot.ok, "error": snapshot.error})
    return snapshot.ok


@shared_task(
    bind=True,
    name="placements.execute_plan",
    acks_late=True,
    autoretry_for=(ClusterError,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def execute_plan(self, plan_id: int) -> dict:
    """Run one execution pass of a plan; then retry with back-off, or poll again while replicas come up.

    Only retryable cluster errors are raised for Celery to retry: non-retryable ones have already
    failed their steps with an audit event. Retries stop by themselves, because a step fails for
    good after ``MCM_EXECUTION_MAX_ATTEMPTS``. Polling stops once every pending step is older
    than ``MCM_EXECUTION_TIMEOUT_S``, or waits for a lost cluster; the reconciler takes over from there.
    """
    # Where tasks run in process (embedded mode), a retry or a countdown would run at once, inside
    # this call, and recurse: there a call makes one pass and the control loop makes the next.
    in_process = bool(self.app.conf.task_always_eager)
    with recorded_run("execute_plan", self.request.id or "") as set_summary:
        report = execution.execute_plan(plan_id)
        set_summary(report.as_dict())
        if report.retryable_error is not None and not in_process:
            raise report.retryable_error
    if not report.done and report.within_timeout and not in_process:
        self.apply_async((plan_id,), countdown=settings.MCM_EXECUTION_POLL_S, queue=current_queue(self))
    return report.as_dict()


def enqueue_execution(plan_id: int, queue: str | None = None) -> None:
    """Enqueue the execution of an applied plan; called on commit of the plan."""
    logger.info("enqueueing execution of plan %s", plan_id)
    execute_plan.apply_async((plan_id,), queue=queue)


# No retry: each run reads every cluster afresh, and the schedule runs it again within one interval.
@shared_task(bind=True, name="placements.reconcile_clusters", acks_late=True)
def reconcile_clusters(self) -> dict:
    """Compare every cluster with the current plan and repair drift; returns the report."""
    with recorded_run("reconcile_clusters", self.request.id or "") as set_summary:
        report = reconcile.reconcile()
        set_summary(report.as_dict())
    return report.as_dict()


# No retry: the schedule runs it again within one interval.
@shared_task(bind=True, name="placements.expire_failover_requests", acks_late=True)
def expire_failover_requests(self) -> int:
    """Let failovers undecided past their emergency time-out proceed; returns how many did.

    ``placements.failover.expire_requests`` enqueues the re-plan on commit when any did.
    """
    with recorded_run("expire_failover_requests", self.request.id or "") as set_summary:
        expired = failover.expire_requests()
        set_summary({"timed_out": expired})
    return expired


# No retry: the schedule runs it again within one interval, and a failed pass changes nothing.
@shared_task(bind=True, name="placements.autoscale", acks_late=True)
def autoscale(self) -> int:
    """Run one autoscaler pass: decide every enabled policy, and plan and execute the changes; returns how many."""
    with recorded_run("autoscale", self.request.id or "") as set_summary:
        decisions = autoscaling.autoscale_pass()
        set_summary(
            {
                "changed": len(decisions),
                "plan_id": decisions[0].plan_id if decisions else None,
                "decisions": [[d.deployment_id, d.from_replicas, d.to_replicas] for d in decisions],
            }
        )
    return len(decisions)


# No retry: the schedule runs it again within one interval.
@shared_task(bind=True, name="placements.prune_traffic", acks_late=True)
def prune_traffic(self) -> int:
    """Delete traffic samples older than ``MCM_TRAFFIC_RETENTION_S``; returns how many."""
    with recorded_run("prune_traffic", self.request.id or "") as set_summary:
        deleted = traffic.prune_traffic()
        set_summary({"deleted": deleted})
    return deleted
