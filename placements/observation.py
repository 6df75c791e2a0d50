"""Observation of the Deployments that clusters run now, and of whether replacements are ready.

One ``Adapters`` object serves a whole execution or reconciliation pass, so each cluster is read
once per pass and its connections are reused.

Clusters are called concurrently through ``run_per_cluster``: one job per cluster in a thread
pool, so each cluster's own calls stay sequential and rate-limited. The jobs get plain data and
must not touch the ORM. All database work stays on the calling thread, because a worker thread
would open its own connection, outside the caller's transaction, and nothing would close it.
"""

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet

from fleet.clusters import cluster_adapter
from fleet.kube import ClusterAdapter, ClusterError, ObservedDeployment
from fleet.models import Cluster
from placements.models import Deployment

logger = logging.getLogger(__name__)


@dataclass
class ClusterObservation:
    """MCM's Deployments that one cluster runs now, by deployment id, under their canonical names."""

    cluster: Cluster
    deployments: dict[int, ObservedDeployment] = field(default_factory=dict)
    # Managed Deployments of deleted MCM deployments, or with a name MCM did not give them.
    strays: list[ObservedDeployment] = field(default_factory=list)
    error: ClusterError | None = None


class Adapters:
    """One adapter per cluster for the length of a pass, so connections are reused.

    ``get`` runs on the calling thread only, because it reads the cluster's encrypted
    credentials from the model. An adapter wraps one ``kubernetes.client.ApiClient``, which the
    client (kubernetes 37.0.1) does not document as safe for concurrent use, so
    ``run_per_cluster`` hands each adapter to one worker thread at a time.
    """

    def __init__(self) -> None:
        self._adapters: dict[int, ClusterAdapter] = {}

    def get(self, cluster: Cluster) -> ClusterAdapter:
        if cluster.pk not in self._adapters:
            self._adapters[cluster.pk] = cluster_adapter(cluster)
        return self._adapters[cluster.pk]

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters.clear()


@contextmanager
def open_adapters() -> Iterator[Adapters]:
    adapters = Adapters()
    try:
        yield adapters
    finally:
        adapters.close()


def executable_clusters() -> QuerySet[Cluster]:
    """Clusters MCM drives through their API: those with a registered endpoint."""
    return Cluster.objects.exclude(api_endpoint="")


def kubernetes_name(deployment: Deployment) -> str:
    """Return the stable Kubernetes name of an MCM deployment: ``<customer>-<name>-<id>``.

    The id keeps names unique, because "a-b" + "c" and "a" + "b-c" would both give "a-b-c".
    The customer and deployment part is cut so that the whole fits a 63-character DNS label.
    """
    base = re.sub(r"[^a-z0-9-]+", "-", f"{deployment.customer.name}-{deployment.name}".lower()).strip("-")
    suffix = f"-{deployment.pk}"
    return base[: 63 - len(suffix)].rstrip("-") + suffix


def run_per_cluster[T](
    jobs: Iterable[tuple[Cluster, Callable[[ClusterAdapter], T]]], adapters: Adapters
) -> dict[int, T | ClusterError]:
    """Run each cluster's job with its adapter, clusters concurrently; return results by cluster id.

    At most ``MCM_EXECUTION_PARALLEL_CLUSTERS`` clusters run at once, one thread per cluster job,
    and a job makes its cluster's calls in order. Adapters are created here on the calling
    thread. A ``ClusterError`` from creating the adapter or from the job becomes that cluster's
    result. Any other exception is raised to the caller. Raises ``ValueError`` when a cluster
    has two jobs, because they would share its adapter between threads.
    """
    max_workers = settings.MCM_EXECUTION_PARALLEL_CLUSTERS
    if max_workers < 1:
        raise ImproperlyConfigured(f"MCM_EXECUTION_PARALLEL_CLUSTERS must be 1 or more, got {max_workers}")
    results: dict[int, T | ClusterError] = {}
    ready: list[tuple[int, ClusterAdapter, Callable[[ClusterAdapter], T]]] = []
    seen: set[int] = set()
    for cluster, job in jobs:
        if cluster.pk in seen:
            raise ValueError(f"cluster {cluster.name} (id {cluster.pk}) has two jobs; give each cluster one job")
        seen.add(cluster.pk)
        try:
            ready.append((cluster.pk, adapters.get(cluster), job))
        except ClusterError as error:
            results[cluster.pk] = error

    if max_workers == 1 or len(ready) <= 1:
        for cluster_id, adapter, job in ready:
            results[cluster_id] = run_job(job, adapter)
        return results
    with ThreadPoolExecutor(max_workers=min(max_workers, len(ready)), thread_name_prefix="mcm-cluster") as pool:
        futures = {cluster_id: pool.submit(run_job, job, adapter) for cluster_id, adapter, job in ready}
    # Leaving the block waited for every job, so a failed one cannot leave calls running.
    for cluster_id, future in futures.items():
        results[cluster_id] = future.result()
    return results


def run_job[T](job: Callable[[ClusterAdapter], T], adapter: ClusterAdapter) -> T | ClusterError:
    try:
        return job(adapter)
    except ClusterError as error:
        return error


def observe_clusters(clusters: Iterable[Cluster], adapters: Adapters) -> dict[int, ClusterObservation]:
    """Read MCM's Deployments on each cluster, concurrently; a failed read is kept as the observation's error."""
    by_id = {cluster.pk: cluster for cluster in clusters}
    listed = run_per_cluster(
        ((cluster, ClusterAdapter.list_managed_deployments) for cluster in by_id.values()), adapters
    )

    observations: dict[int, ClusterObservation] = {}
    found: dict[int, list[ObservedDeployment]] = {}
    for cluster_id, cluster in by_id.items():
        result = listed[cluster_id]
        if isinstance(result, ClusterError):
            logger.warning("reading deployments of cluster %s (id %s) failed: %s", cluster.name, cluster.pk, result)
            observations[cluster_id] = ClusterObservation(cluster, error=result)
        else:
            observations[cluster_id] = ClusterObservation(cluster)
            found[cluster_id] = result

    ids = {item.deployment_id for items in found.values() for item in items if item.deployment_id is not None}
    names = {deployment.pk: kubernetes_name(deployment) for deployment in deployments_by_id(ids).values()}
    for cluster_id, items in found.items():
        observation = observations[cluster_id]
        for item in items:
            if item.deployment_id is not None and names.get(item.deployment_id) == item.name:
                observation.deployments[item.deployment_id] = item
            else:
                observation.strays.append(item)
    return observations


def deployments_by_id(ids: Iterable[int]) -> dict[int, Deployment]:
    return {
        deployment.pk: deployment for deployment in Deployment.objects.filter(pk__in=ids).select_related("customer")
    }


def unready_deployments(targets: dict[int, dict[int, int]], observations: dict[int, ClusterObservation]) -> set[int]:
    """Return the deployments whose replacements are not ready yet.

    ``targets`` maps deployment id -> {cluster id: replicas} on clusters MCM executes on. A
    deployment is ready when every one of its target clusters reports at least that many ready
    replicas. A deployment with no targets has nothing to wait for.
    """
    unready = set()
    for deployment_id, clusters in targets.items():
        for cluster_id, replicas in clusters.items():
            if ready_on(observations.get(cluster_id), deployment_id) < replicas:
                unready.add(deployment_id)
                break
    return unready


def ready_on(observation: ClusterObservation | None, deployment_id: int) -> int:
    if observation is None or observation.error is not None:
        return 0
    current = observation.deployments.get(deployment_id)
    return current.ready_replicas if current else 0
