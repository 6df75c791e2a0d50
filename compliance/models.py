"""Placement locks that the scheduler never breaks, and the append-only audit trail."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from fleet.models import Provider, Region
from placements.models import Customer, Deployment


class PlacementLock(models.Model):
    """A rule on where a customer's or one deployment's replicas may run, with its reason.

    Every non-empty part restricts: a cluster is allowed only when it passes all of them. A lock on
    a customer applies to each of its deployments, together with the deployment's own lock.
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
                condition=(Q(customer__isnull=False) & Q(deployment__isnull=True))
                | (Q(customer__isnull=True) & Q(deployment__isnull=False)),
                name="lock_one_subject",
                violation_error_message="A lock applies to exactly one customer or one deployment.",
            ),
            models.CheckConstraint(
                condition=~Q(reason=""),
                name="lock_reason_required",
                violation_error_message="A lock needs a reason.",
            ),
        ]

    def __str__(self) -> str:
        subject = self.deployment if self.deployment_id else self.customer
        return f"lock on {subject}"


class AuditEvent(models.Model):
    """One decision or change, written by the service that made it, in the same transaction."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=128, help_text="User name or system component, kept if the user goes.")
    action = models.CharField(max_length=64, help_text="What happened, for example 'plan.applied'.")
    subject_type = models.CharField(max_length=64)
    subject_id = models.CharField(max_length=64)
    reason = models.TextField(blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Staff read the trail of one object, newest first.
        indexes = [models.Index(fields=["subject_type", "subject_id", "-created_at"], name="audit_subject_idx")]

    def __str__(self) -> str:
        subject = f"{self.subject_type}:{self.subject_id}"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {subject}"
