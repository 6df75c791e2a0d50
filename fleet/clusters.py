"""Registration of a cluster's Kubernetes API, and the adapter that every caller reaches it through.

Credentials are validated, encrypted before they are stored, and never logged or audited: the
audit event records only what kind of credentials were given.
"""

import logging
import threading
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from compliance.services import record_event
from fleet.credentials import decrypt_credentials, encrypt_credentials, validate_credentials
from fleet.kube import CallRateLimiter, ClusterAdapter, ClusterError, Credentials
from fleet.models import Cluster

logger = logging.getLogger(__name__)

_rate_limiters: dict[str, CallRateLimiter] = {}
_rate_limiters_lock = threading.Lock()


def register_cluster(*, actor, cluster: Cluster, api_endpoint: str, credentials: dict) -> Cluster:
    """Store a cluster's API endpoint and encrypted credentials, and audit the change without secrets.

    Raises ``ValidationError`` naming the invalid field; nothing is written then.
    """
    try:
        URLValidator(schemes=["http", "https"])(api_endpoint)
        _port = urlsplit(api_endpoint).port  # raises ValueError for a port outside 0-65535
    except (ValidationError, ValueError):
        raise ValidationError({"api_endpoint": f"must be an http or https URL, got {api_endpoint!r}"}) from None
    validated = validate_credentials(credentials)
    encrypted = encrypt_credentials(validated)

    with transaction.atomic():
        locked = Cluster.objects.select_for_update().get(pk=cluster.pk)
        before = {"api_endpoint": locked.api_endpoint, "has_credentials": bool(locked.credentials_encrypted)}
        locked.api_endpoint = api_endpoint
        locked.credentials_encrypted = encrypted
        locked.save(update_fields=["api_endpoint", "credentials_encrypted"])
        record_event(
            actor=actor,
            action="cluster.registered",
            subject=locked,
            before=before,
            after={"api_endpoint": api_endpoint, "credentials": describe_credentials(validated)},
        )
    logger.info("registered API endpoint %s for cluster %s (id %s)", api_endpoint, locked.name, locked.pk)
    return locked


def describe_credentials(credentials: Credentials) -> dict:
    """Return what kind of credentials these are, with no secret in it, for audit events."""
    return {
        "kind": "kubeconfig" if credentials.kubeconfig is not None else "token",
        "ca_cert": bool(credentials.ca_cert_pem),
        "insecure_skip_tls_verify": credentials.insecure_skip_tls_verify,
    }


def cluster_adapter(cluster: Cluster) -> ClusterAdapter:
    """Build the adapter for a registered cluster, with the API time-out and call rate from settings.

    Raises a non-retryable ``ClusterError`` when the cluster has no endpoint or credentials, or
    when the stored credentials cannot be decrypted, because trying again cannot help.
    """
    if not cluster.api_endpoint or not cluster.credentials_encrypted:
        raise ClusterError(
            cluster.name, "connect", "no API endpoint or credentials registered; call register_cluster", retryable=False
        )
    try:
        credentials = decrypt_credentials(cluster.credentials_encrypted)
    except ImproperlyConfigured as error:
        raise ClusterError(cluster.name, "connect", str(error), retryable=False) from None
    return ClusterAdapter(
        cluster.name,
        cluster.api_endpoint,
        credentials,
        timeout_s=settings.MCM_CLUSTER_API_TIMEOUT_S,
        rate_limiter=rate_limiter_for(cluster.name),
    )


def rate_limiter_for(cluster_name: str) -> CallRateLimiter:
    """Return this process's call rate limiter for one cluster, created at the configured rate.

    NOTE: the limit applies per worker process, so N processes together may send N times the rate.
    A shared limiter (for example in Redis) would remove this once measurements ask for it.
    """
    rate = settings.MCM_CLUSTER_CALLS_PER_SECOND
    with _rate_limiters_lock:
        limiter = _rate_limiters.get(cluster_name)
        if limiter is None or abs(limiter.interval_s - 1.0 / rate) > 1e-9:
            limiter = _rate_limiters[cluster_name] = CallRateLimiter(rate)
        return limiter
