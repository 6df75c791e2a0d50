"""Records each background task run as a ``TaskRun`` row."""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.utils import timezone

from tasks.models import TaskRun, TaskRunStatus

logger = logging.getLogger(__name__)


@contextmanager
def recorded_run(task_name: str, task_id: str = "") -> Iterator[Callable[[dict], None]]:
    """Record a run: yields a function that sets its summary; marks it failed if the body raises."""
    run = TaskRun.objects.create(task_name=task_name, task_id=task_id or "")
    logger.info("task %s run %s started", task_name, run.pk)

    def set_summary(summary: dict) -> None:
        run.summary = summary

    try:
        yield set_summary
    except Exception as error:
        run.status = TaskRunStatus.FAILED
        run.error = f"{type(error).__name__}: {error}"
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "error", "finished_at", "summary"])
        logger.exception("task %s run %s failed", task_name, run.pk)
        raise
    run.status = TaskRunStatus.SUCCEEDED
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at", "summary"])
    logger.info("task %s run %s succeeded: %s", task_name, run.pk, run.summary)
