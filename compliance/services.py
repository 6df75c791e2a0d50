"""Writes to the audit trail; called by every service that makes a decision or a change."""

from typing import Any

from django.db import models

from compliance.models import AuditEvent


def record_event(
    *,
    actor,
    action: str,
    subject: models.Model | tuple[str, Any],
    reason: str = "",
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """Append one audit event; call it inside the transaction of the change it records.

    ``actor`` is a user or, for the system itself, a component name such as ``"scheduler"``.
    ``subject`` is a model instance or a ``(type, id)`` pair.
    """
    if isinstance(subject, models.Model):
        subject_type, subject_id = subject._meta.label_lower, str(subject.pk)
    else:
        subject_type, subject_id = subject[0], str(subject[1])
    if isinstance(actor, str) or actor is None:
        user, label = None, actor or "system"
    else:
        user, label = actor, actor.get_username()
    return AuditEvent.objects.create(
        actor=user,
        actor_label=label,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        reason=reason,
        before=before,
        after=after,
    )
