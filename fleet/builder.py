"""Derive clusters and their GPU counts from catalog offers, reproducibly from a seed.

Catalogs list which SKUs a region sells and at what price, not how many GPUs a provider has
there, so the fleet size is a modelling input. These rules produce it:

* Clusters: one per (provider, region) with at least one offer, named
  ``<provider>-<region>-a``. A region that sells ``BIG_REGION_SKUS`` or more SKUs gets a second
  cluster, ``...-b``, with the same SKUs and its own draw of node counts.
* Node shape: for each SKU, the GPUs per node are the largest ``gpu_count`` among the region's
  offers of that SKU (an 8-GPU instance means 8-GPU nodes). When the region sells that SKU only
  as single-GPU instances, the shape is drawn from ``NODE_SHAPE_WEIGHTS``.
* Node count: drawn uniformly from ``NODES_PER_SKU`` for each (cluster, SKU).
* Price: the cheapest offer of the SKU in the region, divided by its GPU count, on-demand.
* ``allocatable_gpus`` equals ``total_gpus`` and ``in_use_gpus`` starts at 0.

Each cluster draws from its own generator seeded with ``"<seed>:<cluster name>"``, so a cluster's
counts depend on the seed and its name only, not on which other clusters are built. Running
again with the same seed changes nothing. Existing clusters keep their state, API endpoint and
capabilities; only their region and capacities follow the rules.
"""

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from compliance.services import record_event
from fleet.models import CatalogOffer, Cluster, ClusterCapacity, PricingModel, Region

logger = logging.getLogger(__name__)

DEFAULT_SEED = 2024
BIG_REGION_SKUS = 6
NODES_PER_SKU = (2, 12)
# GPUs per node in Alibaba's 2023 production GPU cluster trace (1,213 GPU nodes: 24 with 1 GPU,
# 518 with 2, 54 with 4, 617 with 8), from "Beware of Fragmentation" (Weng et al., USENIX ATC 2023).
NODE_SHAPE_WEIGHTS = {1: 24, 2: 518, 4: 54, 8: 617}
PRICE_STEP = Decimal("0.0001")


@dataclass
class BuildReport:
    clusters_planned: int = 0
    clusters_created: int = 0
    clusters_updated: int = 0
    clusters_unchanged: int = 0
    capacities_created: int = 0
    capacities_updated: int = 0
    capacities_unchanged: int = 0
    total_gpus: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.clusters_created + self.clusters_updated + self.capacities_created + self.capacities_updated)


@dataclass(frozen=True)
class SkuSupply:
    """One SKU on sale in a region: the node shape and the cheapest price per GPU-hour."""

    sku_id: int
    sku_name: str
    max_gpus_per_instance: int
    price_per_gpu: Decimal


@dataclass(frozen=True)
class PlannedCapacity:
    sku_id: int
    total_gpus: int
    price_per_gpu: Decimal


def region_supply(region_ids: Iterable[int] | None = None) -> dict[int, list[SkuSupply]]:
    """Return, per region id, each SKU it sells with its node shape and cheapest price per GPU."""
    offers = CatalogOffer.objects.values_list("region_id", "sku_id", "sku__name", "gpu_count", "price")
    if region_ids is not None:
        offers = offers.filter(region_id__in=list(region_ids))
    best: dict[tuple[int, int], SkuSupply] = {}
    for region_id, sku_id, sku_name, gpu_count, price in offers:
        per_gpu = (price / gpu_count).quantize(PRICE_STEP)
        known = best.get((region_id, sku_id))
        if known is not None:
            per_gpu = min(per_gpu, known.price_per_gpu)
            gpu_count = max(gpu_count, known.max_gpus_per_instance)
        best[region_id, sku_id] = SkuSupply(sku_id, sku_name, gpu_count, per_gpu)
    supply: dict[int, list[SkuSupply]] = defaultdict(list)
    for (region_id, _), item in sorted(best.items(), key=lambda entry: (entry[0][0], entry[1].sku_name)):
        supply[region_id].append(item)
    return supply


def plan_capacities(seed: int, cluster_name: str, supply: list[SkuSupply]) -> list[PlannedCapacity]:
    """Draw the GPU count of each SKU in one cluster; the same seed and name give the same counts."""
    rng = random.Random(f"{seed}:{cluster_name}")
    shapes, weights = zip(*sorted(NODE_SHAPE_WEIGHTS.items()), strict=True)
    planned = []
    for item in supply:
        gpus_per_node = item.max_gpus_per_instance
        if gpus_per_node == 1:
            gpus_per_node = rng.choices(shapes, weights=weights)[0]
        nodes = rng.randint(*NODES_PER_SKU)
        planned.append(PlannedCapacity(item.sku_id, nodes * gpus_per_node, item.price_per_gpu))
    return planned


def _round_robin(regions: list[Region]) -> list[Region]:
    """Order regions so that each provider's first region comes before any provider's second."""
    by_provider: dict[str, list[Region]] = defaultdict(list)
    for region in sorted(regions, key=lambda region: (region.provider.name, region.code)):
        by_provider[region.provider.name].append(region)
    ordered: list[Region] = []
    for rank in range(max((len(group) for group in by_provider.values()), default=0)):
        ordered.extend(group[rank] for group in by_provider.values() if rank < len(group))
    return ordered


