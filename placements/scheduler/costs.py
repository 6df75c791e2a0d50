"""The scheduler's objective: the cost of each placed replica and the penalty of each unmet one.

Units and weights. Every term is a dimensionless cost *per GPU*, multiplied by the deployment's GPUs
per replica, so a replica of 8 GPUs weighs 8 times a replica of 1 GPU when they compete for the
same capacity:

- latency: traffic-weighted estimated RTT from the demand origins, 1 unit per 100 ms, capped at 4;
- preference: listed region of rank r (0 is the most preferred) in a list of L costs r / L, an
  unlisted region costs 1, so it comes after every listed one; 0 for all without a list;
- price: 1 unit per USD 4 per GPU-hour, capped at 4 (a SKU without a price costs 0);
- penalty: PENALISED_CLUSTER_PER_GPU on a cluster in the deployment's ``penalised_clusters``;
- churn: up to 1 unit for each running replica that the plan removes from a (cluster, SKU), 0 for
  a deployment with ``churn_free`` set. Where the deployment's traffic is measured
  (``served_per_replica``), a cluster whose replicas serve r requests per second each, against
  r_max on its busiest cluster, costs MIN_CHURN_SHARE + (1 - MIN_CHURN_SHARE) x r / r_max, so a
  scale-down removes replicas where they serve the least; without measurements it costs 1;
- unmet: TIER_GAP_PER_GPU x (1 + lowest tier rank - tier rank) for each replica not placed.

A placement on a cluster that is not penalised therefore costs at most MAX_PLACEMENT_COST_PER_GPU
per GPU, including the churn it can cause. Tier penalties are TIER_GAP_PER_GPU apart, which is more
than that maximum, so serving one more GPU of a higher tier always beats serving, or keeping, one
GPU of a lower tier, and every tier's penalty beats any placement cost. Keeping the ratio of the
largest to the smallest coefficient near 100 keeps HiGHS's branch and bound well conditioned:
penalties of 1e3-1e5 beside costs of 10-1,000 made it stall.

The penalty equals the largest latency + preference + price cost a placement can have (9 per GPU).
A penalised pair therefore never costs less than any pair that is not penalised, so a penalised
cluster gets replicas only when no other candidate has room or the spread rule needs it (or at a
tie, when every cost of the other pair is at its cap). A running replica leaves a penalised
cluster for any pair that costs less than its current pair plus 8 to 8.5 per GPU (the penalty minus
the churn, which is 0.5 to 1). A penalised placement with the churn it causes costs at most
9 + 9 + 1 = 19 per GPU, still less than TIER_GAP_PER_GPU (20), so the tier order above holds on
penalised clusters too and an unmet replica always costs more than a penalised placement.
"""

from dataclasses import dataclass

import numpy as np

from .geo import estimate_rtt_ms, haversine_km, haversine_km_array
from .problem import ClusterInput, DeploymentInput

LATENCY_MS_PER_UNIT = 100.0
LATENCY_CAP = 4.0
PRICE_USD_PER_UNIT = 4.0  # USD per GPU-hour
PRICE_CAP = 4.0
PREFERENCE_WEIGHT = 1.0
UNLISTED_REGION_PREFERENCE = 1.0
CHURN_PER_GPU = 1.0
# The churn of removing a replica that serves no measured demand, as a share of CHURN_PER_GPU. Above
# 0, so an idle replica still does not move for a gain smaller than this.
MIN_CHURN_SHARE = 0.5
# The largest latency + preference + price cost of one GPU.
MAX_PAIR_COST_PER_GPU = LATENCY_CAP + PREFERENCE_WEIGHT * UNLISTED_REGION_PREFERENCE + PRICE_CAP
MAX_PLACEMENT_COST_PER_GPU = MAX_PAIR_COST_PER_GPU + CHURN_PER_GPU
TIER_GAP_PER_GPU = 2.0 * MAX_PLACEMENT_COST_PER_GPU
PENALISED_CLUSTER_PER_GPU = MAX_PAIR_COST_PER_GPU


@dataclass(frozen=True)
class ReplicaCost:
    """The cost of one replica of a deployment on one (cluster, SKU), by term, with its inputs."""

    rtt_ms: float  # traffic-weighted estimated RTT; 0 for a deployment without demand origins
    preference_rank: int | None  # 0-based rank in the deployment's region preference; None if unlisted
    price_per_gpu_hour: float
    latency: float
    preference: float
    price: float
    penalty: float = 0.0  # on a cluster that lost the deployment's replicas repeatedly

    @property
    def total(self) -> float:
        return self.latency + self.preference + self.price + self.penalty


