"""Deployment checks of fleet settings, run by ``manage.py check --deploy``."""

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_credentials_keys(app_configs, **kwargs):
    """Warn when no key encrypts cluster credentials, and reject a key Fernet cannot use."""
    keys = settings.MCM_CREDENTIALS_KEYS
    if not keys:
        return [
            Warning(
                "MCM_CREDENTIALS_KEYS is missing: no cluster credential can be stored or read.",
                hint="Set it to one or more Fernet keys, newest first, comma-separated (docs/production.md).",
                id="fleet.W001",
            )
        ]
    problems = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            problems.append(
                Error(
                    f"MCM_CREDENTIALS_KEYS: key {position} of {len(keys)} is not a Fernet key "
                    "(32 bytes, URL-safe base64).",
                    hint="Make one with: python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'",
                    id="fleet.E001",
                )
            )
    return problems
