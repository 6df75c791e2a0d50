"""Node size: a replica needs all its GPUs on one node, so clusters with smaller nodes cannot run it."""

from fleet.kube import NodeGpus
from fleet.telemetry import summarise_gpus
from placements.scheduler import check_plan, solve
from placements.scheduler.problem import ProblemInput, SchedulerOptions
from tests.placements.scheduler_factories import cluster, deployment

OPTIONS = SchedulerOptions(time_limit_s=10, gap_target=0.0)


def test_replica_larger_than_every_node_goes_elsewhere():
    # Cluster 1 is nearer and cheaper, but its nodes have 4 GPUs each.
    small_nodes = cluster(1, free={"H100": 16}, price={"H100": 1.0}, largest_node_gpus={"H100": 4})
    big_nodes = cluster(2, region="eu-central", lat=50.1, lon=8.7, free={"H100": 16}, largest_node_gpus={"H100": 8})
    problem = ProblemInput(clusters=[small_nodes, big_nodes], deployments=[deployment(1, gpus=8)])

    result = solve(problem, OPTIONS)

    assert result.assignments == {(1, 2, "H100"): 1}
    rejected = [group for group in result.explanations[1]["not_chosen"] if group["reason"] == "full"]
    assert any("no node has 8 GPUs" in group["message"] for group in rejected)


def test_replica_that_fits_a_node_may_use_it():
    small_nodes = cluster(1, free={"H100": 16}, price={"H100": 1.0}, largest_node_gpus={"H100": 4})
    problem = ProblemInput(clusters=[small_nodes], deployments=[deployment(1, gpus=4)])

    assert solve(problem, OPTIONS).assignments == {(1, 1, "H100"): 1}


def test_check_plan_reports_replica_larger_than_nodes():
    small_nodes = cluster(1, free={"H100": 16}, largest_node_gpus={"H100": 4})
    problem = ProblemInput(clusters=[small_nodes], deployments=[deployment(1, gpus=8)])

    violations = check_plan(problem, {(1, 1, "H100"): 1})

    assert any("largest node has 4" in violation for violation in violations)


def test_telemetry_records_largest_ready_node():
    nodes = [
        NodeGpus(name="a", gpu_product="NVIDIA-H100-80GB-HBM3", allocatable_gpus=8, ready=False),
        NodeGpus(name="b", gpu_product="NVIDIA-H100-80GB-HBM3", allocatable_gpus=4, ready=True),
        NodeGpus(name="c", gpu_product="NVIDIA-H100-80GB-HBM3", allocatable_gpus=2, ready=True),
    ]

    summary = summarise_gpus(nodes)

    assert summary.by_sku["H100"]["largest_node"] == 4
    assert summary.by_sku["H100"]["allocatable"] == 6
