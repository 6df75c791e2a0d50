"""Create or update the Celery beat schedules of the execution loop, kept in the database."""

from dataclasses import dataclass

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    option: str
    default_s: int | str | None  # None: half of MCM_HEARTBEAT_INTERVAL_S; a string names the setting


SCHEDULES = (
    Schedule("collect telemetry", "placements.collect_telemetry", "telemetry_every", 10),
    Schedule("reconcile clusters", "placements.reconcile_clusters", "reconcile_every", 15),
    Schedule("plan placements", "tasks.plan_placements", "plan_every", 300),
    # Applies pushed events left unapplied when their enqueue failed (for example, broker down).
    Schedule("apply pending events", "fleet.apply_pending_events", "events_every", 30),
    # Twice per heartbeat interval, so that a missed heartbeat is judged within half an interval.
    Schedule("evaluate health", "fleet.evaluate_health", "health_every", None),
    # Lets an undecided failover proceed soon after its emergency time-out.
    Schedule("expire failover requests", "placements.expire_failover_requests", "expire_every", 15),
    Schedule("autoscale", "placements.autoscale", "autoscale_every", "MCM_AUTOSCALE_INTERVAL_S"),
    Schedule("prune traffic", "placements.prune_traffic", "prune_traffic_every", 3600),
)


def default_every_s(schedule: Schedule) -> int:
    if schedule.default_s is None:
        return max(1, round(settings.MCM_HEARTBEAT_INTERVAL_S / 2))
    if isinstance(schedule.default_s, str):
        return max(1, round(getattr(settings, schedule.default_s)))
    return schedule.default_s


class Command(BaseCommand):
    help = (
        "Create or update the periodic tasks that collect telemetry, judge cluster health, reconcile clusters, "
        "time out undecided failovers, re-plan, autoscale and prune old traffic samples. "
        "Running it again changes only intervals that differ; an operator's 'enabled' choice is kept."
    )

    def add_arguments(self, parser):
        for schedule in SCHEDULES:
            default_s = default_every_s(schedule)
            parser.add_argument(
                f"--{schedule.option.replace('_', '-')}",
                dest=schedule.option,
                type=int,
                default=default_s,
                help=f"Seconds between runs of '{schedule.name}' (default {default_s}).",
            )

    def handle(self, *args, **options):
        for schedule in SCHEDULES:
            if options[schedule.option] < 1:
                raise CommandError(f"--{schedule.option.replace('_', '-')} must be at least 1 second")
        with transaction.atomic():
            for schedule in SCHEDULES:
                outcome = self.save_schedule(schedule, options[schedule.option])
                self.stdout.write(f"{schedule.name}: every {options[schedule.option]} s ({outcome})")

    def save_schedule(self, schedule: Schedule, every_s: int) -> str:
        interval, _ = IntervalSchedule.objects.get_or_create(every=every_s, period=IntervalSchedule.SECONDS)
        task = PeriodicTask.objects.filter(name=schedule.name).first()
        if task is None:
            PeriodicTask.objects.create(
                name=schedule.name, task=schedule.task, interval=interval, expire_seconds=every_s
            )
            return "created"
        if task.task == schedule.task and task.interval_id == interval.pk and task.expire_seconds == every_s:
            return "unchanged"
        task.task, task.interval, task.expire_seconds = schedule.task, interval, every_s
        # A periodic task has exactly one schedule, so any other kind is cleared.
        task.crontab = task.solar = task.clocked = None
        task.save()
        return "updated"
