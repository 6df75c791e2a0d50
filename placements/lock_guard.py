"""The executor's own check of placement locks, made right before it writes to a cluster.

The scheduler already keeps every placement inside the deployment's locks. The executor checks
again, independently, with the locks read at the time of the write. So neither a plan built before
a lock changed nor an assignment stored by other means puts a replica where a lock forbids it.
Both use ``placements.scheduler.locks.lock_violation``, so they read a lock the same way.

A deployment's effective lock is every lock that binds it: platform-wide locks (no customer and
no deployment), the locks of its customer and its own locks. A cluster is allowed only when it
passes all of them. Removing replicas is always allowed, so a step to 0 replicas is never rejected.
"""

from collections.abc import Iterable

from compliance.locks import locks_for_deployments
from fleet.models import Cluster
from placements.models import Deployment
from placements.scheduler.locks import lock_violation
from placements.scheduler.problem import ClusterInput, LockInput


def effective_locks(deployment_ids: Iterable[int]) -> dict[int, tuple[LockInput, ...]]:
    """Return every lock that binds each deployment (platform, customer, deployment), read now.

    A deployment that no lock binds maps to an empty tuple. Unknown ids are left out.
    """
    deployments = list(Deployment.objects.filter(pk__in=set(deployment_ids)).only("pk", "customer_id"))
    # by_customer includes the platform locks first, also for customers without a lock of their own.
    by_customer, by_deployment = locks_for_deployments(deployments)
    return {
        deployment.pk: (*by_customer.get(deployment.customer_id, ()), *by_deployment.get(deployment.pk, ()))
        for deployment in deployments
    }


def lock_cluster_input(cluster: Cluster) -> ClusterInput:
    """Return the parts of ``cluster`` that locks check. Its region and provider must be loaded."""
    region = cluster.region
    return ClusterInput(
        id=cluster.pk,
        name=cluster.name,
        provider=region.provider.name,
        region=f"{region.provider.name}/{region.code}",
        jurisdiction=region.jurisdiction,
        latitude=region.latitude,
        longitude=region.longitude,
        capabilities=frozenset(cluster.capabilities),
    )


def placement_violation(locks: Iterable[LockInput], cluster: ClusterInput, replicas: int) -> str | None:
    """Return why placing ``replicas`` on ``cluster`` breaks the first of ``locks`` it breaks, or None.

    Zero replicas never break a lock, because removing replicas from a forbidden cluster is what the lock requires.
    """
    if replicas <= 0:
        return None
    for lock in locks:
        violation = lock_violation(lock, cluster)
        if violation:
            return violation
    return None


def rejected_placements(placements: Iterable[tuple[int, Cluster, int]]) -> dict[tuple[int, int], str]:
    """Check ``(deployment id, cluster, replicas)`` placements against the effective locks read now.

    Returns the rejected ones as (deployment id, cluster id) -> violation, which names the lock and
    its reason. The regions and providers of the clusters must be loaded.
    """
    placements = [placement for placement in placements if placement[2] > 0]
    if not placements:
        return {}
    locks = effective_locks({deployment_id for deployment_id, _cluster, _replicas in placements})
    rejected: dict[tuple[int, int], str] = {}
    inputs: dict[int, ClusterInput] = {}
    for deployment_id, cluster, replicas in placements:
        if cluster.pk not in inputs:
            inputs[cluster.pk] = lock_cluster_input(cluster)
        violation = placement_violation(locks.get(deployment_id, ()), inputs[cluster.pk], replicas)
        if violation:
            rejected[(deployment_id, cluster.pk)] = violation
    return rejected
