"""Pulled telemetry: read a cluster's GPU nodes and MCM's Deployments, and record what was seen.

The cluster is read outside any transaction. A short transaction then stores a snapshot, the
heartbeat and the capacity rows the scheduler plans with. A failed read stores a snapshot with
``ok=False`` and the error, and leaves the heartbeat alone, so the cluster's silence shows.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import Min

from fleet.clusters import cluster_adapter
from fleet.kube import ClusterError, NodeGpus, ObservedDeployment
from fleet.models import Cluster, ClusterCapacity, GpuSku, TelemetrySnapshot, TelemetrySource
from fleet.skus import sku_for_gpu_product

logger = logging.getLogger(__name__)


@dataclass
class GpuSummary:
    """GPUs by SKU on a cluster's ready nodes, and the product labels that map to no SKU."""

    by_sku: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_products: list[str] = field(default_factory=list)


def collect_cluster(cluster_id: int) -> TelemetrySnapshot:
    """Read one cluster through its adapter and record a snapshot; never raises ``ClusterError``."""
    cluster = Cluster.objects.get(pk=cluster_id)
    try:
        nodes, deployments = read_cluster(cluster)
    except ClusterError as error:
        logger.warning("telemetry of cluster %s (id %s) failed: %s", cluster.name, cluster.pk, error)
        return TelemetrySnapshot.objects.create(
            cluster=cluster, source=TelemetrySource.PULL, ok=False, error=str(error)
        )

    gpus = summarise_gpus(nodes)
    with transaction.atomic():
        snapshot = TelemetrySnapshot.objects.create(
            cluster=cluster,
            source=TelemetrySource.PULL,
            ok=True,
            gpus_by_sku=gpus.by_sku,
            unknown_gpu_products=gpus.unknown_products,
            deployments=summarise_deployments(cluster, deployments),
        )
        Cluster.objects.filter(pk=cluster.pk).update(last_heartbeat_at=snapshot.taken_at)
        update_capacity(cluster, gpus)
    logger.info(
        "telemetry of cluster %s (id %s): GPUs %s, %s deployments",
        cluster.name,
        cluster.pk,
        {sku: counts["allocatable"] for sku, counts in gpus.by_sku.items()},
        len(snapshot.deployments),
    )
    return snapshot


def read_cluster(cluster: Cluster) -> tuple[list[NodeGpus], list[ObservedDeployment]]:
    adapter = cluster_adapter(cluster)
    try:
        return adapter.list_gpu_nodes(), adapter.list_managed_deployments()
    finally:
        adapter.close()


def summarise_gpus(nodes: list[NodeGpus]) -> GpuSummary:
    """Sum allocatable GPUs of ready nodes by SKU; nodes that are not ready add nothing."""
    summary = GpuSummary()
    allocatable: dict[str, int] = defaultdict(int)
    ready_nodes: dict[str, int] = defaultdict(int)
    for node in nodes:
        if not node.gpu_product or node.allocatable_gpus == 0:
            continue
        sku = sku_for_gpu_product(node.gpu_product)
        if sku is None:
            if node.gpu_product not in summary.unknown_products:
                summary.unknown_products.append(node.gpu_product)
            continue
        # A SKU whose nodes are all not ready still gets an entry, with 0 GPUs.
        allocatable[sku] += node.allocatable_gpus if node.ready else 0
        ready_nodes[sku] += 1 if node.ready else 0
    summary.by_sku = {sku: {"allocatable": allocatable[sku], "nodes": ready_nodes[sku]} for sku in sorted(allocatable)}
    return summary


def summarise_deployments(cluster: Cluster, deployments: list[ObservedDeployment]) -> dict[str, dict]:
    result = {}
    for deployment in deployments:
        if deployment.deployment_id is None:
            logger.warning(
                "cluster %s runs managed deployment %s without a deployment id", cluster.name, deployment.name
            )
            continue
        result[str(deployment.deployment_id)] = {
            "name": deployment.name,
            "replicas": deployment.replicas,
            "ready": deployment.ready_replicas,
        }
    return result


def update_capacity(cluster: Cluster, gpus: GpuSummary) -> None:
    """Set allocatable GPUs per SKU from the nodes; call it inside a transaction.

    A SKU that no node reports any more drops to 0 allocatable. Prices are kept. In-use GPUs
    (other workloads' GPUs) are kept too, capped at allocatable, because the adapter does not list
    other workloads' pods. A SKU new to the
    cluster gets the cheapest price that other clusters charge for it, or 0 when none does.
    """
    rows = {
        row.sku.name: row
        for row in ClusterCapacity.objects.select_for_update().filter(cluster=cluster).select_related("sku")
    }
    skus = {sku.name: sku for sku in GpuSku.objects.filter(name__in=list(gpus.by_sku))}
    for name, row in rows.items():
        allocatable = gpus.by_sku.get(name, {}).get("allocatable", 0)
        if row.allocatable_gpus == allocatable:
            continue
        row.allocatable_gpus = allocatable
        row.total_gpus = max(row.total_gpus, allocatable)
        # The database requires in-use GPUs to fit in the allocatable ones.
        row.in_use_gpus = min(row.in_use_gpus, allocatable)
        row.save(update_fields=["allocatable_gpus", "total_gpus", "in_use_gpus", "updated_at"])
        logger.info("cluster %s now has %s allocatable %s GPUs", cluster.name, allocatable, name)
    for name, counts in gpus.by_sku.items():
        if name in rows:
            continue
        sku = skus.get(name)
        if sku is None:
            logger.warning(
                "cluster %s reports %s GPUs, but SKU %s has no row; run ensure_skus", cluster.name, name, name
            )
            continue
        ClusterCapacity.objects.create(
            cluster=cluster,
            sku=sku,
            total_gpus=counts["allocatable"],
            allocatable_gpus=counts["allocatable"],
            hourly_price_per_gpu=price_elsewhere(cluster, sku),
        )
        logger.info("cluster %s has new capacity: %s x %s", cluster.name, counts["allocatable"], name)


def price_elsewhere(cluster: Cluster, sku: GpuSku) -> Decimal:
    cheapest = (
        ClusterCapacity.objects.filter(sku=sku)
        .exclude(cluster=cluster)
        .aggregate(price=Min("hourly_price_per_gpu"))["price"]
    )
    if cheapest is None:
        # NOTE: a price of 0 makes the scheduler prefer this capacity until an operator or a
        # catalog import sets the real price.
        logger.warning("no price known for %s on cluster %s; recorded 0 until one is set", sku.name, cluster.name)
        return Decimal("0")
    return cheapest
