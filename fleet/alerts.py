"""Alerts for staff: raised when a condition starts, resolved when it ends.

At most one alert of a kind is open per subject (a database constraint), so raising an alert
that is already open updates its message instead of adding a second row. Callers raise and
resolve alerts inside the transaction of the change that causes them.
"""

import logging
from typing import Any

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from fleet.models import Alert, AlertSeverity

logger = logging.getLogger(__name__)

# A model instance, or (type, id, label); resolve_alert also takes (type, id).
Subject = models.Model | tuple[Any, ...]


def raise_alert(kind: str, severity: str, subject: Subject, message: str) -> Alert:
    """Open an alert of ``kind`` on ``subject``, or update the message and severity of the open one.

    Raises ``ValueError`` naming the field for an empty kind or message, an unknown severity or a
    malformed subject; nothing is written then.
    """
    if not kind:
        raise ValueError("kind must be a non-empty string, for example 'cluster.down'")
    if severity not in AlertSeverity.values:
        raise ValueError(f"severity must be one of {', '.join(AlertSeverity.values)}, got {severity!r}")
    if not message:
        raise ValueError(f"message of alert {kind!r} must be a non-empty string")
    subject_type, subject_id, subject_label = describe_subject(subject)

    with transaction.atomic():
        alert = _open_alert(kind, subject_type, subject_id)
        if alert is None:
            try:
                # A savepoint, so that losing a race with a concurrent raise leaves the outer transaction usable.
                with transaction.atomic():
                    alert = Alert.objects.create(
                        kind=kind,
                        severity=severity,
                        subject_type=subject_type,
                        subject_id=subject_id,
                        subject_label=subject_label,
                        message=message,
                        raised_at=timezone.now(),
                    )
            except IntegrityError:
                alert = _open_alert(kind, subject_type, subject_id)
                if alert is None:
                    raise
            else:
                logger.warning("alert %s (%s) raised on %s: %s", kind, severity, subject_label, message)
                return alert

        if alert.message != message or alert.severity != severity or alert.subject_label != subject_label:
            alert.message, alert.severity, alert.subject_label = message, severity, subject_label
            alert.save(update_fields=["message", "severity", "subject_label"])
            logger.info("alert %s (%s) on %s still open, message now: %s", kind, severity, subject_label, message)
    return alert


def resolve_alert(kind: str, subject: Subject) -> bool:
    """Resolve the open alert of ``kind`` on ``subject``; return False when none was open."""
    subject_type, subject_id, subject_label = describe_subject(subject)
    resolved = Alert.objects.filter(
        kind=kind, subject_type=subject_type, subject_id=subject_id, resolved_at__isnull=True
    ).update(resolved_at=timezone.now())
    if resolved:
        logger.info("alert %s on %s resolved", kind, subject_label)
    return bool(resolved)


def describe_subject(subject: Subject) -> tuple[str, str, str]:
    """Return (type, id, label) of a subject, with the type named as in the audit trail."""
    if isinstance(subject, models.Model):
        return subject._meta.label_lower, str(subject.pk), str(subject)[:255]
    if isinstance(subject, tuple) and len(subject) in (2, 3) and subject[0] and subject[1] not in (None, ""):
        subject_type, subject_id = str(subject[0]), str(subject[1])
        label = str(subject[2]) if len(subject) == 3 else f"{subject_type} {subject_id}"
        return subject_type, subject_id, label[:255]
    raise ValueError(f"subject must be a model instance or a (type, id, label) tuple, got {subject!r:.80}")


def _open_alert(kind: str, subject_type: str, subject_id: str) -> Alert | None:
    """Return the open alert of ``kind`` on the subject, locked until the transaction ends."""
    alerts = Alert.objects.filter(kind=kind, subject_type=subject_type, subject_id=subject_id, resolved_at__isnull=True)
    return alerts.select_for_update().first()
