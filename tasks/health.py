"""Background health: whether each Celery beat schedule runs on time, and how many tasks wait in the broker.

The schedules are django-celery-beat's ``PeriodicTask`` rows (created by ``manage.py setup_schedules``).
Beat stamps ``PeriodicTask.last_run_at`` when it sends a task, and each periodic task records a
``TaskRun`` when a worker runs it (``tasks.runs.recorded_run``), under the last part of its dotted
Celery name: ``placements.reconcile_clusters`` records ``reconcile_clusters``.
"""

import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import redis
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks.models import TaskRun

logger = logging.getLogger(__name__)

# A schedule is late when it has not run for longer than this many of its intervals.
LATE_AFTER_INTERVALS = 2
# Seconds to wait for the broker, so that a dead Redis slows a dashboard refresh by at most this much.
BROKER_TIMEOUT_S = 1.0
# At most one log line per this many seconds per process about an unreadable broker.
BROKER_WARNING_INTERVAL_S = 60.0


@dataclass(frozen=True)
class ScheduleStatus:
    """One beat schedule and whether it runs on time."""

    name: str
    task: str
    # Seconds between runs: exact for an interval schedule, the gap after the next run for a crontab,
    # None for a solar or clocked (one-off) schedule, which is never late.
    every_s: int | None
    enabled: bool
    # The later of beat's last send and the task's newest recorded run.
    last_run_at: datetime | None
    # Status of the task's newest TaskRun (running, succeeded or failed); None when it has none.
    last_status: str | None
    late: bool


def run_name(task: str) -> str:
    """Return the ``TaskRun.task_name`` that the Celery task ``task`` records."""
    return task.rsplit(".", 1)[-1]


def latest_runs(task_names: Iterable[str]) -> dict[str, TaskRun]:
    """Return the newest run of each task name that has one.

    One query per name, each served by the (task_name, -started_at) index, instead of a grouped
    query over every run ever recorded.
    """
    runs = {}
    for name in sorted(set(task_names)):
        run = TaskRun.objects.filter(task_name=name).order_by("-started_at").first()
        if run is not None:
            runs[name] = run
    return runs


def periodic_tasks() -> list[PeriodicTask]:
    return list(PeriodicTask.objects.select_related("interval", "crontab").order_by("name"))


def schedule_statuses(now: datetime | None = None) -> list[ScheduleStatus]:
    """Return every beat schedule, by name, with its last run and whether it is late at ``now``."""
    now = now or timezone.now()
    schedules = periodic_tasks()
    runs = latest_runs(run_name(schedule.task) for schedule in schedules)
    return [schedule_status(schedule, runs.get(run_name(schedule.task)), now) for schedule in schedules]


def schedule_status(schedule: PeriodicTask, run: TaskRun | None, now: datetime) -> ScheduleStatus:
    every_s = interval_seconds(schedule, now)
    run_times = [moment for moment in (schedule.last_run_at, run.started_at if run else None) if moment]
    last_run_at = max(run_times) if run_times else None
    return ScheduleStatus(
        name=schedule.name,
        task=schedule.task,
        every_s=every_s,
        enabled=schedule.enabled,
        last_run_at=last_run_at,
        last_status=run.status if run else None,
        late=is_late(schedule, every_s, last_run_at, now),
    )


def interval_seconds(schedule: PeriodicTask, now: datetime) -> int | None:
    """Return the seconds between runs of ``schedule``, rounded up; None for a solar or clocked one."""
    if schedule.interval is not None:
        period = timedelta(**{schedule.interval.period: schedule.interval.every})
        return max(1, math.ceil(period.total_seconds()))
    if schedule.crontab is not None:
        # A crontab's gaps can differ (for example weekdays only), so this is the gap after the next run.
        crontab = schedule.crontab.schedule
        first = next_crontab_run(crontab, now)
        return max(1, math.ceil((next_crontab_run(crontab, first) - first).total_seconds()))
    return None


def next_crontab_run(crontab, after: datetime) -> datetime:
    start, delta, _ = crontab.remaining_delta(after)
    return start + delta


def is_late(schedule: PeriodicTask, every_s: int | None, last_run_at: datetime | None, now: datetime) -> bool:
    """Return whether an enabled schedule has not run for longer than ``LATE_AFTER_INTERVALS`` intervals.

    The count starts at the latest of the last run, the schedule's last change and its start time,
    so a schedule created, enabled or changed less than two intervals ago is not late yet.
    NOTE: beat stamps ``last_run_at`` when it sends a task, so with beat up and every worker down a
    schedule is not late. The queue backlog and the last run's status show that case.
    """
    if not schedule.enabled or every_s is None:
        return False
    if schedule.start_time is not None and schedule.start_time > now:
        return False
    if schedule.expires is not None and schedule.expires <= now:
        return False  # beat no longer sends an expired schedule's task
    moments = [moment for moment in (last_run_at, schedule.date_changed, schedule.start_time) if moment]
    since = max(moments) if moments else None
    if since is None:
        return True
    return (now - since).total_seconds() > LATE_AFTER_INTERVALS * every_s


# The broker's queue backlog.


def queue_backlog() -> int | None:
    """Return the number of task messages waiting in the broker's queues.

    Returns None when tasks run in process (embedded mode) or when the broker cannot be read,
    which is logged at most once a minute per process. Only a Redis broker is read. The queues are
    the Celery app's (``task_queues``, or the default queue ``celery``), each with kombu's priority lists.
    """
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return None
    from mcm_site.celery import app  # imported here: the Celery app imports Django settings

    url = app.conf.broker_url or ""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        warn_broker_unreadable("queue backlog is read only from a Redis broker, and the broker scheme is %r", scheme)
        return None
    keys = queue_keys(app)
    client = redis.Redis.from_url(url, socket_connect_timeout=BROKER_TIMEOUT_S, socket_timeout=BROKER_TIMEOUT_S)
    try:
        with client.pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.llen(key)
            lengths = pipeline.execute()
    except redis.RedisError as error:
        warn_broker_unreadable("reading the queue backlog from the broker failed: %s", error)
        return None
    finally:
        client.close()
    return sum(lengths)


def queue_keys(app) -> list[str]:
    """Return the Redis list keys of the app's queues, as kombu's Redis transport names them."""
    options = app.conf.broker_transport_options or {}
    prefix = options.get("global_keyprefix", "")
    separator = options.get("sep", "\x06\x16")
    steps = options.get("priority_steps", [0, 3, 6, 9])
    keys = []
    for queue in sorted(app.amqp.queues):
        keys.extend(f"{prefix}{queue}{separator}{step}" if step else f"{prefix}{queue}" for step in steps)
    return keys


_warning_lock = threading.Lock()
_last_warning_at = -math.inf
_warnings_suppressed = 0


def warn_broker_unreadable(message: str, *args) -> None:
    """Log ``message`` with the count of warnings suppressed since the last, unless one was logged within a minute."""
    global _last_warning_at, _warnings_suppressed
    with _warning_lock:
        now = time.monotonic()
        if now - _last_warning_at < BROKER_WARNING_INTERVAL_S:
            _warnings_suppressed += 1
            return
        suppressed, _warnings_suppressed, _last_warning_at = _warnings_suppressed, 0, now
    logger.warning("%s (%s similar warnings suppressed since the last one)", message % args, suppressed)
