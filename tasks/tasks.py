"""Celery tasks: thin wrappers that record their run and call services."""

from functools import partial

from celery import shared_task
from django.db import transaction

from placements.models import PlanTrigger
from placements.planning import run_plan
from placements.tasks import current_queue, enqueue_execution
from tasks.runs import recorded_run


@shared_task(name="tasks.plan_placements", acks_late=True)
def plan_placements(dry_run: bool = False, trigger: str = PlanTrigger.SCHEDULE) -> int:
    """Plan every deployment and apply the plan (unless ``dry_run``); returns the plan version.

    ``trigger`` records why the plan was made, one of ``PlanTrigger``: "schedule" for the beat
    schedule, "health" after a cluster went down or recovered, and so on. Raises ``ValueError``
    for any other value, before anything is recorded. Safe to run twice: the scheduler lock
    serialises runs, and a second run plans from the state the first one left.
    """
    if trigger not in PlanTrigger.values:
        raise ValueError(f"trigger must be one of {', '.join(PlanTrigger.values)}, got {trigger!r}")
    task_id = plan_placements.request.id or ""
    with recorded_run("plan_placements", task_id) as set_summary:
        plan = run_plan(actor="scheduler task", trigger=trigger, dry_run=dry_run)
        set_summary({"plan_version": plan.version, "solver": plan.solver, "trigger": trigger, **plan.summary})
    if not dry_run:
        transaction.on_commit(partial(enqueue_execution, plan.pk, current_queue(plan_placements)))
    return plan.version
