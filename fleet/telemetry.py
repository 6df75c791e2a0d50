"""Pulled telemetry: read clusters' GPU nodes, MCM's Deployments and their traffic, and record what was seen.

Clusters are read outside any transaction; ``collect_many`` reads many at once in a thread pool
whose threads make only the Kubernetes calls. Then, on the calling thread, short transactions
store a snapshot per cluster, the reads' outcomes for health (``fleet.health.record_reads``,
which also moves the heartbeats) and the capacity rows the scheduler plans with. A failed read
stores a snapshot with ``ok=False`` and the error and counts as a failed read, and the heartbeat
stays where it was, so the cluster's silence shows. Traffic read from the custom metrics API is
stored as traffic samples (``placements.traffic``); a cluster that does not serve it stores none.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import Min

from fleet import health
from fleet.clusters import cluster_adapter
from fleet.kube import ClusterAdapter, ClusterError, NodeGpus, ObservedDeployment, ObservedTraffic
from fleet.models import Cluster, ClusterCapacity, GpuSku, TelemetrySnapshot, TelemetrySource
from fleet.skus import sku_for_gpu_product
from placements.routing import ready_changes, schedule_route_refresh

logger = logging.getLogger(__name__)

# Clusters stored per transaction by ``collect_many``: a few statements per chunk instead of
# about six per cluster, while each transaction locks its cluster rows for a short time only.
STORE_CHUNK = 100


@dataclass
class GpuSummary:
    """GPUs by SKU on a cluster's ready nodes, and the product labels that map to no SKU."""

    by_sku: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_products: list[str] = field(default_factory=list)


@dataclass
class ClusterRead:
    """The result of one read of a cluster: its GPU nodes, MCM's Deployments and their traffic, or the error.

    A failed traffic read leaves ``traffic`` empty and does not fail the read.
    """

    nodes: list[NodeGpus] = field(default_factory=list)
    deployments: list[ObservedDeployment] = field(default_factory=list)
    error: ClusterError | None = None
    traffic: list[ObservedTraffic] = field(default_factory=list)


def collect_cluster(cluster_id: int) -> TelemetrySnapshot:
    """Read one cluster through its adapter and record a snapshot; never raises ``ClusterError``.

    Raises ``Cluster.DoesNotExist`` for an unknown id.
    """
    cluster = Cluster.objects.get(pk=cluster_id)
    try:
        adapter = cluster_adapter(cluster)
    except ClusterError as error:
        return store_reads([(cluster, ClusterRead(error=error))])[0]
    return store_reads([(cluster, read_with(adapter))])[0]


