"""Records of background work and of event ingest, so operators read outcomes in the admin and in metrics."""

import logging
import random

from django.db import DatabaseError, models, transaction
from django.db.models import F

logger = logging.getLogger(__name__)


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
        indexes = [
            # The admin lists the latest runs of one task, and background health reads each task's newest run.
            models.Index(fields=["task_name", "-started_at"], name="taskrun_name_started_idx"),
            # The metrics endpoint counts the runs of the last hour by task and status.
            models.Index(fields=["started_at"], name="taskrun_started_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.status} at {self.started_at:%Y-%m-%d %H:%M:%S}"


# Writers spread over this many rows, so that concurrent ingest requests seldom wait on one row lock.
EVENT_INGEST_SHARDS = 8


class EventIngestCount(models.Model):
    """Events that agents pushed, by outcome, summed over all shards since the table was created.

    The metrics endpoint reads the sums, because the event rows themselves do not keep rejected events.
    """

    shard = models.PositiveSmallIntegerField(unique=True)
    accepted = models.BigIntegerField(default=0)
    duplicates = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"shard {self.shard}: {self.accepted} accepted, {self.duplicates} duplicates, {self.rejected} rejected"


def count_ingested_events(*, accepted: int, duplicates: int, rejected: int) -> None:
    """Add one batch's outcome to a random shard, in its own statement.

    A database error is logged and not raised, because the batch's events are already stored and a
    failed request would make the agent send them again for a lost count.
    """
    if not (accepted or duplicates or rejected):
        return
    counts = {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}
    shard = random.randrange(EVENT_INGEST_SHARDS)
    rows = EventIngestCount.objects.filter(shard=shard)
    increments = {name: F(name) + value for name, value in counts.items()}
    try:
        # A savepoint, so that a failure here leaves a caller's transaction usable.
        with transaction.atomic():
            if rows.update(**increments) == 0:
                _, created = EventIngestCount.objects.get_or_create(shard=shard, defaults=counts)
                if not created:
                    rows.update(**increments)
    except DatabaseError:
        logger.exception(
            "counting ingested events failed for shard %s, counts %s; they are missing from metrics", shard, counts
        )
