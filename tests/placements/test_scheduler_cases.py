"""Hand-built placement cases for the scheduler, each checking one rule."""

import json

import pytest

from placements.scheduler import check_plan, evaluate, solve, solve_lp_relaxation
from placements.scheduler.candidates import build_candidates
from placements.scheduler.costs import MAX_PLACEMENT_COST_PER_GPU, TIER_GAP_PER_GPU
from placements.scheduler.problem import LockInput, ProblemInput, SchedulerOptions
from tests.placements.scheduler_factories import NEW_YORK, cluster, deployment

OPTIONS = SchedulerOptions(time_limit_s=10)


def replicas_by_cluster(result, deployment_id):
    counts = {}
    for (dep, cluster_id, _sku), replicas in result.assignments.items():
        if dep == deployment_id:
            counts[cluster_id] = counts.get(cluster_id, 0) + replicas
    return counts


def test_tier_gap_exceeds_any_placement_cost():
    assert TIER_GAP_PER_GPU > MAX_PLACEMENT_COST_PER_GPU


def test_higher_tier_wins_single_cluster():
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 8})],
        deployments=[deployment(1, gpus=8, tier_rank=3), deployment(2, gpus=8, tier_rank=0)],
    )
    result = solve(problem, OPTIONS)
    assert result.unmet[2] == 0
    assert result.unmet[1] == 1


def test_higher_tier_fully_placed_when_capacity_short():
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 8}), cluster(2, provider="gcp", free={"H100": 8})],
        deployments=[
            deployment(1, replicas=4, gpus=2, tier_rank=2),
            deployment(2, replicas=4, gpus=4, tier_rank=0),
        ],
    )
    result = solve(problem, OPTIONS)
    assert result.unmet[2] == 0
    assert result.unmet[1] == 4


def test_tier_beats_gpu_count_when_capacity_short():
    # One 8-GPU high-tier replica against eight 1-GPU low-tier replicas.
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 8})],
        deployments=[deployment(1, replicas=1, gpus=8, tier_rank=0)]
        + [deployment(10 + i, gpus=1, tier_rank=1) for i in range(8)],
    )
    result = solve(problem, OPTIONS)
    assert result.unmet[1] == 0


def test_spread_forbids_all_replicas_in_one_cluster():
    problem = ProblemInput(clusters=[cluster(1, free={"H100": 64})], deployments=[deployment(1, replicas=3)])
    result = solve(problem, OPTIONS)
    assert result.unmet[1] == 3
    assert result.assignments == {}


def test_spread_uses_two_clusters():
    problem = ProblemInput(
        clusters=[cluster(1), cluster(2, provider="gcp", lat=48.86, lon=2.35)],
        deployments=[deployment(1, replicas=4)],
    )
    result = solve(problem, OPTIONS)
    counts = replicas_by_cluster(result, 1)
    assert sum(counts.values()) == 4
    assert max(counts.values()) < 4


def test_min_providers_places_across_providers():
    problem = ProblemInput(
        clusters=[
            cluster(1, provider="aws", region="eu-west"),
            cluster(2, provider="aws", region="eu-central", lat=50.11, lon=8.68),
            cluster(3, provider="gcp", region="us-east", jurisdiction="US", lat=39.0, lon=-77.5),
        ],
        deployments=[deployment(1, replicas=3, min_providers=2)],
    )
    result = solve(problem, OPTIONS)
    providers = {problem.clusters[cluster_id - 1].provider for cluster_id in replicas_by_cluster(result, 1)}
    assert result.unmet[1] == 0
    assert providers == {"aws", "gcp"}


def test_min_providers_unreachable_leaves_deployment_unmet():
    problem = ProblemInput(
        clusters=[cluster(1), cluster(2, region="eu-central", lat=50.11, lon=8.68)],
        deployments=[deployment(1, replicas=2, min_providers=2)],
    )
    result = solve(problem, OPTIONS)
    assert result.unmet[1] == 2


def test_jurisdiction_lock_keeps_replica_in_eu():
    lock = LockInput("customer bank", "GDPR", allowed_jurisdictions=frozenset({"EU"}))
    problem = ProblemInput(
        clusters=[
            cluster(1, region="eu-west", jurisdiction="EU", price={"H100": 9.0}),
            cluster(2, region="us-east", jurisdiction="US", lat=40.7, lon=-74.0, price={"H100": 1.0}),
        ],
        deployments=[deployment(1, origins=(NEW_YORK,), locks=(lock,))],
    )
    result = solve(problem, OPTIONS)
    assert result.assignments == {(1, 1, "H100"): 1}


def test_nearest_cluster_chosen_for_users():
    problem = ProblemInput(
        clusters=[cluster(1, region="eu-west"), cluster(2, region="us-east", lat=40.7, lon=-74.0)],
        deployments=[deployment(1, origins=(NEW_YORK,))],
    )
    result = solve(problem, OPTIONS)
    assert result.assignments == {(1, 2, "H100"): 1}


def test_unlisted_region_comes_after_listed_ones():
    problem = ProblemInput(
        clusters=[cluster(1, region="eu-west"), cluster(2, region="eu-central"), cluster(3, region="eu-north")],
        deployments=[deployment(1, origins=(), region_preference=("aws/eu-north", "aws/eu-central"))],
    )
    result = solve(problem, OPTIONS)
    assert result.assignments == {(1, 3, "H100"): 1}


def test_alternative_sku_used_when_primary_full():
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 0, "A100": 8})],
        deployments=[deployment(1, gpus=4, skus=("H100", "A100"))],
    )
    result = solve(problem, OPTIONS)
    assert result.assignments == {(1, 1, "A100"): 1}


