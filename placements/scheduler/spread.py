"""The spread rule of a deployment in each of its modes, as caps and as a check of placed replicas.

- SPREAD_FULL, for R >= 2 desired replicas: no single cluster has every placed replica (so placing
  exactly one breaks it too), and the placed replicas span at least ``min_providers`` providers and
  ``min_regions`` regions.
- SPREAD_CAPPED, for R >= 2: each cluster runs at most R - 1 replicas, each provider at most
  R - (min_providers - 1) when min_providers >= 2, and each region at most R - (min_regions - 1) when
  min_regions >= 2. These are the most the full rule allows one cluster, provider or region when all
  R replicas are placed. Placing fewer, even one, is allowed, so a hard-spread deployment stays
  degraded on what is left rather than put more of its replicas together.
- SPREAD_OFF: no rule, so one cluster may hold all R replicas.

Placing nothing never breaks a rule.
"""

from collections import defaultdict
from dataclasses import dataclass

from .problem import SPREAD_CAPPED, SPREAD_FULL, SPREAD_OFF, ClusterInput, DeploymentInput

SPREAD_MODES = (SPREAD_FULL, SPREAD_CAPPED, SPREAD_OFF)


@dataclass(frozen=True)
class SpreadCaps:
    """The maximum replicas of one deployment in one cluster, provider or region; None is no cap."""

    cluster: int
    provider: int | None = None
    region: int | None = None


def check_spread_mode(deployment: DeploymentInput) -> None:
    """Raise ValueError when ``deployment.spread`` is not one of ``SPREAD_MODES``."""
    if deployment.spread not in SPREAD_MODES:
        raise ValueError(
            f"deployment {deployment.name} (id {deployment.id}): invalid spread {deployment.spread!r}; "
            f"expected one of {', '.join(SPREAD_MODES)}"
        )


def spread_caps(deployment: DeploymentInput) -> SpreadCaps:
    """Return the per-cluster, per-provider and per-region caps of ``deployment``'s spread mode."""
    check_spread_mode(deployment)
    replicas = deployment.replicas
    if replicas < 2 or deployment.spread == SPREAD_OFF:
        return SpreadCaps(cluster=replicas)
    if deployment.spread == SPREAD_FULL:
        return SpreadCaps(cluster=replicas - 1)
    provider = max(0, replicas - (deployment.min_providers - 1)) if deployment.min_providers >= 2 else None
    region = max(0, replicas - (deployment.min_regions - 1)) if deployment.min_regions >= 2 else None
    return SpreadCaps(cluster=replicas - 1, provider=provider, region=region)


def spread_violation(
    deployment: DeploymentInput, replicas_by_cluster: dict[int, int], clusters: dict[int, ClusterInput]
) -> str | None:
    """Return why a deployment's placed replicas break the rule of its spread mode, or None.

    ``replicas_by_cluster`` is keyed by cluster id; ``clusters`` maps those ids to their inputs.
    """
    check_spread_mode(deployment)
    placed = sum(replicas_by_cluster.values())
    if deployment.replicas < 2 or placed == 0 or deployment.spread == SPREAD_OFF:
        return None
    used = [cluster_id for cluster_id, replicas in replicas_by_cluster.items() if replicas > 0]
    if deployment.spread == SPREAD_CAPPED:
        return _capped_violation(deployment, replicas_by_cluster, clusters, used)

    largest = max(replicas_by_cluster.values())
    if largest >= placed:
        return f"{deployment.name}: all {placed} placed replicas are in one cluster"
    providers = {clusters[cluster_id].provider for cluster_id in used}
    if len(providers) < deployment.min_providers:
        return f"{deployment.name}: {len(providers)} providers used, {deployment.min_providers} required"
    regions = {clusters[cluster_id].region for cluster_id in used}
    if len(regions) < deployment.min_regions:
        return f"{deployment.name}: {len(regions)} regions used, {deployment.min_regions} required"
    return None


def _capped_violation(
    deployment: DeploymentInput, replicas_by_cluster: dict[int, int], clusters: dict[int, ClusterInput], used: list[int]
) -> str | None:
    caps = spread_caps(deployment)
    for cluster_id in used:
        if replicas_by_cluster[cluster_id] > caps.cluster:
            return (
                f"{deployment.name}: {replicas_by_cluster[cluster_id]} replicas in cluster "
                f"{clusters[cluster_id].name}, at most {caps.cluster} allowed"
            )
    for kind, cap in (("provider", caps.provider), ("region", caps.region)):
        if cap is None:
            continue
        by_group: dict[str, int] = defaultdict(int)
        for cluster_id in used:
            by_group[getattr(clusters[cluster_id], kind)] += replicas_by_cluster[cluster_id]
        for name, replicas in sorted(by_group.items()):
            if replicas > cap:
                return f"{deployment.name}: {replicas} replicas in {kind} {name}, at most {cap} allowed"
    return None
