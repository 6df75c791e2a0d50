"""Candidate (cluster, SKU) pairs per deployment: the hard filters, the costs and the pruning.

Each deployment's pairs pass every hard filter: the cluster is schedulable, it complies with every
lock, the SKU is one the deployment accepts, the cluster is not in the deployment's
``excluded_clusters``, and at least one replica fits in its free GPUs. The clusters that fail are
grouped by reason, with a count and a few names, so that an explanation stays small at 1,000
clusters x 10,000 deployments.

A held candidate keeps replicas that run now on a cluster that is not schedulable: one with
``holds_current`` set, or one in the deployment's ``hold_clusters``. There is one per (cluster, SKU)
in ``ProblemInput.current``, when that pair passes the deployment's locks, SKUs and exclusions. It
may keep at most the replicas running there (``Candidate.held``) and takes nothing from the
cluster's free GPUs, which are unknown or not for new replicas, so no capacity row counts it.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import locks as lock_rules
from .costs import (
    PENALISED_CLUSTER_PER_GPU,
    ReplicaCost,
    latency_cost_per_gpu,
    preference_cost_per_gpu,
    price_cost_per_gpu,
    replica_cost,
    weighted_rtt_ms_array,
)
from .problem import ClusterInput, DeploymentInput, LockInput, ProblemInput, SchedulerOptions
from .spread import check_spread_mode, spread_caps

# Cluster names listed per rejection reason; the count covers the rest.
SAMPLE_NAMES = 10

LOCKED_OUT = "locked_out"
WRONG_SKU = "wrong_sku"
NOT_SCHEDULABLE = "not_schedulable"
FULL = "full"
PRUNED = "pruned"
EXCLUDED = "excluded"


@dataclass(frozen=True)
class Candidate:
    cluster: int  # index into ProblemInput.clusters
    cluster_id: int
    sku: str
    free_gpus: int  # for a held candidate, the GPUs of its running replicas
    cost: ReplicaCost  # per replica
    # Replicas running on this pair that a held candidate may keep; 0 for a candidate with free GPUs.
    held: int = 0


@dataclass
class RejectionGroup:
    """Clusters ruled out for a deployment for one reason: a count and up to SAMPLE_NAMES names."""

    reason: str
    message: str
    count: int
    clusters: list[str]
    members: np.ndarray | None = field(default=None, repr=False)  # mask over the cluster table

    def as_dict(self) -> dict:
        return {"reason": self.reason, "message": self.message, "count": self.count, "clusters": self.clusters}


@dataclass
class DeploymentCandidates:
    deployment: DeploymentInput
    candidates: list[Candidate]  # kept pairs, cheapest first
    rejections: list[RejectionGroup] = field(default_factory=list)
    feasible_pairs: int = 0  # pairs that passed the hard filters, before pruning


class ClusterTable:
    """The clusters as numpy arrays, for filtering and costing all of them per deployment at once."""

    def __init__(self, clusters: list[ClusterInput]):
        self.clusters = clusters
        self.index_by_id = {cluster.id: index for index, cluster in enumerate(clusters)}
        self.cluster_ids = [cluster.id for cluster in clusters]
        self.names = np.array([cluster.name for cluster in clusters], dtype=object)
        self.latitudes = np.array([cluster.latitude for cluster in clusters], dtype=float)
        self.longitudes = np.array([cluster.longitude for cluster in clusters], dtype=float)
        self.schedulable = np.array([cluster.schedulable for cluster in clusters], dtype=bool)
        self.holds_current = np.array([cluster.holds_current for cluster in clusters], dtype=bool)
        self.id_array = np.array(self.cluster_ids, dtype=np.int64)
        self.states = np.array([cluster.state for cluster in clusters], dtype=object)
        self.regions = np.array([cluster.region for cluster in clusters], dtype=object)
        self.providers = np.array([cluster.provider for cluster in clusters], dtype=object)
        self.jurisdictions = np.array([cluster.jurisdiction for cluster in clusters], dtype=object)
        self.region_names = sorted(set(self.regions))
        region_number = {region: number for number, region in enumerate(self.region_names)}
        self.region_numbers_by_name = region_number
        self.region_numbers = np.array([region_number[region] for region in self.regions], dtype=np.int64)

        skus = sorted({sku for cluster in clusters for sku in cluster.free_gpus})
        count = len(clusters)
        self.offers = {sku: np.zeros(count, dtype=bool) for sku in skus}
        self.free = {sku: np.zeros(count, dtype=np.int64) for sku in skus}
        self.price = {sku: np.zeros(count, dtype=float) for sku in skus}
        # GPUs of the largest node per SKU; unknown sizes do not limit.
        self.largest_node = {sku: np.full(count, np.iinfo(np.int64).max, dtype=np.int64) for sku in skus}
        for index, cluster in enumerate(clusters):
            for sku, free in cluster.free_gpus.items():
                self.offers[sku][index] = True
                self.free[sku][index] = free
                self.price[sku][index] = cluster.price_per_gpu_hour.get(sku, 0.0)
                largest = cluster.largest_node_gpus.get(sku)
                if largest is not None:
                    self.largest_node[sku][index] = largest
        self._lock_masks: dict[LockInput, list[tuple[str, np.ndarray]]] = {}

    def lock_masks(self, lock: LockInput) -> list[tuple[str, np.ndarray]]:
        """Return (violation kind, clusters whose first violation of ``lock`` is that kind) pairs."""
        cached = self._lock_masks.get(lock)
        if cached is not None:
            return cached

        breaks = {
            lock_rules.REGION: _outside(self.regions, lock.allowed_regions),
            lock_rules.JURISDICTION: _outside(self.jurisdictions, lock.allowed_jurisdictions),
            lock_rules.PROVIDER: _outside(self.providers, lock.allowed_providers),
            lock_rules.EXCLUDED_PROVIDER: np.isin(self.providers, list(lock.excluded_providers)),
            lock_rules.CAPABILITY: np.array(
                [not lock.required_capabilities <= cluster.capabilities for cluster in self.clusters], dtype=bool
            ),
        }
        masks = []
        already = np.zeros(len(self.clusters), dtype=bool)
        for kind in lock_rules.VIOLATION_KINDS:
            first = breaks[kind] & ~already
            if first.any():
                masks.append((kind, first))
            already |= first
        self._lock_masks[lock] = masks
        return masks


def _outside(values: np.ndarray, allowed: frozenset[str] | None) -> np.ndarray:
    if not allowed:
        return np.zeros(len(values), dtype=bool)
    return ~np.isin(values, list(allowed))


def _group(reason: str, message: str, mask: np.ndarray, table: ClusterTable) -> RejectionGroup:
    indices = np.flatnonzero(mask)
    names = [str(name) for name in table.names[indices[:SAMPLE_NAMES]]]
    return RejectionGroup(reason=reason, message=message, count=len(indices), clusters=names, members=mask)


def _without(groups: list[RejectionGroup], dropped: np.ndarray, table: ClusterTable) -> list[RejectionGroup]:
    """Return ``groups`` without the clusters of the mask ``dropped``; groups left empty go."""
    result = []
    for group in groups:
        if group.members is None or not (group.members & dropped).any():
            result.append(group)
            continue
        members = group.members & ~dropped
        if members.any():
            result.append(_group(group.reason, group.message, members, table))
    return result


def filter_clusters(
    deployment: DeploymentInput, table: ClusterTable
) -> tuple[dict[str, np.ndarray], list[RejectionGroup]]:
    """Apply the hard filters for one deployment.

    Returns, per accepted SKU, the mask of clusters where a replica fits, and the groups of clusters
    rejected. Each cluster is rejected for its first failing check: a lock, no accepted SKU, not
    schedulable, then no free room for one replica.
    """
    alive = np.ones(len(table.clusters), dtype=bool)
    groups: list[RejectionGroup] = []

    for lock in deployment.locks:
        for kind, violators in table.lock_masks(lock):
            hit = violators & alive
            if hit.any():
                rule = lock_rules.describe_lock_rule(lock, kind)
                message = f"locked out by {lock.source}: requires {rule} (reason: {lock.reason})"
                groups.append(_group(LOCKED_OUT, message, hit, table))
                alive &= ~violators

    skus = tuple(dict.fromkeys(sku for sku in deployment.skus if sku in table.offers))
    offers_any = np.zeros(len(table.clusters), dtype=bool)
    for sku in skus:
        offers_any |= table.offers[sku]
    wrong = alive & ~offers_any
    if wrong.any():
        groups.append(_group(WRONG_SKU, f"offers none of {', '.join(deployment.skus)}", wrong, table))
    alive &= offers_any

    stopped = alive & ~table.schedulable
    for state in sorted(set(table.states[stopped])):
        message = f"not schedulable (state {state})"
        groups.append(_group(NOT_SCHEDULABLE, message, stopped & (table.states == state), table))
    alive &= table.schedulable

    gpus = deployment.gpus_per_replica
    # A replica's GPUs must be on one node, so clusters whose nodes are all smaller cannot run it.
    big_enough = {sku: alive & (table.largest_node[sku] >= gpus) for sku in skus}
    big_any = np.zeros(len(table.clusters), dtype=bool)
    for mask in big_enough.values():
        big_any |= mask
    small = alive & ~big_any
    if small.any():
        message = f"full: no node has {gpus} GPUs of {', '.join(skus)}"
        groups.append(_group(FULL, message, small, table))
    fits = {sku: big_enough[sku] & (table.free[sku] >= gpus) for sku in skus}
    fits_any = np.zeros(len(table.clusters), dtype=bool)
    for mask in fits.values():
        fits_any |= mask
    full = alive & big_any & ~fits_any
    if full.any():
        message = f"full: fewer than {deployment.gpus_per_replica} free GPUs of {', '.join(skus)}"
        groups.append(_group(FULL, message, full, table))
    return fits, groups


@dataclass
class PairCosts:
    """Every feasible (cluster, SKU) pair of one deployment as arrays, cheapest first."""

    clusters: np.ndarray  # cluster indices
    sku_numbers: np.ndarray  # index into ``sku_names``
    sku_names: list[str]
    free_gpus: np.ndarray
    rtt_ms: np.ndarray
    latency: np.ndarray  # per replica, like the other cost arrays
    preference: np.ndarray
    price: np.ndarray
    penalty: np.ndarray
    price_per_gpu_hour: np.ndarray
    ranks: np.ndarray  # 0-based preference rank per pair, -1 for an unlisted region
    cluster_ids: list[int]  # cluster id by cluster index

    def candidate(self, position: int) -> Candidate:
        rank = int(self.ranks[position])
        cost = ReplicaCost(
            rtt_ms=float(self.rtt_ms[position]),
            preference_rank=None if rank < 0 else rank,
            price_per_gpu_hour=float(self.price_per_gpu_hour[position]),
            latency=float(self.latency[position]),
            preference=float(self.preference[position]),
            price=float(self.price[position]),
            penalty=float(self.penalty[position]),
        )
        sku = self.sku_names[int(self.sku_numbers[position])]
        cluster = int(self.clusters[position])
        return Candidate(cluster, self.cluster_ids[cluster], sku, int(self.free_gpus[position]), cost)


@dataclass
class FeasiblePairs:
    """The pairs that pass the hard filters, shared by deployments with the same locks, SKUs and size."""

    clusters: np.ndarray  # cluster index per pair
    sku_numbers: np.ndarray  # index into ``sku_names`` per pair
    sku_names: list[str]
    free_gpus: np.ndarray
    price_per_gpu_hour: np.ndarray
    unique_clusters: np.ndarray
    cluster_position: np.ndarray  # per pair, its cluster's position in ``unique_clusters``
    rejections: list[RejectionGroup]


def feasible_pairs(deployment: DeploymentInput, table: ClusterTable) -> FeasiblePairs:
    """Run ``filter_clusters`` and lay the surviving (cluster, SKU) pairs out as arrays."""
    fits, rejections = filter_clusters(deployment, table)
    sku_names = list(fits)
    parts = [np.flatnonzero(fits[sku]) for sku in sku_names]
    clusters = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    sku_numbers = np.concatenate([np.full(len(part), n, dtype=np.int64) for n, part in enumerate(parts)] or [clusters])
    price = np.concatenate([table.price[sku][part] for sku, part in zip(sku_names, parts, strict=True)] or [[]])
    free = np.concatenate([table.free[sku][part] for sku, part in zip(sku_names, parts, strict=True)] or [clusters])
    unique, position = np.unique(clusters, return_inverse=True)
    return FeasiblePairs(clusters, sku_numbers, sku_names, free, price.astype(float), unique, position, rejections)


def exclude_clusters(deployment: DeploymentInput, feasible: FeasiblePairs, table: ClusterTable) -> FeasiblePairs:
    """Return ``feasible`` without the pairs on the deployment's ``excluded_clusters``, which get their own group."""
    excluded = np.isin(table.id_array[feasible.clusters], list(deployment.excluded_clusters))
    if not excluded.any():
        return feasible
    mask = np.zeros(len(table.clusters), dtype=bool)
    mask[feasible.clusters[excluded]] = True
    message = "excluded for this deployment: its replicas return there only once the failback is approved"
    rejections = [*feasible.rejections, _group(EXCLUDED, message, mask, table)]
    keep = ~excluded
    clusters = feasible.clusters[keep]
    unique, position = np.unique(clusters, return_inverse=True)
    return FeasiblePairs(
        clusters,
        feasible.sku_numbers[keep],
        feasible.sku_names,
        feasible.free_gpus[keep],
        feasible.price_per_gpu_hour[keep],
        unique,
        position,
        rejections,
    )


