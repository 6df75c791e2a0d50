"""Writes to the audit trail; called by every service that makes a decision or a change."""

import re
from typing import Any

from django.db import models

from compliance.models import AuditEvent

REDACTED = "[redacted]"

# Keys whose values are secrets, compared after lower-casing and turning '-' into '_'.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "api_key",
        "apikey",
        "private_key",
        "client_key",
        "client_key_data",
        "kubeconfig",
        "credentials_encrypted",
        "authorization",
        "cookie",
        "session_key",
    }
)
SECRET_KEY_SUFFIXES = ("_token", "_secret", "_password", "_private_key", "_api_key")

# Values that are secrets whatever their key: PEM private keys, Fernet ciphertexts and HTTP credentials.
SECRET_VALUE = re.compile(r"PRIVATE KEY-----|^gAAAAA[\w-]{50,}=*$|^(Bearer|Token|Basic) \S{8,}")


def is_secret_key(key: Any) -> bool:
    """Return whether a mapping key names a secret, such as ``token``, ``kubeconfig`` or ``db_password``."""
    name = str(key).lower().replace("-", "_")
    return name in SECRET_KEYS or name.endswith(SECRET_KEY_SUFFIXES)


def redact_secrets(value: Any) -> Any:
    """Return ``value`` with every secret replaced by ``"[redacted]"``, for the before and after of an event.

    A value under a secret key is redacted whole, unless it is ``None``, empty or a boolean, which tell
    only whether a secret is set. Strings that look like a secret are redacted under any key.
    """
    if isinstance(value, dict):
        return {key: redact_value_of(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_secrets(item) for item in value]
    if isinstance(value, str) and SECRET_VALUE.search(value):
        return REDACTED
    return value


def redact_value_of(key: Any, value: Any) -> Any:
    if is_secret_key(key) and value not in (None, "", {}, []) and not isinstance(value, bool):
        return REDACTED
    return redact_secrets(value)


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
    ``subject`` is a model instance or a ``(type, id)`` pair. Secrets in ``before`` and ``after``
    are replaced by ``"[redacted]"`` (see ``redact_secrets``) before the event is stored.
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
        actor_label=label[:128],
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        reason=reason,
        before=redact_secrets(before),
        after=redact_secrets(after),
    )
