"""tasks.health: schedule lateness, last runs, and the broker's queue backlog."""

import inspect
import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, PeriodicTask

from mcm_site.celery import app
from placements.management.commands.setup_schedules import SCHEDULES
from tasks import health
from tasks.health import queue_backlog, run_name, schedule_statuses
from tasks.models import TaskRunStatus
from tests.tasks.conftest import make_run, make_schedule

pytestmark = pytest.mark.django_db


def status_of(name: str, now=None):
    return next(status for status in schedule_statuses(now) if status.name == name)


# Schedules.


def test_setup_schedules_listed_with_intervals():
    call_command("setup_schedules", stdout=StringIO())

    statuses = {status.name: status for status in schedule_statuses()}

    assert set(statuses) == {schedule.name for schedule in SCHEDULES}
    assert statuses["plan placements"].every_s == 300
    assert statuses["plan placements"].task == "tasks.plan_placements"
    assert statuses["reconcile clusters"].every_s == 15
    assert all(status.enabled for status in statuses.values())


def test_fresh_schedules_are_not_late():
    call_command("setup_schedules", stdout=StringIO())

    assert not any(status.late for status in schedule_statuses())


def test_periodic_tasks_record_runs():
    app.loader.import_default_modules()

    for schedule in SCHEDULES:
        task = app.tasks[schedule.task]
        source = inspect.getsource(task.run)
        assert f'recorded_run("{run_name(schedule.task)}"' in source, schedule.task


def test_never_run_schedule_is_late_after_two_intervals():
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=31)

    status = status_of("reconcile")

    assert status.late
    assert status.last_run_at is None
    assert status.last_status is None


def test_never_run_schedule_within_grace_is_not_late():
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=29)

    assert not status_of("reconcile").late


def test_recent_task_run_keeps_schedule_on_time():
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=3600)
    run = make_run("reconcile_clusters", TaskRunStatus.SUCCEEDED, ago_s=20)

    status = status_of("reconcile")

    assert not status.late
    assert status.last_run_at == run.started_at
    assert status.last_status == TaskRunStatus.SUCCEEDED


def test_old_task_run_makes_schedule_late():
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=3600)
    make_run("reconcile_clusters", TaskRunStatus.SUCCEEDED, ago_s=31)

    assert status_of("reconcile").late


def test_last_status_is_the_newest_run():
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=3600)
    make_run("reconcile_clusters", TaskRunStatus.SUCCEEDED, ago_s=10)
    make_run("reconcile_clusters", TaskRunStatus.FAILED, ago_s=5, error="ClusterError: timed out")

    assert status_of("reconcile").last_status == TaskRunStatus.FAILED


def test_newer_beat_send_counts_as_run():
    sent_at = timezone.now() - timedelta(seconds=5)
    make_schedule("cleanup", "celery.backend_cleanup", 15, changed_ago_s=3600)
    PeriodicTask.objects.filter(name="cleanup").update(last_run_at=sent_at)
    make_run("backend_cleanup", TaskRunStatus.SUCCEEDED, ago_s=600)

    status = status_of("cleanup")

    assert status.last_run_at == sent_at
    assert not status.late


def test_disabled_schedule_is_never_late():
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=3600, enabled=False)

    assert not status_of("reconcile").late


def test_schedule_starting_later_is_not_late():
    start = timezone.now() + timedelta(hours=1)
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=3600, start_time=start)

    assert not status_of("reconcile").late


def test_expired_schedule_is_not_late():
    expired = timezone.now() - timedelta(minutes=1)
    make_schedule("reconcile", "placements.reconcile_clusters", 15, changed_ago_s=3600, expires=expired)

    assert not status_of("reconcile").late


def test_interval_in_minutes_is_converted_to_seconds():
    schedule = make_schedule("prune", "placements.prune_traffic", 1)
    schedule.interval.period = "minutes"
    schedule.interval.every = 5
    schedule.interval.save()

    assert status_of("prune").every_s == 300


def test_daily_crontab_runs_every_day():
    crontab = CrontabSchedule.objects.create(minute="0", hour="4")
    PeriodicTask.objects.create(name="cleanup", task="celery.backend_cleanup", crontab=crontab)

    status = status_of("cleanup")

    assert status.every_s == 86400
    assert not status.late


def test_clocked_schedule_never_late():
    clocked = ClockedSchedule.objects.create(clocked_time=timezone.now() - timedelta(days=1))
    PeriodicTask.objects.create(name="once", task="tasks.plan_placements", clocked=clocked, one_off=True)
    PeriodicTask.objects.filter(name="once").update(date_changed=timezone.now() - timedelta(days=2))

    status = status_of("once")

    assert status.every_s is None
    assert not status.late


def test_late_is_judged_at_the_given_time():
    make_schedule("reconcile", "placements.reconcile_clusters", 15)

    assert not status_of("reconcile", now=timezone.now()).late
    assert status_of("reconcile", now=timezone.now() + timedelta(seconds=60)).late


# Queue backlog.


def test_queue_backlog_counts_messages_in_every_priority_list(broker):
    broker.rpush("celery", "message-1", "message-2")
    broker.rpush("celery\x06\x169", "urgent-message")

    assert queue_backlog() == 3


def test_queue_backlog_of_empty_queue_is_zero(broker):
    assert queue_backlog() == 0


def test_queue_backlog_none_in_process(settings, broker):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    broker.rpush("celery", "message-1")

    assert queue_backlog() is None


def test_unreadable_broker_logs_one_line(monkeypatch, caplog, quiet_broker_warnings):
    # Celery reads the broker URL from this variable first. Nothing listens on port 1 of the loopback
    # address, so the connection is refused at once.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")

    with caplog.at_level(logging.WARNING, logger="tasks.health"):
        first = queue_backlog()
        second = queue_backlog()

    assert first is None
    assert second is None
    warnings = [record for record in caplog.records if record.name == "tasks.health"]
    assert len(warnings) == 1
    assert "reading the queue backlog from the broker failed" in warnings[0].getMessage()


def test_broker_other_than_redis_is_not_read(monkeypatch, caplog, quiet_broker_warnings):
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest@127.0.0.1:1//")

    with caplog.at_level(logging.WARNING, logger="tasks.health"):
        assert queue_backlog() is None

    assert "only from a Redis broker" in caplog.text


def test_queue_keys_follow_kombu_priority_names():
    keys = health.queue_keys(app)

    assert keys == ["celery", "celery\x06\x163", "celery\x06\x166", "celery\x06\x169"]
