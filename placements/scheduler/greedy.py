"""The greedy placement, the objective of any plan, and the check of a plan's hard constraints.

``evaluate`` is the one definition of the objective: the MILP's plan and the greedy plan are both
scored with it, so they compare like for like.
"""

from collections import defaultdict

from .candidates import ClusterTable, DeploymentCandidates
from .costs import churn_cost_per_replica, lowest_tier_rank, replica_cost, unmet_penalty_per_replica
from .locks import lock_violation
from .problem import SPREAD_FULL, ClusterInput, DeploymentInput, PlacementKey, ProblemInput
from .spread import spread_caps, spread_violation

__all__ = ["check_plan", "evaluate", "greedy_place", "placed_replicas", "spread_violation"]

OBJECTIVE_TERMS = ("latency", "preference", "price", "penalty", "churn", "unmet")


def placed_replicas(assignments: dict[PlacementKey, int]) -> dict[int, int]:
    """Return deployment id -> replicas placed by ``assignments``."""
    placed: dict[int, int] = defaultdict(int)
    for (deployment_id, _cluster_id, _sku), replicas in assignments.items():
        placed[deployment_id] += replicas
    return placed


def evaluate(problem: ProblemInput, assignments: dict[PlacementKey, int]) -> tuple[float, dict[str, float]]:
    """Compute the objective of a plan and its terms, with the cost function of ``placements.scheduler.costs``.

    Raises ValueError for an assignment to a deployment or cluster that is not in ``problem``.
    """
    deployments = {deployment.id: deployment for deployment in problem.deployments}
    clusters = {cluster.id: cluster for cluster in problem.clusters}
    terms = dict.fromkeys(OBJECTIVE_TERMS, 0.0)

    for (deployment_id, cluster_id, sku), replicas in assignments.items():
        if replicas <= 0:
            continue
        if deployment_id not in deployments or cluster_id not in clusters:
            raise ValueError(f"assignment {(deployment_id, cluster_id, sku)} names an unknown deployment or cluster")
        cost = replica_cost(deployments[deployment_id], clusters[cluster_id], sku)
        terms["latency"] += replicas * cost.latency
        terms["preference"] += replicas * cost.preference
        terms["price"] += replicas * cost.price
        terms["penalty"] += replicas * cost.penalty

    for key, running in problem.current.items():
        deployment = deployments.get(key[0])
        if deployment is None or running <= 0:
            continue
        removed = max(0, running - assignments.get(key, 0))
        terms["churn"] += removed * churn_cost_per_replica(deployment, key[1])

    placed = placed_replicas(assignments)
    lowest = lowest_tier_rank(problem.deployments)
    for deployment in problem.deployments:
        unmet = max(0, deployment.replicas - placed.get(deployment.id, 0))
        terms["unmet"] += unmet * unmet_penalty_per_replica(deployment, lowest)
    return sum(terms.values()), terms


