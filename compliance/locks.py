"""Turns placement-lock rows into the scheduler's lock input, platform locks included."""

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Q

from compliance.models import PlacementLock
from placements.scheduler.problem import LockInput

RELATED = ("allowed_regions__provider", "allowed_providers", "excluded_providers")


def lock_input(lock: PlacementLock) -> LockInput:
    """Convert one lock; its many-to-many fields must be prefetched."""
    regions = frozenset(f"{region.provider.name}/{region.code}" for region in lock.allowed_regions.all())
    allowed_providers = frozenset(provider.name for provider in lock.allowed_providers.all())
    return LockInput(
        source=f"lock {lock.pk} on {lock.subject_label}",
        reason=lock.reason,
        allowed_regions=regions or None,
        allowed_jurisdictions=frozenset(lock.allowed_jurisdictions) or None,
        allowed_providers=allowed_providers or None,
        excluded_providers=frozenset(provider.name for provider in lock.excluded_providers.all()),
        required_capabilities=frozenset(lock.required_capabilities),
    )


class CustomerLocks(dict):
    """Customer id -> the locks that bind each deployment of that customer: platform locks, then its own.

    A customer without a lock of its own still gets the platform locks, through ``[]`` and ``get``.
    """

    def __init__(self, platform: list[LockInput]):
        super().__init__()
        self.platform = platform

    def __missing__(self, customer_id) -> list[LockInput]:
        return list(self.platform)

    def get(self, customer_id, default=None):
        if customer_id in self:
            return self[customer_id]
        return list(self.platform) if self.platform else default


def _split(locks: Iterable[PlacementLock]) -> tuple[CustomerLocks, dict[int, list[LockInput]]]:
    locks = list(locks)
    platform = [lock_input(lock) for lock in locks if lock.customer_id is None and lock.deployment_id is None]
    by_customer = CustomerLocks(platform)
    by_deployment: dict[int, list[LockInput]] = defaultdict(list)
    for lock in locks:
        if lock.deployment_id:
            by_deployment[lock.deployment_id].append(lock_input(lock))
        elif lock.customer_id:
            if lock.customer_id not in by_customer:
                by_customer[lock.customer_id] = list(platform)
            by_customer[lock.customer_id].append(lock_input(lock))
    return by_customer, by_deployment


def _rows():
    return (
        PlacementLock.objects.select_related("customer", "deployment__customer")
        .prefetch_related(*RELATED)
        .order_by("pk")
    )


def locks_by_subject() -> tuple[dict[int, list[LockInput]], dict[int, list[LockInput]]]:
    """Load every lock once: (customer id -> platform and customer locks, deployment id -> its own locks).

    ``by_customer.get(customer_id, [])`` includes the platform locks for every customer.
    """
    return _split(_rows())


def locks_for_deployments(deployments: Iterable) -> tuple[dict[int, list[LockInput]], dict[int, list[LockInput]]]:
    """Like ``locks_by_subject``, reading only the locks that bind these deployments."""
    deployments = list(deployments)
    rows = _rows().filter(
        Q(deployment_id__in=[deployment.pk for deployment in deployments])
        | Q(deployment__isnull=True, customer_id__in={deployment.customer_id for deployment in deployments})
        | Q(deployment__isnull=True, customer__isnull=True)
    )
    return _split(rows)
