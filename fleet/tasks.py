"""Celery tasks of the fleet app: thin wrappers over the services."""

import logging
from functools import partial

from celery import shared_task
from django.db import OperationalError, transaction

from fleet.events import apply_events
from fleet.health import evaluate_health as evaluate_cluster_health
from fleet.models import ClusterEvent
from tasks.runs import recorded_run

logger = logging.getLogger(__name__)


# No TaskRun row per call: ingest enqueues this once per batch and cluster, many times a minute,
# and ``apply_pending_events`` records the periodic sweep instead.
@shared_task(
    name="fleet.apply_cluster_events",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def apply_cluster_events(cluster_id: int) -> int:
    """Apply one cluster's stored events in sequence order; returns how many were applied.

    Safe to run twice or concurrently: ``apply_events`` claims each run by compare-and-set.
    """
    return apply_events(cluster_id)


@shared_task(name="fleet.apply_pending_events", acks_late=True)
def apply_pending_events() -> int:
    """Apply the stored events of every cluster that has unapplied ones; returns how many were applied.

    Catches up on clusters whose apply task was never enqueued, for example while the broker was down.
    """
    task_id = apply_pending_events.request.id or ""
    with recorded_run("apply_pending_events", task_id) as set_summary:
        cluster_ids = list(
            ClusterEvent.objects.filter(applied_at__isnull=True)
            .order_by("cluster_id")
            .values_list("cluster_id", flat=True)
            .distinct()
        )
        applied = sum(apply_events(cluster_id) for cluster_id in cluster_ids)
        set_summary({"clusters": len(cluster_ids), "events_applied": applied})
    return applied


# No retry: the schedule runs it again within half a heartbeat interval, and a run changes
# nothing a second run would change again.
@shared_task(name="fleet.evaluate_health", acks_late=True)
def evaluate_health() -> dict:
    """Judge every cluster's health; when placement must change, enqueue a re-plan on commit. Returns the report."""
    task_id = evaluate_health.request.id or ""
    with recorded_run("evaluate_health", task_id) as set_summary:
        report = evaluate_cluster_health()
        set_summary(report.as_dict())
    if report.replan_needed:
        delivery = evaluate_health.request.delivery_info or {}
        transaction.on_commit(partial(enqueue_health_replan, delivery.get("routing_key") or None))
    return report.as_dict()


def enqueue_health_replan(queue: str | None = None) -> None:
    """Enqueue a re-plan triggered by a health change, on the queue the evaluation came from."""
    from tasks.tasks import plan_placements  # imported here: the tasks app imports the fleet app

    logger.info("health changed placement: enqueueing a re-plan")
    plan_placements.apply_async(kwargs={"trigger": "health"}, queue=queue)
