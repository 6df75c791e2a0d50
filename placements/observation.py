"""Observation of the Deployments that clusters run now, and of whether replacements are ready.

One ``Adapters`` object serves a whole execution or reconciliation pass, so each cluster is read
once per pass and its connections are reused.
"""

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    """One adapter per cluster for the length of a pass, so connections are reused."""

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


def observe_clusters(clusters: Iterable[Cluster], adapters: Adapters) -> dict[int, ClusterObservation]:
    """Read MCM's Deployments on each cluster; a failed read is kept as the observation's error."""
    listed: dict[int, list[ObservedDeployment]] = {}
    observations: dict[int, ClusterObservation] = {}
    for cluster in clusters:
        try:
            listed[cluster.pk] = adapters.get(cluster).list_managed_deployments()
        except ClusterError as error:
            logger.warning("reading deployments of cluster %s (id %s) failed: %s", cluster.name, cluster.pk, error)
            observations[cluster.pk] = ClusterObservation(cluster, error=error)
            continue
        observations[cluster.pk] = ClusterObservation(cluster)

    ids = {item.deployment_id for items in listed.values() for item in items if item.deployment_id is not None}
    names = {deployment.pk: kubernetes_name(deployment) for deployment in deployments_by_id(ids).values()}
    for cluster_id, items in listed.items():
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