def cost_pairs(deployment: DeploymentInput, feasible: FeasiblePairs, table: ClusterTable) -> PairCosts:
    """Return the per-replica cost of every feasible (cluster, SKU) pair, cheapest first."""
    gpus = deployment.gpus_per_replica
    rank_by_region = np.full(len(table.region_names), -1, dtype=np.int64)
    preference_by_region = np.full(len(table.region_names), gpus * preference_cost_per_gpu(deployment, None))
    for rank, region in reversed(list(enumerate(deployment.region_preference))):
        number = table.region_numbers_by_name.get(region)
        if number is not None:
            rank_by_region[number] = rank
            preference_by_region[number] = gpus * preference_cost_per_gpu(deployment, rank)

    clusters = feasible.clusters
    unique = feasible.unique_clusters
    rtt = weighted_rtt_ms_array(deployment, table.latitudes[unique], table.longitudes[unique])[
        feasible.cluster_position
    ]
    latency = gpus * latency_cost_per_gpu(rtt)
    regions = table.region_numbers[clusters]
    preference = preference_by_region[regions]
    price = gpus * price_cost_per_gpu(feasible.price_per_gpu_hour)
    penalty = np.zeros(len(clusters))
    if deployment.penalised_clusters:
        penalised = np.isin(table.id_array[clusters], list(deployment.penalised_clusters))
        penalty[penalised] = gpus * PENALISED_CLUSTER_PER_GPU
    order = np.lexsort((clusters, latency + preference + price + penalty))  # cheapest first, ties by cluster index
    return PairCosts(
        clusters=clusters[order],
        sku_numbers=feasible.sku_numbers[order],
        sku_names=feasible.sku_names,
        free_gpus=feasible.free_gpus[order],
        rtt_ms=rtt[order],
        latency=latency[order],
        preference=preference[order],
        price=price[order],
        penalty=penalty[order],
        price_per_gpu_hour=feasible.price_per_gpu_hour[order],
        ranks=rank_by_region[regions][order],
        cluster_ids=table.cluster_ids,
    )


