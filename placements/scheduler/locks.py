"""Placement locks: which clusters a lock rules out, and why, in words for operators."""

from .problem import ClusterInput, LockInput

# Violation kinds, in the order they are checked. A cluster that breaks several parts of one lock
# is reported under the first kind only.
REGION = "region"
JURISDICTION = "jurisdiction"
PROVIDER = "provider"
EXCLUDED_PROVIDER = "excluded_provider"
CAPABILITY = "capability"
VIOLATION_KINDS = (REGION, JURISDICTION, PROVIDER, EXCLUDED_PROVIDER, CAPABILITY)


def lock_violation_kind(lock: LockInput, cluster: ClusterInput) -> str | None:
    """Return the first kind of rule of ``lock`` that ``cluster`` breaks, or None when it complies."""
    if lock.allowed_regions and cluster.region not in lock.allowed_regions:
        return REGION
    if lock.allowed_jurisdictions and cluster.jurisdiction not in lock.allowed_jurisdictions:
        return JURISDICTION
    if lock.allowed_providers and cluster.provider not in lock.allowed_providers:
        return PROVIDER
    if cluster.provider in lock.excluded_providers:
        return EXCLUDED_PROVIDER
    if not lock.required_capabilities <= cluster.capabilities:
        return CAPABILITY
    return None


def describe_lock_rule(lock: LockInput, kind: str) -> str:
    """Return what the rule of ``kind`` in ``lock`` requires, for example "jurisdiction in EU"."""
    if kind == REGION:
        return "region in " + ", ".join(sorted(lock.allowed_regions or ()))
    if kind == JURISDICTION:
        return "jurisdiction in " + ", ".join(sorted(lock.allowed_jurisdictions or ()))
    if kind == PROVIDER:
        return "provider in " + ", ".join(sorted(lock.allowed_providers or ()))
    if kind == EXCLUDED_PROVIDER:
        return "a provider other than " + ", ".join(sorted(lock.excluded_providers))
    if kind == CAPABILITY:
        return "capabilities " + ", ".join(sorted(lock.required_capabilities))
    raise ValueError(f"unknown lock violation kind {kind!r}; expected one of {VIOLATION_KINDS}")


def lock_violation(lock: LockInput, cluster: ClusterInput) -> str | None:
    """Return why ``cluster`` breaks ``lock``, naming the lock's source and reason, or None."""
    kind = lock_violation_kind(lock, cluster)
    if kind is None:
        return None

    if kind == REGION:
        found = f"region {cluster.region} is not allowed"
    elif kind == JURISDICTION:
        found = f"jurisdiction {cluster.jurisdiction} is not allowed"
    elif kind == PROVIDER:
        found = f"provider {cluster.provider} is not allowed"
    elif kind == EXCLUDED_PROVIDER:
        found = f"provider {cluster.provider} is excluded"
    else:
        missing = ", ".join(sorted(lock.required_capabilities - cluster.capabilities))
        found = f"capability {missing} is missing"
    return f"{found} by the lock of {lock.source} ({describe_lock_rule(lock, kind)}; reason: {lock.reason})"