def weighted_rtt_ms(deployment: DeploymentInput, latitude: float, longitude: float) -> float:
    """Return the share-weighted estimated RTT in ms from the deployment's origins to a point."""
    total_share = sum(origin.share for origin in deployment.origins)
    if total_share <= 0:
        return 0.0
    rtt = 0.0
    for origin in deployment.origins:
        distance = haversine_km(origin.latitude, origin.longitude, latitude, longitude)
        rtt += origin.share * estimate_rtt_ms(distance)
    return rtt / total_share


def weighted_rtt_ms_array(deployment: DeploymentInput, latitudes: np.ndarray, longitudes: np.ndarray) -> np.ndarray:
    """Return ``weighted_rtt_ms`` for arrays of points."""
    total_share = sum(origin.share for origin in deployment.origins)
    rtt = np.zeros(len(latitudes))
    if total_share <= 0:
        return rtt
    for origin in deployment.origins:
        distance = haversine_km_array(origin.latitude, origin.longitude, latitudes, longitudes)
        rtt += origin.share * estimate_rtt_ms(distance)
    return rtt / total_share


def latency_cost_per_gpu(rtt_ms):
    """Return the latency term per GPU for an RTT in ms (a float or a numpy array)."""
    return np.minimum(rtt_ms / LATENCY_MS_PER_UNIT, LATENCY_CAP)


def price_cost_per_gpu(price_per_gpu_hour):
    """Return the price term per GPU for a price in USD per GPU-hour (a float or a numpy array)."""
    return np.minimum(price_per_gpu_hour / PRICE_USD_PER_UNIT, PRICE_CAP)


def preference_rank(deployment: DeploymentInput, region: str) -> int | None:
    """Return the 0-based rank of ``region`` in the deployment's preference, or None if unlisted."""
    try:
        return deployment.region_preference.index(region)
    except ValueError:
        return None


def preference_cost_per_gpu(deployment: DeploymentInput, rank: int | None) -> float:
    """Return the preference term per GPU for a rank from ``preference_rank``."""
    if not deployment.region_preference:
        return 0.0
    if rank is None:
        return PREFERENCE_WEIGHT * UNLISTED_REGION_PREFERENCE
    return PREFERENCE_WEIGHT * rank / len(deployment.region_preference)


def replica_cost(deployment: DeploymentInput, cluster: ClusterInput, sku: str) -> ReplicaCost:
    """Return the cost of one replica of ``deployment`` on ``cluster`` with ``sku``."""
    gpus = deployment.gpus_per_replica
    rtt = weighted_rtt_ms(deployment, cluster.latitude, cluster.longitude)
    rank = preference_rank(deployment, cluster.region)
    price = cluster.price_per_gpu_hour.get(sku, 0.0)
    return ReplicaCost(
        rtt_ms=rtt,
        preference_rank=rank,
        price_per_gpu_hour=price,
        latency=gpus * float(latency_cost_per_gpu(rtt)),
        preference=gpus * preference_cost_per_gpu(deployment, rank),
        price=gpus * float(price_cost_per_gpu(price)),
        penalty=penalty_per_replica(deployment, cluster.id),
    )


def penalty_per_replica(deployment: DeploymentInput, cluster_id: int) -> float:
    """Return the extra cost of one replica of ``deployment`` on the cluster ``cluster_id``."""
    if cluster_id in deployment.penalised_clusters:
        return PENALISED_CLUSTER_PER_GPU * deployment.gpus_per_replica
    return 0.0


def churn_cost_per_replica(deployment: DeploymentInput, cluster_id: int | None = None) -> float:
    """Return the cost of removing one running replica of ``deployment`` from the cluster ``cluster_id``.

    It is 0 for a deployment with ``churn_free`` set (a failback), and at most CHURN_PER_GPU per
    GPU. With measured traffic it is lower on clusters whose replicas serve less demand (see the
    module docstring); ``cluster_id`` None gives the full cost.
    """
    if deployment.churn_free:
        return 0.0
    full = CHURN_PER_GPU * deployment.gpus_per_replica
    if cluster_id is None or not deployment.served_per_replica:
        return full
    served = dict(deployment.served_per_replica)
    busiest = max(served.values())
    if busiest <= 0:
        return full
    return full * (MIN_CHURN_SHARE + (1.0 - MIN_CHURN_SHARE) * served.get(cluster_id, 0.0) / busiest)


def lowest_tier_rank(deployments: list[DeploymentInput]) -> int:
    """Return the largest tier rank (the least important tier) among ``deployments``."""
    return max((deployment.tier_rank for deployment in deployments), default=0)


def unmet_penalty_per_replica(deployment: DeploymentInput, lowest_rank: int) -> float:
    """Return the penalty of one unplaced replica; ``lowest_rank`` comes from ``lowest_tier_rank``."""
    levels_above_lowest = max(0, lowest_rank - deployment.tier_rank)
    return TIER_GAP_PER_GPU * (1 + levels_above_lowest) * deployment.gpus_per_replica