def plan_clusters(
    supply: dict[int, list[SkuSupply]], max_clusters: int | None
) -> list[tuple[str, Region, list[SkuSupply]]]:
    """Return ``(cluster name, region, SKUs)`` for each cluster the rules ask for, at most ``max_clusters``."""
    regions = list(Region.objects.select_related("provider").filter(pk__in=supply))
    planned: list[tuple[str, Region, list[SkuSupply]]] = []
    names: set[str] = set()
    for region in _round_robin(regions):
        suffixes = ["a", "b"] if len(supply[region.pk]) >= BIG_REGION_SKUS else ["a"]
        for suffix in suffixes:
            name = slugify(f"{region.provider.name}-{region.code}-{suffix}")[:120]
            if name in names:
                # Two region codes that differ only in punctuation or case: keep names unique.
                name = f"{name}-{region.pk}"
            names.add(name)
            planned.append((name, region, supply[region.pk]))
    return planned[:max_clusters] if max_clusters is not None else planned


def _write_clusters(planned: list[tuple[str, Region, list[SkuSupply]]], report: BuildReport) -> dict[str, Cluster]:
    existing = {cluster.name: cluster for cluster in Cluster.objects.filter(name__in=[name for name, _, _ in planned])}
    to_create, to_update = [], []
    for name, region, _ in planned:
        cluster = existing.get(name)
        if cluster is None:
            to_create.append(Cluster(name=name, region=region))
        elif cluster.region_id != region.pk:
            cluster.region = region
            to_update.append(cluster)
        else:
            report.clusters_unchanged += 1
    for cluster in Cluster.objects.bulk_create(to_create):
        existing[cluster.name] = cluster
    Cluster.objects.bulk_update(to_update, ["region"])
    report.clusters_created, report.clusters_updated = len(to_create), len(to_update)
    return existing


def _write_capacities(
    clusters: dict[str, Cluster], planned: dict[str, list[PlannedCapacity]], report: BuildReport
) -> None:
    cluster_ids = [clusters[name].pk for name in planned]
    existing = {
        (capacity.cluster_id, capacity.sku_id): capacity
        for capacity in ClusterCapacity.objects.filter(cluster_id__in=cluster_ids)
    }
    to_create, to_update = [], []
    for name, capacities in planned.items():
        cluster = clusters[name]
        for item in capacities:
            report.total_gpus += item.total_gpus
            row = existing.get((cluster.pk, item.sku_id))
            if row is None:
                to_create.append(
                    ClusterCapacity(
                        cluster=cluster,
                        sku_id=item.sku_id,
                        total_gpus=item.total_gpus,
                        allocatable_gpus=item.total_gpus,
                        hourly_price_per_gpu=item.price_per_gpu,
                        pricing_model=PricingModel.ON_DEMAND,
                    )
                )
            elif (row.total_gpus, row.allocatable_gpus, row.hourly_price_per_gpu, row.pricing_model) != (
                item.total_gpus,
                item.total_gpus,
                item.price_per_gpu,
                PricingModel.ON_DEMAND,
            ):
                row.total_gpus = row.allocatable_gpus = item.total_gpus
                row.in_use_gpus = min(row.in_use_gpus, item.total_gpus)
                row.hourly_price_per_gpu, row.pricing_model = item.price_per_gpu, PricingModel.ON_DEMAND
                row.updated_at = timezone.now()
                to_update.append(row)
            else:
                report.capacities_unchanged += 1
    ClusterCapacity.objects.bulk_create(to_create, batch_size=1000)
    fields = ["total_gpus", "allocatable_gpus", "in_use_gpus", "hourly_price_per_gpu", "pricing_model", "updated_at"]
    ClusterCapacity.objects.bulk_update(to_update, fields, batch_size=1000)
    report.capacities_created, report.capacities_updated = len(to_create), len(to_update)


def build_fleet(
    seed: int = DEFAULT_SEED,
    *,
    max_clusters: int | None = None,
    region_ids: Iterable[int] | None = None,
    actor="fleet-builder",
    progress: Callable[[str], None] | None = None,
) -> BuildReport:
    """Create or update clusters and their capacities from the catalog offers; return the counts.

    ``region_ids`` limits the build to those regions; ``max_clusters`` keeps the first clusters
    in round-robin order over providers, so a small fleet still spans every provider.
    NOTE: clusters and capacities that the rules no longer ask for (an offer removed, a smaller
    ``max_clusters``) are kept, because placements may still point at them.
    """
    if max_clusters is not None and max_clusters < 1:
        raise ValueError(f"max_clusters must be at least 1, not {max_clusters}")
    report = BuildReport()
    supply = region_supply(region_ids)
    planned = plan_clusters(supply, max_clusters)
    report.clusters_planned = len(planned)
    logger.info("building %d clusters from the offers of %d regions with seed %s", len(planned), len(supply), seed)
    if progress:
        progress(f"planning {len(planned)} clusters in {len(supply)} regions with seed {seed}")
    capacities = {name: plan_capacities(seed, name, skus) for name, _, skus in planned}

    with transaction.atomic():
        clusters = _write_clusters(planned, report)
        _write_capacities(clusters, capacities, report)
        if report.changed:
            record_event(actor=actor, action="fleet.built", subject=("fleet.fleet", seed), after=asdict(report))
    logger.info("built fleet with seed %s: %s", seed, asdict(report))
    return report
