"""Placement locks that the scheduler never breaks, and the append-only audit trail."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from fleet.models import Provider, Region
from placements.models import Customer, Deployment


class LockLevel(models.TextChoices):
    """Lock level, from the widest to the narrowest. A lower level can only narrow a higher one."""

    PLATFORM = "platform", "platform"
    CUSTOMER = "customer", "customer"
    DEPLOYMENT = "deployment", "deployment"


LEVEL_ORDER = (LockLevel.PLATFORM, LockLevel.CUSTOMER, LockLevel.DEPLOYMENT)


class PlacementLockQuerySet(models.QuerySet):
    def visible_to(self, user) -> "PlacementLockQuerySet":
        """Limit to what ``user`` may read: staff read every lock, customers the locks of their customers."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(Q(customer__members=user) | Q(deployment__customer__members=user)).distinct()


class PlacementLock(models.Model):
    """A rule on where replicas may run, with its reason: for the whole platform, a customer or one deployment.

    Every non-empty part restricts: a cluster is allowed only when it passes all of them. A lock
    without a subject applies to every deployment, a lock on a customer to each of its deployments,
    and a deployment's own lock to that deployment; the effective lock is their intersection
    (``compliance.lock_services.effective_lock``). Changes go through ``compliance.lock_services``,
    which rejects a lower lock that would allow what a higher one forbids.
    """

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, null=True, blank=True, related_name="locks")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, null=True, blank=True, related_name="locks")
    allowed_regions = models.ManyToManyField(Region, blank=True, related_name="+")
    allowed_jurisdictions = models.JSONField(
        default=list, blank=True, help_text="Jurisdiction codes, for example ['eu']; empty allows any."
    )
    allowed_providers = models.ManyToManyField(Provider, blank=True, related_name="+")
    excluded_providers = models.ManyToManyField(Provider, blank=True, related_name="+")
    required_capabilities = models.JSONField(
        default=list, blank=True, help_text="Capabilities every chosen cluster must have."
    )
    reason = models.TextField(help_text="Why the lock exists, for example the contract clause or regulation.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(customer__isnull=True) | Q(deployment__isnull=True),
                name="lock_at_most_one_subject",
                violation_error_message="A lock applies to the platform, one customer or one deployment, not both.",
            ),
            models.CheckConstraint(
                condition=~Q(reason=""),
                name="lock_reason_required",
                violation_error_message="A lock needs a reason.",
            ),
        ]

    objects = PlacementLockQuerySet.as_manager()

    def __str__(self) -> str:
        return f"lock {self.pk} on {self.subject_label}"

    @property
    def level(self) -> str:
        if self.deployment_id:
            return LockLevel.DEPLOYMENT
        if self.customer_id:
            return LockLevel.CUSTOMER
        return LockLevel.PLATFORM

    @property
    def subject_label(self) -> str:
        """The lock's subject in words: "the platform", "customer acme" or "deployment acme/chat"."""
        if self.deployment_id:
            return f"deployment {self.deployment}"
        if self.customer_id:
            return f"customer {self.customer}"
        return "the platform"


class LockChange(models.Model):
    """One change of a placement lock: who made it, why, and the lock before and after.

    Written by ``compliance.lock_services`` in the transaction of the change, next to the audit event.
    ``lock`` becomes null when the lock is deleted; ``lock_pk`` keeps its id.
    """

    lock = models.ForeignKey(PlacementLock, on_delete=models.SET_NULL, null=True, blank=True, related_name="changes")
    lock_pk = models.PositiveIntegerField(help_text="Id of the lock, kept after the lock is deleted.")
    action = models.CharField(max_length=16, help_text="created, updated or deleted.")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=128)
    reason = models.TextField()
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(reason=""),
                name="lock_change_reason_required",
                violation_error_message="A lock change needs a reason.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.changed_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} lock {self.lock_pk}"


class AuditTrailImmutableError(Exception):
    """Raised on any attempt to change or delete a recorded audit event."""


IMMUTABLE_MESSAGE = "Audit events are append-only: {operation} is not allowed. Record a new event instead."


class AuditEventQuerySet(models.QuerySet):
    """Queries over the trail; bulk updates and deletes raise ``AuditTrailImmutableError``."""

    def visible_to(self, user) -> "AuditEventQuerySet":
        """Limit to what ``user`` may read: staff read the whole trail, everyone else reads nothing."""
        # TODO: give an auditor role read access without staff status once staff roles exist.
        if not (user.is_authenticated and user.is_staff):
            return self.none()
        return self

    def update(self, **kwargs):
        raise AuditTrailImmutableError(IMMUTABLE_MESSAGE.format(operation="QuerySet.update()"))

    def bulk_update(self, objs, fields, batch_size=None):
        raise AuditTrailImmutableError(IMMUTABLE_MESSAGE.format(operation="QuerySet.bulk_update()"))

    def delete(self):
        raise AuditTrailImmutableError(IMMUTABLE_MESSAGE.format(operation="QuerySet.delete()"))

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


class AuditEvent(models.Model):
    """One decision or change, written by the service that made it, in the same transaction.

    Rows are append-only. The model raises ``AuditTrailImmutableError`` on a save of an existing
    row, a delete, and a queryset update or delete. On PostgreSQL a trigger also rejects ``UPDATE``
    and ``DELETE`` statements on the table, so raw SQL cannot rewrite the trail either.
    Subjects are stored as a type and an id, not as foreign keys, so the trail outlives its subjects.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # PROTECT: deleting a user would have to rewrite their events, so users who acted are deactivated instead.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=128, help_text="User name or system component, kept if the user goes.")
    action = models.CharField(max_length=64, help_text="What happened, for example 'plan.applied'.")
    subject_type = models.CharField(max_length=64)
    subject_id = models.CharField(max_length=64)
    reason = models.TextField(blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # Related-object lookups and deletion collection use the base manager, so it is the guarded one too.
        base_manager_name = "objects"
        # Staff read the trail of one object, newest first.
        indexes = [models.Index(fields=["subject_type", "subject_id", "-created_at"], name="audit_subject_idx")]

    def __str__(self) -> str:
        subject = f"{self.subject_type}:{self.subject_id}"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {subject}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditTrailImmutableError(IMMUTABLE_MESSAGE.format(operation=f"saving audit event {self.pk} again"))
        super().save(*args, **kwargs)

    save.alters_data = True  # type: ignore[attr-defined]

    def delete(self, *args, **kwargs):
        raise AuditTrailImmutableError(IMMUTABLE_MESSAGE.format(operation=f"deleting audit event {self.pk}"))

    delete.alters_data = True  # type: ignore[attr-defined]