def collect_many(cluster_ids: Iterable[int], max_workers: int = 16) -> list[TelemetrySnapshot]:
    """Read many clusters concurrently and record a snapshot of each, in the order of ``cluster_ids``.

    Adapters are created here, because that reads the clusters' credentials from the database.
    At most ``max_workers`` threads make the Kubernetes calls, each for one cluster at a time,
    and they touch no model. Snapshots, capacity and health are stored here afterwards, one
    transaction per ``STORE_CHUNK`` clusters. Ids of clusters that do not exist are skipped with
    a warning.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be 1 or more, got {max_workers}")
    ids = list(dict.fromkeys(cluster_ids))
    clusters = Cluster.objects.in_bulk(ids)
    missing = [cluster_id for cluster_id in ids if cluster_id not in clusters]
    if missing:
        logger.warning("telemetry skipped for cluster ids %s: no such clusters", missing)
    started = time.perf_counter()

    reads: dict[int, ClusterRead] = {}
    adapters: dict[int, ClusterAdapter] = {}
    for cluster_id, cluster in clusters.items():
        try:
            adapters[cluster_id] = cluster_adapter(cluster)
        except ClusterError as error:
            reads[cluster_id] = ClusterRead(error=error)
    if adapters:
        with ThreadPoolExecutor(
            max_workers=min(max_workers, len(adapters)), thread_name_prefix="mcm-telemetry"
        ) as pool:
            futures = {cluster_id: pool.submit(read_with, adapter) for cluster_id, adapter in adapters.items()}
        # Leaving the block waited for every read.
        for cluster_id, future in futures.items():
            reads[cluster_id] = future.result()
    read_s = time.perf_counter() - started

    pairs = [(clusters[cluster_id], reads[cluster_id]) for cluster_id in ids if cluster_id in clusters]
    snapshots = []
    for start in range(0, len(pairs), STORE_CHUNK):
        snapshots += store_reads(pairs[start : start + STORE_CHUNK])
    logger.info(
        "telemetry of %s clusters collected (%s failed): read in %.2f s, stored in %.2f s",
        len(snapshots),
        sum(1 for snapshot in snapshots if not snapshot.ok),
        read_s,
        time.perf_counter() - started - read_s,
    )
    return snapshots


def read_with(adapter: ClusterAdapter) -> ClusterRead:
    """Read a cluster's GPU nodes, MCM's Deployments and their traffic, then close the adapter; touches no model.

    The traffic read is not part of the cluster's health: when it fails, the error is logged and
    the read keeps its nodes and Deployments.
    """
    try:
        read = ClusterRead(nodes=adapter.list_gpu_nodes(), deployments=adapter.list_managed_deployments())
        try:
            read.traffic = adapter.read_traffic(read.deployments)
        except ClusterError as error:
            logger.warning("traffic of cluster %s not read: %s", adapter.name, error)
        return read
    except ClusterError as error:
        return ClusterRead(error=error)
    finally:
        adapter.close()


def store_reads(pairs: list[tuple[Cluster, ClusterRead]]) -> list[TelemetrySnapshot]:
    """Record reads in one transaction: a snapshot each, the outcomes for health, and capacity of successful reads.

    A successful read's heartbeat is its snapshot's ``taken_at``. Returns the snapshots in the
    order of ``pairs``, which must name each cluster once.
    """
    summaries: dict[int, GpuSummary] = {}
    snapshots = []
    for cluster, read in pairs:
        if read.error is not None:
            logger.warning("telemetry of cluster %s (id %s) failed: %s", cluster.name, cluster.pk, read.error)
            snapshots.append(
                TelemetrySnapshot(cluster=cluster, source=TelemetrySource.PULL, ok=False, error=str(read.error))
            )
            continue
        gpus = summaries[cluster.pk] = summarise_gpus(read.nodes)
        snapshots.append(
            TelemetrySnapshot(
                cluster=cluster,
                source=TelemetrySource.PULL,
                ok=True,
                gpus_by_sku=gpus.by_sku,
                unknown_gpu_products=gpus.unknown_products,
                deployments=summarise_deployments(cluster, read.deployments),
            )
        )

    with transaction.atomic():
        # Lock the cluster rows in id order, the order event ingest and the health evaluator use too,
        # so that these writers wait for each other instead of deadlocking.
        list(Cluster.objects.select_for_update().filter(pk__in=[c.pk for c, _ in pairs]).order_by("pk").values("pk"))
        schedule_route_refresh(ready_changes(snapshots), reason="ready replicas changed")
        TelemetrySnapshot.objects.bulk_create(snapshots)
        store_traffic(pairs, snapshots)
        health.record_reads(
            succeeded={snapshot.cluster_id: snapshot.taken_at for snapshot in snapshots if snapshot.ok},
            failed={snapshot.cluster_id: snapshot.taken_at for snapshot in snapshots if not snapshot.ok},
        )
        if summaries:
            rows: dict[int, dict[str, ClusterCapacity]] = defaultdict(dict)
            capacities = ClusterCapacity.objects.select_for_update(of=("self",)).filter(cluster_id__in=list(summaries))
            for row in capacities.select_related("sku").order_by("pk"):
                rows[row.cluster_id][row.sku.name] = row
            skus = {sku.name: sku for sku in GpuSku.objects.all()}
            for cluster, _read in pairs:
                if cluster.pk in summaries:
                    update_capacity(cluster, summaries[cluster.pk], rows=rows[cluster.pk], skus=skus)

    for snapshot in snapshots:
        if snapshot.ok:
            logger.info(
                "telemetry of cluster %s (id %s): GPUs %s, %s deployments",
                snapshot.cluster.name,
                snapshot.cluster_id,
                {sku: counts["allocatable"] for sku, counts in snapshot.gpus_by_sku.items()},
                len(snapshot.deployments),
            )
    return snapshots


def store_traffic(pairs: list[tuple[Cluster, ClusterRead]], snapshots: list[TelemetrySnapshot]) -> int:
    """Store the traffic of successful reads as pulled samples, observed at the snapshot's time; return how many.

    Traffic of Deployments without an MCM deployment id (not managed by MCM) is not stored.
    """
    from placements.models import TrafficSource  # placements imports fleet
    from placements.traffic import record_traffic

    rows = []
    for (cluster, read), snapshot in zip(pairs, snapshots, strict=True):
        if not snapshot.ok:
            continue
        unmanaged = sorted({traffic.name for traffic in read.traffic if traffic.deployment_id is None})
        if unmanaged:
            logger.info("cluster %s reports traffic of Deployments MCM does not manage: %s", cluster.name, unmanaged)
        rows += [
            {
                "deployment_id": traffic.deployment_id,
                "cluster_id": cluster.pk,
                "origin": traffic.origin,
                "requests_per_second": traffic.requests_per_second,
                "in_flight": traffic.in_flight,
                "observed_at": snapshot.taken_at,
            }
            for traffic in read.traffic
            if traffic.deployment_id is not None
        ]
    return record_traffic(rows, source=TrafficSource.PULL)


def summarise_gpus(nodes: list[NodeGpus]) -> GpuSummary:
    """Sum allocatable GPUs of ready nodes by SKU; nodes that are not ready add nothing."""
    summary = GpuSummary()
    allocatable: dict[str, int] = defaultdict(int)
    ready_nodes: dict[str, int] = defaultdict(int)
    largest: dict[str, int] = defaultdict(int)
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
        if node.ready:
            largest[sku] = max(largest[sku], node.allocatable_gpus)
    summary.by_sku = {
        sku: {"allocatable": allocatable[sku], "nodes": ready_nodes[sku], "largest_node": largest[sku]}
        for sku in sorted(allocatable)
    }
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


def update_capacity(
    cluster: Cluster,
    gpus: GpuSummary,
    *,
    rows: dict[str, ClusterCapacity] | None = None,
    skus: dict[str, GpuSku] | None = None,
) -> None:
    """Set allocatable GPUs per SKU from the nodes; call it inside a transaction.

    A SKU that no node reports any more drops to 0 allocatable. Prices are kept. In-use GPUs
    (other workloads' GPUs) are kept too, capped at allocatable, because the adapter does not list
    other workloads' pods. A SKU new to the
    cluster gets the cheapest price that other clusters charge for it, or 0 when none does.
    ``rows`` (the cluster's capacity rows by SKU name, locked) and ``skus`` (SKUs by name) are
    loaded here unless the caller loaded them for many clusters at once.
    """
    if rows is None:
        capacities = ClusterCapacity.objects.select_for_update(of=("self",)).filter(cluster=cluster)
        rows = {row.sku.name: row for row in capacities.select_related("sku")}
    if skus is None:
        skus = {sku.name: sku for sku in GpuSku.objects.filter(name__in=list(gpus.by_sku))}
    for name, row in rows.items():
        allocatable = gpus.by_sku.get(name, {}).get("allocatable", 0)
        largest = gpus.by_sku.get(name, {}).get("largest_node", 0)
        if row.allocatable_gpus == allocatable and row.largest_node_gpus == largest:
            continue
        row.allocatable_gpus = allocatable
        row.largest_node_gpus = largest
        row.total_gpus = max(row.total_gpus, allocatable)
        # The database requires in-use GPUs to fit in the allocatable ones.
        row.in_use_gpus = min(row.in_use_gpus, allocatable)
        row.save(update_fields=["allocatable_gpus", "largest_node_gpus", "total_gpus", "in_use_gpus", "updated_at"])
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
            largest_node_gpus=counts.get("largest_node"),
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
