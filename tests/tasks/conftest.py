"""Fixtures for the background health tests: beat schedules, task runs and the broker's queue in Redis."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks import health
from tasks.models import TaskRun


def make_schedule(name: str, task: str, every_s: int, *, changed_ago_s: float = 0, **fields) -> PeriodicTask:
    """Create an interval schedule last changed ``changed_ago_s`` seconds ago."""
    interval, _ = IntervalSchedule.objects.get_or_create(every=every_s, period=IntervalSchedule.SECONDS)
    schedule = PeriodicTask.objects.create(name=name, task=task, interval=interval, **fields)
    # QuerySet.update skips auto_now, so this sets the last change in the past.
    PeriodicTask.objects.filter(pk=schedule.pk).update(date_changed=timezone.now() - timedelta(seconds=changed_ago_s))
    schedule.refresh_from_db()
    return schedule


def make_run(task_name: str, status: str, *, ago_s: float, error: str = "", summary: dict | None = None) -> TaskRun:
    run = TaskRun.objects.create(task_name=task_name, status=status, error=error, summary=summary or {})
    started_at = timezone.now() - timedelta(seconds=ago_s)
    TaskRun.objects.filter(pk=run.pk).update(started_at=started_at)
    run.refresh_from_db()
    return run


@pytest.fixture
def quiet_broker_warnings(monkeypatch):
    """Reset the once-a-minute limit on broker warnings, so that each test logs its first warning."""
    monkeypatch.setattr(health, "_last_warning_at", float("-inf"))
    monkeypatch.setattr(health, "_warnings_suppressed", 0)
