"""Admin for background task runs: what ran, how long it took, and why it failed."""

from django.contrib import admin

from tasks.models import TaskRun


class ReadOnlyRunAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


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
        return run.error.splitlines()[0][:120] if run.error else ""