def check_plan(problem: ProblemInput, assignments: dict[PlacementKey, int]) -> list[str]:
    """Return every hard-constraint violation in a plan: capacity, node size, locks, SKU fit, schedulability, spread.

    Replicas on a cluster that is not schedulable are valid only on a held pair (see
    ``placements.scheduler.candidates``), and at most as many as run there now. Held pairs take no
    free GPUs, so the capacity check leaves them out.
    """
    deployments = {deployment.id: deployment for deployment in problem.deployments}
    clusters = {cluster.id: cluster for cluster in problem.clusters}
    violations = []
    used_gpus: dict[tuple[int, str], int] = defaultdict(int)
    by_cluster: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    for key, replicas in assignments.items():
        deployment_id, cluster_id, sku = key
        if replicas == 0:
            continue
        deployment = deployments.get(deployment_id)
        cluster = clusters.get(cluster_id)
        if deployment is None or cluster is None:
            violations.append(f"{key}: unknown deployment or cluster")
            continue
        if replicas < 0 or int(replicas) != replicas:
            violations.append(f"{deployment.name} on {cluster.name}/{sku}: invalid replica count {replicas}")
            continue
        if sku not in deployment.skus:
            violations.append(f"{deployment.name} on {cluster.name}: SKU {sku} is not one of {deployment.skus}")
        if cluster_id in deployment.excluded_clusters:
            violations.append(f"{deployment.name} on {cluster.name}: cluster is excluded for this deployment")
        if not cluster.schedulable:
            reason = _held_pair_violation(problem, deployment, cluster, sku, replicas)
            if reason:
                violations.append(reason)
        for lock in deployment.locks:
            reason = lock_violation(lock, cluster)
            if reason:
                violations.append(f"{deployment.name} on {cluster.name}: {reason}")
        if cluster.schedulable:
            used_gpus[cluster_id, sku] += replicas * deployment.gpus_per_replica
            largest = cluster.largest_node_gpus.get(sku)
            if largest is not None and largest < deployment.gpus_per_replica:
                violations.append(
                    f"{deployment.name} on {cluster.name}/{sku}: {deployment.gpus_per_replica} GPUs per replica, "
                    f"largest node has {largest}"
                )
        by_cluster[deployment_id][cluster_id] += replicas

    for (cluster_id, sku), gpus in sorted(used_gpus.items()):
        free = clusters[cluster_id].free_gpus.get(sku, 0)
        if gpus > free:
            violations.append(f"{clusters[cluster_id].name}/{sku}: {gpus} GPUs placed, {free} free")

    for deployment_id, replicas_by_cluster in by_cluster.items():
        deployment = deployments[deployment_id]
        placed = sum(replicas_by_cluster.values())
        if placed > deployment.replicas:
            violations.append(f"{deployment.name}: {placed} replicas placed, {deployment.replicas} desired")
        reason = spread_violation(deployment, replicas_by_cluster, clusters)
        if reason:
            violations.append(reason)
    return violations


def _held_pair_violation(
    problem: ProblemInput, deployment: DeploymentInput, cluster: ClusterInput, sku: str, replicas: int
) -> str | None:
    """Return why replicas of ``deployment`` on a cluster that is not schedulable are invalid, or None."""
    where = f"{deployment.name} on {cluster.name}"
    if not (cluster.holds_current or cluster.id in deployment.hold_clusters):
        return f"{where}: cluster is not schedulable ({cluster.state})"
    running = problem.current.get((deployment.id, cluster.id, sku), 0)
    if replicas > running:
        return (
            f"{where}/{sku}: {replicas} replicas on a cluster that is not schedulable ({cluster.state}), "
            f"only {running} running there may be kept"
        )
    return None


