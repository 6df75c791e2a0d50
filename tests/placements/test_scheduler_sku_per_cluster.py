"""One SKU per deployment and cluster: a cluster runs one Kubernetes Deployment per MCM deployment."""

from collections import defaultdict

from placements.scheduler import solve
from placements.scheduler.problem import ProblemInput, SchedulerOptions
from tests.placements.scheduler_factories import cluster, deployment

OPTIONS = SchedulerOptions(time_limit_s=20)


def skus_by_cluster(assignments) -> dict[tuple[int, int], set[str]]:
    used: dict[tuple[int, int], set[str]] = defaultdict(set)
    for (deployment_id, cluster_id, sku), replicas in assignments.items():
        if replicas > 0:
            used[deployment_id, cluster_id].add(sku)
    return used


def test_plan_uses_one_sku_per_cluster():
    # The cheap H100s cannot hold the deployment, so mixing SKUs in one cluster would be tempting.
    clusters = [
        cluster(1, region="a", free={"H100": 2, "H200": 6}, price={"H100": 2.0, "H200": 2.5}),
        cluster(2, region="b", free={"H100": 2, "H200": 6}, price={"H100": 2.0, "H200": 2.5}),
    ]
    problem = ProblemInput(clusters, [deployment(1, replicas=8, skus=("H100", "H200"))])

    result = solve(problem, OPTIONS)

    assert all(len(skus) == 1 for skus in skus_by_cluster(result.assignments).values())


def test_sku_choice_prefers_room_over_price():
    clusters = [
        cluster(1, region="a", free={"H100": 2, "H200": 6}, price={"H100": 2.0, "H200": 2.5}),
        cluster(2, region="b", free={"H100": 2, "H200": 6}, price={"H100": 2.0, "H200": 2.5}),
    ]
    problem = ProblemInput(clusters, [deployment(1, replicas=8, skus=("H100", "H200"))])

    result = solve(problem, OPTIONS)

    assert result.unmet[1] == 0
