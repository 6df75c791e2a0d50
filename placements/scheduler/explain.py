"""Explanations of each deployment's placement and of the clusters not used, as compact JSON-ready data.

Format, per deployment id::

    {
      "deployment": "acme/chat", "tier": "gold", "desired": 4, "placed": 4, "unmet": 0,
      "chosen": [{"cluster": "aws-use1-a", "sku": "H100", "replicas": 2, "rtt_ms": 12.3,
                  "preference_rank": 0, "price_per_gpu_hour": 2.5, "running_now": 2, "held": False,
                  "why": "nearest to its users (12 ms); preferred region #1; USD 2.50/GPU-hour"}],
      "not_chosen": [{"reason": "locked_out", "message": "locked out by ...", "count": 412,
                      "clusters": ["gcp-euw4-a", ...]}],
    }

``preference_rank`` is 0-based and None for an unlisted region. ``held`` is True for replicas kept
on a cluster that is not schedulable (cordoned, suspect, recovering, or lost for a deployment that
keeps its replicas there), whose ``why`` names the cluster's state. Each other cluster is counted once,
under one reason. The candidate filter gives locked_out, wrong_sku, not_schedulable, full, excluded
(the deployment may not use it now) or pruned. A candidate that the plan left unused gets full
(taken by other placements), spread (using it would break the spread rule), released (a held
cluster whose running replicas the plan does not keep), penalised (it lost the deployment's
replicas repeatedly), farther, lower_preference or costlier. Each group lists at most
``SAMPLE_NAMES`` cluster names; ``count`` covers all of them.
"""

from collections import defaultdict

from .candidates import FULL, SAMPLE_NAMES, Candidate, ClusterTable, DeploymentCandidates
from .problem import PlacementKey, ProblemInput

FARTHER = "farther"
LOWER_PREFERENCE = "lower_preference"
COSTLIER = "costlier"
SPREAD = "spread"
RELEASED = "released"
PENALISED = "penalised"
REPEATED_LOSSES = "deprioritised: it lost this deployment's replicas repeatedly"
RTT_TOLERANCE_MS = 0.5  # RTT differences below this are treated as equal


def remaining_gpus(
    table: ClusterTable, candidates: list[DeploymentCandidates], assignments: dict[PlacementKey, int]
) -> dict[tuple[int, str], int]:
    """Return (cluster index, SKU) -> free GPUs left after the plan, for every candidate pair."""
    used: dict[tuple[int, str], int] = defaultdict(int)
    gpus = {entry.deployment.id: entry.deployment.gpus_per_replica for entry in candidates}
    for (deployment_id, cluster_id, sku), replicas in assignments.items():
        used[table.index_by_id[cluster_id], sku] += replicas * gpus.get(deployment_id, 0)
    remaining = {}
    for entry in candidates:
        for cand in entry.candidates:
            if cand.held:  # a held pair takes no free GPUs
                continue
            pair = (cand.cluster, cand.sku)
            remaining[pair] = cand.free_gpus - used[pair]
    return remaining


def _why_chosen(cand: Candidate, nearest_rtt: float, cheapest_price: float, has_preference: bool, origins: bool) -> str:
    parts = []
    if origins:
        rtt = cand.cost.rtt_ms
        if rtt <= nearest_rtt + RTT_TOLERANCE_MS:
            parts.append(f"nearest to its users ({rtt:.0f} ms)")
        else:
            parts.append(f"{rtt:.0f} ms from its users (nearest candidate: {nearest_rtt:.0f} ms)")
    if has_preference:
        rank = cand.cost.preference_rank
        parts.append(f"preferred region #{rank + 1}" if rank is not None else "region not in its preference list")
    price = cand.cost.price_per_gpu_hour
    parts.append(f"USD {price:.2f}/GPU-hour" + (" (cheapest)" if price <= cheapest_price else ""))
    return "; ".join(parts)


