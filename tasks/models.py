"""Records of background work, so operators read outcomes in the admin instead of worker logs."""

from django.db import models


class TaskRunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class TaskRun(models.Model):
    """One run of a background task, with its timings, counts and error."""

    task_name = models.CharField(max_length=128)
    task_id = models.CharField(max_length=64, blank=True, help_text="Celery task id, empty when run in process.")
    status = models.CharField(max_length=16, choices=TaskRunStatus.choices, default=TaskRunStatus.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        # The admin lists the latest runs of one task.
        indexes = [models.Index(fields=["task_name", "-started_at"], name="taskrun_name_started_idx")]

    def __str__(self) -> str:
        return f"{self.task_name} {self.status} at {self.started_at:%Y-%m-%d %H:%M:%S}"