def test_unschedulable_cluster_not_used():
    problem = ProblemInput(
        clusters=[cluster(1, schedulable=False, state="cordoned"), cluster(2, region="eu-central")],
        deployments=[deployment(1)],
    )
    result = solve(problem, OPTIONS)
    assert result.assignments == {(1, 2, "H100"): 1}


def test_unchanged_problem_keeps_running_replicas():
    problem = ProblemInput(
        clusters=[cluster(1), cluster(2, provider="gcp", lat=48.86, lon=2.35), cluster(3, provider="oci")],
        deployments=[deployment(1, replicas=4, gpus=2), deployment(2, replicas=2, gpus=4)],
        current={(1, 3, "H100"): 2, (1, 2, "H100"): 2, (2, 3, "H100"): 1, (2, 2, "H100"): 1},
    )
    result = solve(problem, OPTIONS)
    assert result.assignments == problem.current
    assert result.objective_terms["churn"] == 0


def test_check_plan_reports_each_violation():
    lock = LockInput("customer bank", "GDPR", allowed_jurisdictions=frozenset({"EU"}))
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 4}), cluster(2, jurisdiction="US", region="us-east")],
        deployments=[deployment(1, replicas=2, gpus=4, locks=(lock,)), deployment(2, replicas=1)],
    )
    violations = check_plan(problem, {(1, 1, "H100"): 2, (1, 2, "H100"): 1, (2, 1, "A100"): 1})
    text = "\n".join(violations)
    assert "8 GPUs placed, 4 free" in text
    assert "jurisdiction US is not allowed" in text
    assert "SKU A100 is not one of" in text
    assert "3 replicas placed, 2 desired" in text


def test_check_plan_reports_single_cluster_spread():
    problem = ProblemInput(clusters=[cluster(1)], deployments=[deployment(1, replicas=2)])
    assert check_plan(problem, {(1, 1, "H100"): 2}) == ["d1: all 2 placed replicas are in one cluster"]


def test_evaluate_terms_sum_to_objective():
    problem = ProblemInput(
        clusters=[cluster(1), cluster(2, provider="gcp")],
        deployments=[deployment(1, replicas=2), deployment(2, replicas=3)],
        current={(2, 1, "H100"): 1},
    )
    objective, terms = evaluate(problem, {(1, 1, "H100"): 1, (1, 2, "H100"): 1})
    assert objective == pytest.approx(sum(terms.values()))
    assert terms["churn"] > 0
    assert terms["unmet"] > 0


def test_lp_relaxation_bounds_plan_objective():
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 8}), cluster(2, provider="gcp", free={"H100": 8}, lat=48.9, lon=2.3)],
        deployments=[deployment(i, replicas=2, gpus=2, tier_rank=i % 3) for i in range(1, 7)],
    )
    result = solve(problem, OPTIONS)
    assert solve_lp_relaxation(problem, OPTIONS) <= result.objective + 1e-6


def test_pruning_keeps_cluster_running_now():
    clusters = [cluster(i, lat=50.0 + i, lon=0.0) for i in range(1, 11)]
    problem = ProblemInput(clusters=clusters, deployments=[deployment(1)], current={(1, 10, "H100"): 1})
    _table, candidates = build_candidates(problem, SchedulerOptions(max_candidates=2))
    kept = {candidate.cluster for candidate in candidates[0].candidates}
    assert 9 in kept


def test_pruned_clusters_are_explained():
    clusters = [cluster(i, lat=50.0 + i, lon=0.0, free={"H100": 64}) for i in range(1, 11)]
    problem = ProblemInput(clusters=clusters, deployments=[deployment(1)])
    result = solve(problem, SchedulerOptions(max_candidates=2, time_limit_s=10))
    reasons = {group["reason"]: group for group in result.explanations[1]["not_chosen"]}
    assert reasons["pruned"]["count"] == 8
    assert reasons["pruned"]["message"] == "farther / costlier than the 2 candidates considered"


def test_explanation_names_lock_and_reasons():
    lock = LockInput("customer bank", "GDPR", allowed_jurisdictions=frozenset({"EU"}))
    problem = ProblemInput(
        clusters=[
            cluster(1),
            cluster(2, region="us-east", jurisdiction="US"),
            cluster(3, free={"A100": 8}),
            cluster(4, schedulable=False, state="down"),
            cluster(5, free={"H100": 0}),
            cluster(6, lat=35.7, lon=139.7),
        ],
        deployments=[deployment(1, locks=(lock,))],
    )
    result = solve(problem, OPTIONS)
    explanation = result.explanations[1]
    reasons = {group["reason"]: group for group in explanation["not_chosen"]}
    assert explanation["chosen"][0]["cluster"] == "c1"
    assert "nearest to its users" in explanation["chosen"][0]["why"]
    assert "customer bank" in reasons["locked_out"]["message"]
    assert reasons["locked_out"]["clusters"] == ["c2"]
    assert reasons["wrong_sku"]["clusters"] == ["c3"]
    assert reasons["not_schedulable"]["clusters"] == ["c4"]
    assert reasons["full"]["clusters"] == ["c5"]
    assert reasons["farther"]["clusters"] == ["c6"]
    assert json.loads(json.dumps(result.explanations)) == {"1": explanation}


def test_empty_problem_returns_empty_plan():
    result = solve(ProblemInput(clusters=[], deployments=[]), OPTIONS)
    assert result.assignments == {}
    assert result.solver == "greedy"


def test_thread_count_change_still_solves():
    problem = ProblemInput(clusters=[cluster(1), cluster(2, provider="gcp")], deployments=[deployment(1, replicas=2)])
    solve(problem, SchedulerOptions(time_limit_s=10, threads=2))
    result = solve(problem, SchedulerOptions(time_limit_s=10, threads=1))
    assert result.solver == "highs"
    assert result.unmet[1] == 0