def explain_deployment(
    problem: ProblemInput,
    table: ClusterTable,
    entry: DeploymentCandidates,
    assignments: dict[PlacementKey, int],
    remaining: dict[tuple[int, str], int],
) -> dict:
    """Return the explanation of one deployment's placement (see the module docstring)."""
    deployment = entry.deployment
    gpus = deployment.gpus_per_replica
    used_pairs = []
    for cand in entry.candidates:
        replicas = assignments.get((deployment.id, table.clusters[cand.cluster].id, cand.sku), 0)
        if replicas > 0:
            used_pairs.append((cand, replicas))
    placed = sum(replicas for _cand, replicas in used_pairs)

    nearest = min((cand.cost.rtt_ms for cand in entry.candidates), default=0.0)
    cheapest = min((cand.cost.price_per_gpu_hour for cand in entry.candidates), default=0.0)
    chosen = []
    for cand, replicas in used_pairs:
        cluster = table.clusters[cand.cluster]
        why = _why_chosen(cand, nearest, cheapest, bool(deployment.region_preference), bool(deployment.origins))
        if cand.held:
            why = f"kept where it runs on a {cluster.state} cluster, which takes no new replicas; {why}"
        if cluster.id in deployment.penalised_clusters:
            why = f"{why}; {REPEATED_LOSSES}"
        chosen.append(
            {
                "cluster": cluster.name,
                "sku": cand.sku,
                "replicas": replicas,
                "rtt_ms": round(cand.cost.rtt_ms, 1),
                "preference_rank": cand.cost.preference_rank,
                "price_per_gpu_hour": cand.cost.price_per_gpu_hour,
                "running_now": problem.current.get((deployment.id, cluster.id, cand.sku), 0),
                "held": bool(cand.held),
                "why": why,
            }
        )

    not_chosen = [group.as_dict() for group in entry.rejections]
    not_chosen.extend(_unused_candidate_groups(table, entry, used_pairs, remaining, deployment.replicas - placed))
    return {
        "deployment": deployment.name,
        "tier": deployment.tier,
        "desired": deployment.replicas,
        "placed": placed,
        "unmet": deployment.replicas - placed,
        "gpus_per_replica": gpus,
        "chosen": chosen,
        "not_chosen": not_chosen,
    }


def _unused_candidate_groups(table, entry, used_pairs, remaining, unmet) -> list[dict]:
    """Group the candidate clusters that the plan left unused by one reason each."""
    deployment = entry.deployment
    gpus = deployment.gpus_per_replica
    used_clusters = {cand.cluster for cand, _replicas in used_pairs}
    farthest_rtt = max((cand.cost.rtt_ms for cand, _replicas in used_pairs), default=0.0)
    worst_rank = max(
        (_rank_order(cand.cost.preference_rank) for cand, _replicas in used_pairs), default=_rank_order(None)
    )

    best_by_cluster: dict[int, Candidate] = {}
    has_room: dict[int, bool] = defaultdict(bool)
    for cand in entry.candidates:  # cheapest first, so the first pair of a cluster is its best
        if cand.cluster in used_clusters:
            continue
        best_by_cluster.setdefault(cand.cluster, cand)
        has_room[cand.cluster] |= bool(cand.held) or remaining[cand.cluster, cand.sku] >= gpus

    by_reason: dict[str, list[int]] = defaultdict(list)
    for cluster, cand in best_by_cluster.items():
        if not has_room[cluster]:
            reason = FULL
        elif unmet > 0:
            reason = SPREAD
        elif cand.held:
            reason = RELEASED
        elif cand.cluster_id in deployment.penalised_clusters:
            reason = PENALISED
        elif cand.cost.rtt_ms > farthest_rtt + RTT_TOLERANCE_MS:
            reason = FARTHER
        elif _rank_order(cand.cost.preference_rank) > worst_rank:
            reason = LOWER_PREFERENCE
        else:
            reason = COSTLIER
        by_reason[reason].append(cluster)

    messages = {
        FULL: "full: its free GPUs went to other placements",
        SPREAD: "unused: it cannot be added without breaking the spread rule",
        RELEASED: "not kept: the cluster takes no new replicas, and the plan places its running ones elsewhere "
        "or needs fewer",
        PENALISED: f"unused, {REPEATED_LOSSES}",
        FARTHER: f"farther from its users than the chosen clusters (they are within {farthest_rtt:.0f} ms)",
        LOWER_PREFERENCE: "lower in its region preference than the chosen clusters",
        COSTLIER: "costlier overall (price, latency and preference) than the chosen clusters",
    }
    groups = []
    for reason, clusters in by_reason.items():
        names = [table.clusters[index].name for index in clusters[:SAMPLE_NAMES]]
        groups.append({"reason": reason, "message": messages[reason], "count": len(clusters), "clusters": names})
    return groups


def _rank_order(rank: int | None) -> float:
    return float("inf") if rank is None else rank


def explain_plan(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    assignments: dict[PlacementKey, int],
) -> dict[int, dict]:
    """Return deployment id -> explanation for every deployment of the problem."""
    remaining = remaining_gpus(table, candidates, assignments)
    return {
        entry.deployment.id: explain_deployment(problem, table, entry, assignments, remaining) for entry in candidates
    }
