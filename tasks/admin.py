"""Admin for background work: task runs, the beat schedules with their last outcome, and background health."""

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from tasks.health import latest_runs, periodic_tasks, queue_backlog, run_name, schedule_status
from tasks.models import TaskRun


class ReadOnlyRunAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def runs_url(task: str) -> str:
    """Return the admin list of the runs that the Celery task ``task`` recorded."""
    return reverse("admin:tasks_taskrun_changelist") + "?" + urlencode({"task_name": run_name(task)})


def first_line(text: str, limit: int = 120) -> str:
    return text.splitlines()[0][:limit] if text else ""


@admin.register(TaskRun)
class TaskRunAdmin(ReadOnlyRunAdmin):
    """Task runs are written by the tasks themselves, so staff may only read them or delete old ones."""

    list_display = ["task_name", "status", "started_at", "finished_at", "duration", "short_error"]
    list_filter = ["status", "task_name"]
    search_fields = ["task_name", "task_id", "error"]
    date_hierarchy = "started_at"
    fields = ["task_name", "task_id", "status", "started_at", "finished_at", "summary", "error"]

    @admin.display(description="duration")
    def duration(self, run):
        if run.finished_at is None:
            return "-"
        return run.finished_at - run.started_at

    @admin.display(description="error")
    def short_error(self, run):
        return first_line(run.error)

    def get_urls(self):
        health = self.admin_site.admin_view(self.health_view)
        return [path("health/", health, name="tasks_taskrun_health"), *super().get_urls()]

    def health_view(self, request):
        """Show each beat schedule with its last run and lateness, and the broker's queue backlog."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        schedules = periodic_tasks()
        runs = latest_runs(run_name(schedule.task) for schedule in schedules)
        may_open_schedules = request.user.has_perm("django_celery_beat.view_periodictask")
        rows = []
        for schedule in schedules:
            run = runs.get(run_name(schedule.task))
            rows.append(
                {
                    "status": schedule_status(schedule, run, now),
                    "run": run,
                    "error": first_line(run.error, limit=300) if run else "",
                    "runs_url": runs_url(schedule.task),
                    "change_url": (
                        reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk])
                        if may_open_schedules
                        else ""
                    ),
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Background health",
            "opts": self.model._meta,
            "rows": rows,
            "late": [row["status"].name for row in rows if row["status"].late],
            "backlog": queue_backlog(),
            "embedded": settings.MCM_EMBEDDED,
            "changelist_url": reverse("admin:tasks_taskrun_changelist"),
        }
        return TemplateResponse(request, "admin/tasks/taskrun/health.html", context)


# This admin replaces the one django-celery-beat registers for the schedules. It adds each task's last
# run, and it hides the actions (enable, disable, toggle, run) from users who may only view schedules.
admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class ScheduleAdmin(PeriodicTaskAdmin):
    """Beat schedules: operators with the change permission edit intervals or disable a schedule here."""

    list_display = (*PeriodicTaskAdmin.list_display, "last_outcome")
    CHANGING_ACTIONS = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks")

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not self.has_change_permission(request):
            for name in self.CHANGING_ACTIONS:
                actions.pop(name, None)
        return actions

    @admin.display(description="last run")
    def last_outcome(self, schedule):
        # One indexed query per row; a beat schedule list has a handful of rows.
        run = latest_runs([run_name(schedule.task)]).get(run_name(schedule.task))
        if run is None:
            return "-"
        started = f"{run.started_at:%Y-%m-%d %H:%M:%S}"
        return format_html('<a href="{}">{} at {}</a>', runs_url(schedule.task), run.status, started)