def prune_pairs(
    deployment: DeploymentInput,
    pairs: PairCosts,
    running_clusters: set[int],
    max_candidates: int,
    table: ClusterTable,
) -> list[int]:
    """Return the positions in ``pairs`` (cheapest first) to keep as candidates.

    Keeps the ``max_candidates`` cheapest pairs (all of them for 0) and every pair in a cluster where
    the deployment runs now. Then it keeps adding the next cheapest until the kept pairs have free
    room for twice the deployment's GPUs. For two or more replicas they must also span two clusters
    and the requested numbers of providers and regions. Capacity is shared with other deployments, so
    pruning can still leave a deployment unmet where the full model would place it.
    """
    count = len(pairs.clusters)
    if max_candidates <= 0 or count <= max_candidates:
        return list(range(count))

    gpus = deployment.gpus_per_replica
    needed_gpus = 2 * deployment.replicas * gpus
    spread = deployment.replicas >= 2
    kept = []
    room = 0
    clusters: set[int] = set()
    providers: set[str] = set()
    regions: set[str] = set()
    for position in range(count):
        cluster = int(pairs.clusters[position])
        satisfied = room >= needed_gpus and (
            not spread
            or (
                len(clusters) >= 2
                and len(providers) >= deployment.min_providers
                and len(regions) >= deployment.min_regions
            )
        )
        if position >= max_candidates and satisfied:
            break
        kept.append(position)
        room += (int(pairs.free_gpus[position]) // gpus) * gpus
        clusters.add(cluster)
        providers.add(table.providers[cluster])
        regions.add(table.regions[cluster])

    if running_clusters:
        rest = pairs.clusters[len(kept) :]
        running = np.flatnonzero(np.isin(rest, list(running_clusters)))
        kept.extend((running + len(kept)).tolist())
    return kept


def build_candidates(
    problem: ProblemInput, options: SchedulerOptions
) -> tuple[ClusterTable, list[DeploymentCandidates]]:
    """Return the cluster table and, for each deployment in order, its kept candidates and rejections.

    Raises ValueError for a deployment whose ``spread`` is not a known mode.
    """
    table = ClusterTable(problem.clusters)
    running: dict[int, set[int]] = defaultdict(set)
    stopped_pairs: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for (deployment_id, cluster_id, sku), replicas in problem.current.items():
        index = table.index_by_id.get(cluster_id)
        if replicas > 0 and index is not None:
            running[deployment_id].add(index)
            if not table.schedulable[index]:
                stopped_pairs[deployment_id].append((index, sku, replicas))

    # Deployments with the same locks, SKUs and GPUs per replica pass the same filters.
    filtered: dict[tuple, FeasiblePairs] = {}
    result = []
    for deployment in problem.deployments:
        check_spread_mode(deployment)
        signature = (deployment.locks, deployment.skus, deployment.gpus_per_replica)
        if signature not in filtered:
            filtered[signature] = feasible_pairs(deployment, table)
        feasible = filtered[signature]
        if deployment.excluded_clusters:
            feasible = exclude_clusters(deployment, feasible, table)
        rejections = list(feasible.rejections)
        pairs = one_sku_per_cluster(deployment, cost_pairs(deployment, feasible, table))
        kept_positions = prune_pairs(deployment, pairs, running[deployment.id], options.max_candidates, table)
        kept = [pairs.candidate(position) for position in kept_positions]
        if len(kept) < len(pairs.clusters):
            mask = np.zeros(len(table.clusters), dtype=bool)
            mask[pairs.clusters] = True
            mask[[candidate.cluster for candidate in kept]] = False
            message = f"farther / costlier than the {len(kept)} candidates considered"
            rejections.append(_group(PRUNED, message, mask, table))

        held = held_candidates(deployment, stopped_pairs.get(deployment.id, ()), table)
        if held:
            # Held candidates are never pruned. Their clusters leave the not-schedulable group.
            kept = sorted([*kept, *held], key=lambda candidate: candidate.cost.total)
            dropped = np.zeros(len(table.clusters), dtype=bool)
            dropped[[candidate.cluster for candidate in held]] = True
            rejections = _without(rejections, dropped, table)
        feasible_count = len(pairs.clusters) + len(held)
        result.append(DeploymentCandidates(deployment, kept, rejections, feasible_pairs=feasible_count))
    return table, result


def held_candidates(
    deployment: DeploymentInput, stopped_pairs: list[tuple[int, str, int]], table: ClusterTable
) -> list[Candidate]:
    """Return the held candidates of ``deployment``, cheapest first.

    ``stopped_pairs`` lists (cluster index, SKU, running replicas) for the deployment's replicas on
    clusters that are not schedulable. A pair is held when its cluster has ``holds_current`` set or
    is in the deployment's ``hold_clusters``, is not in its ``excluded_clusters``, complies with
    every lock, and the SKU is one the deployment accepts.
    """
    held = []
    for index, sku, replicas in stopped_pairs:
        cluster = table.clusters[index]
        if not (cluster.holds_current or cluster.id in deployment.hold_clusters):
            continue
        if cluster.id in deployment.excluded_clusters or sku not in deployment.skus:
            continue
        if any(lock_rules.lock_violation_kind(lock, cluster) for lock in deployment.locks):
            continue
        cost = replica_cost(deployment, cluster, sku)
        held.append(Candidate(index, cluster.id, sku, replicas * deployment.gpus_per_replica, cost, held=replicas))
    return sorted(held, key=lambda candidate: (candidate.cost.total, candidate.cluster))


def one_sku_per_cluster(deployment: DeploymentInput, pairs: PairCosts) -> PairCosts:
    """Keep one SKU per cluster: the cheapest with room for the most replicas one cluster may hold.

    A deployment is one Kubernetes Deployment per cluster, with one GPU node selector, so its
    replicas in one cluster must all use the same SKU. The rule keeps the cheapest SKU with room
    for the most replicas its spread rule lets one cluster hold, or failing that the SKU with the
    most room. It runs before pruning and does not look at where the deployment runs
    now, so re-planning an unchanged input keeps the same candidates.
    NOTE: a plan may switch a deployment's SKU within a cluster when capacity changes. The pods are
    then replaced in place, without make-before-break inside that cluster.
    """
    gpus = deployment.gpus_per_replica
    max_per_cluster = max(spread_caps(deployment).cluster, 1)
    best: dict[int, int] = {}  # cluster index -> position of its kept pair
    for position in range(len(pairs.clusters)):  # cheapest first
        cluster = int(pairs.clusters[position])
        room = int(pairs.free_gpus[position]) // gpus
        if cluster not in best:
            best[cluster] = position
            continue
        kept_room = int(pairs.free_gpus[best[cluster]]) // gpus
        if kept_room < max_per_cluster and room > kept_room:
            best[cluster] = position
    keep = np.array(sorted(best.values()), dtype=np.int64)
    if len(keep) == len(pairs.clusters):
        return pairs
    return PairCosts(
        clusters=pairs.clusters[keep],
        sku_numbers=pairs.sku_numbers[keep],
        sku_names=pairs.sku_names,
        free_gpus=pairs.free_gpus[keep],
        rtt_ms=pairs.rtt_ms[keep],
        latency=pairs.latency[keep],
        preference=pairs.preference[keep],
        price=pairs.price[keep],
        penalty=pairs.penalty[keep],
        price_per_gpu_hour=pairs.price_per_gpu_hour[keep],
        ranks=pairs.ranks[keep],
        cluster_ids=pairs.cluster_ids,
    )