def greedy_place(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    start: dict[PlacementKey, int] | None = None,
    guide: dict[PlacementKey, float] | None = None,
) -> dict[PlacementKey, int]:
    """Place replicas greedily: highest tier first, each deployment on its cheapest candidates.

    Within a tier, deployments with more GPUs per replica go first, as in first-fit-decreasing bin
    packing. ``start`` is a partial plan that fits the capacity (for example a rounded-down LP
    solution): each deployment keeps its start replicas and greedy adds the rest. ``guide`` maps a
    placement to replicas that should go there first, ahead of cheaper pairs (for example the
    fractional parts of an LP solution). The result meets every hard constraint; it is the MILP's
    warm start and its fallback. Held candidates take no free GPUs: each keeps at most its
    ``held`` replicas.
    """
    remaining: dict[tuple[int, str], int] = {}
    held: dict[int, dict[tuple[int, str], int]] = defaultdict(dict)  # deployment id -> held pair -> replicas
    for entry in candidates:
        for cand in entry.candidates:
            if cand.held:
                held[entry.deployment.id][cand.cluster, cand.sku] = cand.held
            else:
                remaining[cand.cluster, cand.sku] = cand.free_gpus
    bases: dict[int, dict[tuple[int, str], int]] = defaultdict(dict)
    gpus_by_deployment = {entry.deployment.id: entry.deployment.gpus_per_replica for entry in candidates}
    for (deployment_id, cluster_id, sku), replicas in (start or {}).items():
        if replicas <= 0:
            continue
        pair = (table.index_by_id[cluster_id], sku)
        limit = held[deployment_id].get(pair)
        if limit is not None:
            bases[deployment_id][pair] = min(replicas, limit)
        elif pair in remaining:
            bases[deployment_id][pair] = replicas
            remaining[pair] -= replicas * gpus_by_deployment[deployment_id]

    assignments: dict[PlacementKey, int] = {}
    order = sorted(
        range(len(candidates)),
        key=lambda i: (candidates[i].deployment.tier_rank, -candidates[i].deployment.gpus_per_replica, i),
    )
    for i in order:
        entry = candidates[i]
        gpus = entry.deployment.gpus_per_replica
        base = bases.get(entry.deployment.id, {})
        for pair, replicas in base.items():
            if pair in remaining:
                remaining[pair] += replicas * gpus
        shares = {}
        for cand in entry.candidates:
            share = (guide or {}).get((entry.deployment.id, cand.cluster_id, cand.sku), 0.0)
            if share > 0:
                shares[cand.cluster, cand.sku] = share
        placement = _place_deployment(problem, table, entry, remaining, base, shares)
        for (cluster_index, sku), replicas in placement.items():
            if (cluster_index, sku) in remaining:
                remaining[cluster_index, sku] -= replicas * gpus
            assignments[entry.deployment.id, table.clusters[cluster_index].id, sku] = replicas
    return assignments


class _Counts:
    """One deployment's replicas per cluster, provider and region while greedy places them."""

    def __init__(self, deployment: DeploymentInput, table: ClusterTable):
        self.caps = spread_caps(deployment)
        self.table = table
        self.per_cluster: dict[int, int] = defaultdict(int)
        self.per_provider: dict[str, int] = defaultdict(int)
        self.per_region: dict[str, int] = defaultdict(int)

    def room(self, cluster: int) -> int:
        """Return how many more replicas ``cluster`` may take under the spread caps."""
        room = self.caps.cluster - self.per_cluster[cluster]
        if self.caps.provider is not None:
            room = min(room, self.caps.provider - self.per_provider[self.table.providers[cluster]])
        if self.caps.region is not None:
            room = min(room, self.caps.region - self.per_region[self.table.regions[cluster]])
        return room

    def add(self, cluster: int, replicas: int) -> None:
        self.per_cluster[cluster] += replicas
        self.per_provider[self.table.providers[cluster]] += replicas
        self.per_region[self.table.regions[cluster]] += replicas


