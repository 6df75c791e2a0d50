"""Turns placement-lock rows into the scheduler's lock input."""

from collections import defaultdict

from compliance.models import PlacementLock
from placements.scheduler.problem import LockInput


def lock_input(lock: PlacementLock) -> LockInput:
    """Convert one lock; its many-to-many fields must be prefetched."""
    subject = f"deployment {lock.deployment}" if lock.deployment_id else f"customer {lock.customer}"
    regions = frozenset(f"{region.provider.name}/{region.code}" for region in lock.allowed_regions.all())
    allowed_providers = frozenset(provider.name for provider in lock.allowed_providers.all())
    return LockInput(
        source=f"lock {lock.pk} on {subject}",
        reason=lock.reason,
        allowed_regions=regions or None,
        allowed_jurisdictions=frozenset(lock.allowed_jurisdictions) or None,
        allowed_providers=allowed_providers or None,
        excluded_providers=frozenset(provider.name for provider in lock.excluded_providers.all()),
        required_capabilities=frozenset(lock.required_capabilities),
    )


def locks_by_subject() -> tuple[dict[int, list[LockInput]], dict[int, list[LockInput]]]:
    """Load every lock once: (customer id -> locks, deployment id -> locks)."""
    by_customer: dict[int, list[LockInput]] = defaultdict(list)
    by_deployment: dict[int, list[LockInput]] = defaultdict(list)
    locks = PlacementLock.objects.select_related("customer", "deployment__customer").prefetch_related(
        "allowed_regions__provider", "allowed_providers", "excluded_providers"
    )
    for lock in locks:
        if lock.deployment_id:
            by_deployment[lock.deployment_id].append(lock_input(lock))
        else:
            by_customer[lock.customer_id].append(lock_input(lock))
    return by_customer, by_deployment