def _place_deployment(
    problem: ProblemInput,
    table: ClusterTable,
    entry: DeploymentCandidates,
    remaining: dict[tuple[int, str], int],
    base: dict[tuple[int, str], int],
    shares: dict[tuple[int, str], float],
) -> dict[tuple[int, str], int]:
    """Choose replicas for one deployment, one at a time, each on the cheapest pair with room left.

    Starts from the ``base`` replicas. A pair where the deployment runs now is cheaper by the churn
    its replica would otherwise cost. A held pair has room for its ``held`` replicas, any other pair
    for what ``remaining`` GPUs allow, and no cluster, provider or region takes more than the caps
    of the spread mode (``placements.scheduler.spread``). Under the full spread rule, while it needs
    more providers or regions, the next replica goes to a new one. Otherwise pairs with a larger
    share in ``shares`` come first (largest remainder first, for an LP solution's fractional parts),
    and each replica placed there uses up one unit of the share. Returns (cluster index, SKU) ->
    replicas, empty when no placement meets the spread rule.
    """
    deployment = entry.deployment
    gpus = deployment.gpus_per_replica
    full_rule = deployment.spread == SPREAD_FULL and deployment.replicas >= 2
    churn = {cand.cluster: churn_cost_per_replica(deployment, cand.cluster_id) for cand in entry.candidates}
    running = {
        (cand.cluster, cand.sku): problem.current.get((deployment.id, cand.cluster_id, cand.sku), 0)
        for cand in entry.candidates
    }
    held = {(cand.cluster, cand.sku): cand.held for cand in entry.candidates if cand.held}

    chosen: dict[tuple[int, str], int] = defaultdict(int)
    counts = _Counts(deployment, table)
    grouped = counts.caps.provider is not None or counts.caps.region is not None
    providers: set[str] = set()
    regions: set[str] = set()
    shares = dict(shares)
    for (cluster, sku), replicas in base.items():
        # A start plan may put more replicas in one cluster, provider or region than the caps allow.
        kept = min(replicas, counts.room(cluster), held.get((cluster, sku), replicas) - chosen[cluster, sku])
        if kept <= 0:
            continue
        chosen[cluster, sku] += kept
        counts.add(cluster, kept)
        providers.add(table.providers[cluster])
        regions.add(table.regions[cluster])

    for _ in range(deployment.replicas - sum(chosen.values())):
        need_provider = full_rule and len(providers) < deployment.min_providers
        need_region = full_rule and len(regions) < deployment.min_regions
        best, best_key = None, (False, 0.0, 0.0)
        for cand in entry.candidates:
            pair = (cand.cluster, cand.sku)
            if cand.held:
                if chosen[pair] >= cand.held:
                    continue
            elif remaining[pair] - chosen[pair] * gpus < gpus:
                continue
            if counts.per_cluster[cand.cluster] >= counts.caps.cluster or (grouped and counts.room(cand.cluster) <= 0):
                continue
            adds_group = (need_provider and table.providers[cand.cluster] not in providers) or (
                need_region and table.regions[cand.cluster] not in regions
            )
            cost = cand.cost.total - (churn[cand.cluster] if chosen[pair] < running[pair] else 0.0)
            share = shares.get(pair, 0.0)
            key = (adds_group, min(share, 1.0) if share > 1e-6 else 0.0, -cost)
            if best is None or key > best_key:
                best, best_key = pair, key
        if best is None:
            break
        if best in shares:
            shares[best] -= 1.0
        chosen[best] += 1
        counts.add(best[0], 1)
        providers.add(table.providers[best[0]])
        regions.add(table.regions[best[0]])

    return _trim_to_spread(deployment, table, chosen)


def _trim_to_spread(
    deployment: DeploymentInput, table: ClusterTable, chosen: dict[tuple[int, str], int]
) -> dict[tuple[int, str], int]:
    """Drop replicas from the fullest cluster until the spread rule holds; drop all if it cannot.

    Only the full rule can fail here: ``_place_deployment`` keeps the caps of the other modes.
    """
    chosen = {pair: replicas for pair, replicas in chosen.items() if replicas > 0}
    while chosen:
        clusters = {table.clusters[index].id: table.clusters[index] for index, _sku in chosen}
        by_cluster: dict[int, int] = defaultdict(int)
        for (index, _sku), replicas in chosen.items():
            by_cluster[table.clusters[index].id] += replicas
        if spread_violation(deployment, by_cluster, clusters) is None:
            return chosen

        # Dropping replicas never adds a provider or region, so only a one-cluster placement is fixable.
        providers = {cluster.provider for cluster in clusters.values()}
        regions = {cluster.region for cluster in clusters.values()}
        too_few = len(providers) < deployment.min_providers or len(regions) < deployment.min_regions
        if deployment.spread == SPREAD_FULL and too_few:
            return {}
        fullest = max(by_cluster, key=lambda cluster_id: by_cluster[cluster_id])
        pair = next(pair for pair in chosen if table.clusters[pair[0]].id == fullest)
        chosen[pair] -= 1
        if chosen[pair] == 0:
            del chosen[pair]
    return chosen
