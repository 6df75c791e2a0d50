"""The scheduler's failover inputs: held pairs, spread modes, penalised and excluded clusters, churn-free failback.

Each rule is checked through ``solve`` and, where it applies, on greedy's plan, on the MILP's own
plan and with ``check_plan`` on hand-written plans. The MILP runs without a greedy warm start, so
that ``solve`` cannot hide an invalid MILP plan behind greedy's.
"""

import random
import time
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placements.scheduler import check_plan, evaluate, solve, solve_lp_relaxation
from placements.scheduler.candidates import EXCLUDED, build_candidates
from placements.scheduler.costs import (
    MAX_PAIR_COST_PER_GPU,
    MAX_PLACEMENT_COST_PER_GPU,
    PENALISED_CLUSTER_PER_GPU,
    TIER_GAP_PER_GPU,
)
from placements.scheduler.greedy import greedy_place
from placements.scheduler.milp import solve_milp
from placements.scheduler.problem import (
    SPREAD_CAPPED,
    SPREAD_FULL,
    SPREAD_OFF,
    DemandOriginInput,
    LockInput,
    ProblemInput,
    SchedulerOptions,
)
from tests.placements.scheduler_factories import NEW_YORK, cluster, deployment

OPTIONS = SchedulerOptions(time_limit_s=20, gap_target=1e-6)


def greedy_plan(problem):
    table, candidates = build_candidates(problem, OPTIONS)
    return greedy_place(problem, table, candidates)


def milp_plan(problem):
    """Return the MILP stages' plan, started from an empty plan instead of greedy's."""
    table, candidates = build_candidates(problem, OPTIONS)
    outcome = solve_milp(problem, table, candidates, OPTIONS, greedy={}, deadline=time.perf_counter() + 20)
    assert outcome.assignments is not None, outcome.status
    return {key: replicas for key, replicas in outcome.assignments.items() if replicas > 0}


def all_plans(problem):
    """Return the plans of ``solve``, greedy and the MILP by name, each checked against the hard constraints."""
    plans = {
        "solve": solve(problem, OPTIONS).assignments,
        "greedy": greedy_plan(problem),
        "milp": milp_plan(problem),
    }
    for name, plan in plans.items():
        assert check_plan(problem, plan) == [], name
    return plans


def on_cluster(plan, deployment_id, cluster_id):
    return sum(n for (dep, cid, _sku), n in plan.items() if dep == deployment_id and cid == cluster_id)


def placed(plan, deployment_id):
    return sum(n for (dep, _cid, _sku), n in plan.items() if dep == deployment_id)


def cordoned(id, **extra):
    extra.setdefault("state", "cordoned")
    return cluster(id, schedulable=False, holds_current=True, **extra)


# holds_current


def test_cordoned_cluster_keeps_running_replicas():
    problem = ProblemInput(
        clusters=[cordoned(1), cluster(2, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1)],
        current={(1, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 1}, name


def test_cordoned_cluster_takes_no_new_deployment():
    problem = ProblemInput(
        clusters=[cordoned(1, free={"H100": 64}), cluster(2, free={"H100": 2}, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1), deployment(2, replicas=1, gpus=4), deployment(3, replicas=1)],
        current={(1, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert on_cluster(plan, 1, 1) == 1, name
        assert on_cluster(plan, 2, 1) == 0, name
        assert on_cluster(plan, 3, 1) == 0, name
        assert placed(plan, 2) == 0, name
    result = solve(problem, OPTIONS)
    assert result.unmet[2] == 1


def test_held_pair_takes_no_capacity():
    # Cluster 1's free GPUs are unknown (none listed) and cluster 2's 4 GPUs are all taken by d2.
    problem = ProblemInput(
        clusters=[cordoned(1, free={}, state="suspect"), cluster(2, free={"H100": 4})],
        deployments=[deployment(1, replicas=1, gpus=4), deployment(2, replicas=1, gpus=4)],
        current={(1, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 1, (2, 2, "H100"): 1}, name


def test_held_pair_keeps_at_most_running():
    # d1 wants 3 replicas and runs 1 on cordoned cluster 1, which has room for many more.
    problem = ProblemInput(
        clusters=[cordoned(1, free={"H100": 64}), cluster(2, free={"H100": 1}, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=3, spread=SPREAD_OFF)],
        current={(1, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 1, (1, 2, "H100"): 1}, name


def test_held_pair_keeps_fewer_when_desired_drops():
    problem = ProblemInput(
        clusters=[cordoned(1), cluster(2, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1)],
        current={(1, 1, "H100"): 3},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 1}, name


def test_lock_removes_held_pair():
    us_only = LockInput("customer acme", "contract", allowed_jurisdictions=frozenset({"US"}))
    problem = ProblemInput(
        clusters=[cordoned(1), cluster(2, region="us-east", jurisdiction="US", lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1, locks=(us_only,))],
        current={(1, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 2, "H100"): 1}, name


def test_held_pair_needs_accepted_sku():
    problem = ProblemInput(
        clusters=[cordoned(1, free={"A100": 8}), cluster(2, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1)],
        current={(1, 1, "A100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 2, "H100"): 1}, name


def test_check_plan_limits_held_pairs():
    problem = ProblemInput(
        clusters=[cordoned(1, free={"H100": 0}), cluster(2, schedulable=False, state="down")],
        deployments=[deployment(1, replicas=3, spread=SPREAD_OFF), deployment(2, replicas=1)],
        current={(1, 1, "H100"): 2, (1, 2, "H100"): 1},
    )
    assert check_plan(problem, {(1, 1, "H100"): 2}) == []
    over = check_plan(problem, {(1, 1, "H100"): 3})
    assert len(over) == 1
    assert "only 2 running there may be kept" in over[0]
    newcomer = check_plan(problem, {(2, 1, "H100"): 1})
    assert len(newcomer) == 1
    assert "only 0 running there may be kept" in newcomer[0]
    lost = check_plan(problem, {(1, 2, "H100"): 1})
    assert lost == ["d1 on c2: cluster is not schedulable (down)"]


# hold_clusters


def test_hold_clusters_keep_replicas_on_lost_cluster():
    lost = cluster(1, schedulable=False, state="down")
    problem = ProblemInput(
        clusters=[lost, cluster(2, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1, hold_clusters=frozenset({1})), deployment(2, replicas=1)],
        current={(1, 1, "H100"): 1, (2, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 1, (2, 2, "H100"): 1}, name
    assert check_plan(problem, {(2, 1, "H100"): 1}) == ["d2 on c1: cluster is not schedulable (down)"]


# spread modes


def provider_outage(spread):
    """Return a deployment of 4 replicas over 2 providers, half of them on the lost provider aws."""
    clusters = [
        cluster(1, provider="aws", schedulable=False, state="down"),
        cluster(2, provider="aws", region="eu-central", schedulable=False, state="down"),
        cluster(3, provider="gcp"),
        cluster(4, provider="gcp", region="eu-central", lat=50.1, lon=8.7),
    ]
    current = {(1, 1, "H100"): 1, (1, 2, "H100"): 1, (1, 3, "H100"): 1, (1, 4, "H100"): 1}
    workload = deployment(1, replicas=4, min_providers=2, spread=spread)
    return ProblemInput(clusters=clusters, deployments=[workload], current=current)


def test_capped_spread_provider_outage():
    problem = provider_outage(SPREAD_CAPPED)
    for name, plan in all_plans(problem).items():
        assert placed(plan, 1) == 3, name  # R - (N - 1) on the surviving provider
        assert on_cluster(plan, 1, 3) >= 1, name
        assert on_cluster(plan, 1, 4) >= 1, name
    assert solve(problem, OPTIONS).unmet[1] == 1


def test_spread_off_provider_outage():
    problem = provider_outage(SPREAD_OFF)
    for name, plan in all_plans(problem).items():
        assert placed(plan, 1) == 4, name
        assert on_cluster(plan, 1, 3) >= 1, name
        assert on_cluster(plan, 1, 4) >= 1, name


def test_full_spread_provider_outage_places_nothing():
    problem = provider_outage(SPREAD_FULL)
    for name, plan in all_plans(problem).items():
        assert placed(plan, 1) == 0, name


def test_spread_off_puts_all_replicas_in_one_cluster():
    problem = ProblemInput(clusters=[cluster(1)], deployments=[deployment(1, replicas=3, spread=SPREAD_OFF)])
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 3}, name


def test_capped_spread_keeps_one_cluster_below_all():
    problem = ProblemInput(clusters=[cluster(1)], deployments=[deployment(1, replicas=3, spread=SPREAD_CAPPED)])
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 2}, name


def test_capped_spread_region_cap():
    clusters = [cluster(1), cluster(2), cluster(3, region="eu-central", lat=50.1, lon=8.7, free={"H100": 1})]
    problem = ProblemInput(
        clusters=clusters, deployments=[deployment(1, replicas=5, min_regions=3, spread=SPREAD_CAPPED)]
    )
    for name, plan in all_plans(problem).items():
        assert on_cluster(plan, 1, 1) + on_cluster(plan, 1, 2) == 3, name  # R - (M - 1) in aws/eu-west
        assert on_cluster(plan, 1, 3) == 1, name


@pytest.mark.parametrize(
    ("spread", "counts", "broken"),
    [
        (SPREAD_FULL, {3: 1}, True),  # exactly one replica
        (SPREAD_FULL, {3: 2, 4: 1}, True),  # one provider, two required
        (SPREAD_CAPPED, {3: 1}, False),
        (SPREAD_CAPPED, {3: 2, 4: 1}, False),
        (SPREAD_CAPPED, {3: 2, 4: 2}, True),  # 4 on gcp, at most 3
        (SPREAD_CAPPED, {3: 4}, True),  # 4 in one cluster, at most 3
        (SPREAD_OFF, {3: 4}, False),
    ],
)
def test_check_plan_spread_modes(spread, counts, broken):
    problem = provider_outage(spread)
    problem.current.clear()
    plan = {(1, cluster_id, "H100"): replicas for cluster_id, replicas in counts.items()}
    assert bool(check_plan(problem, plan)) is broken


def test_invalid_spread_raises():
    problem = ProblemInput(clusters=[cluster(1)], deployments=[deployment(1, replicas=2, spread="loose")])
    with pytest.raises(ValueError, match="invalid spread 'loose'"):
        solve(problem, OPTIONS)


# penalised_clusters


def test_penalty_keeps_tier_gap():
    assert PENALISED_CLUSTER_PER_GPU >= MAX_PAIR_COST_PER_GPU
    assert MAX_PAIR_COST_PER_GPU + PENALISED_CLUSTER_PER_GPU + 1.0 < TIER_GAP_PER_GPU
    assert MAX_PLACEMENT_COST_PER_GPU < TIER_GAP_PER_GPU


def test_penalised_cluster_used_only_when_needed():
    # Cluster 1 is nearest to the users in London; cluster 2 is in New York.
    penalised = frozenset({1})
    far = cluster(2, region="us-east", jurisdiction="US", lat=40.7, lon=-74.0, price={"H100": 12.0})
    problem = ProblemInput(
        clusters=[cluster(1), far], deployments=[deployment(1, replicas=1, gpus=2, penalised_clusters=penalised)]
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 2, "H100"): 1}, name
    result = solve(problem, OPTIONS)
    assert result.objective_terms["penalty"] == 0

    full = ProblemInput(
        clusters=[cluster(1), cluster(2, free={"H100": 1}, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1, gpus=2, penalised_clusters=penalised)],
    )
    for name, plan in all_plans(full).items():
        assert plan == {(1, 1, "H100"): 1}, name
    assert solve(full, OPTIONS).objective_terms["penalty"] == 2 * PENALISED_CLUSTER_PER_GPU


def test_replica_leaves_penalised_cluster():
    problem = ProblemInput(
        clusters=[cluster(1), cluster(2, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1, penalised_clusters=frozenset({1}))],
        current={(1, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 2, "H100"): 1}, name


def test_penalised_low_tier_does_not_beat_high_tier():
    # One 4-GPU slot on each cluster; the high tier is penalised on cluster 1, the low tier runs there.
    problem = ProblemInput(
        clusters=[
            cluster(1, free={"H100": 4}),
            cluster(2, free={"H100": 4}, lat=-33.9, lon=151.2, price={"H100": 20.0}),
        ],
        deployments=[
            deployment(1, replicas=2, gpus=4, tier_rank=0, penalised_clusters=frozenset({1})),
            deployment(2, replicas=1, gpus=4, tier_rank=1),
        ],
        current={(2, 1, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert placed(plan, 1) == 2, name
        assert placed(plan, 2) == 0, name


# excluded_clusters


def test_excluded_cluster_gets_no_candidate():
    problem = ProblemInput(
        clusters=[cluster(1), cluster(2, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1, excluded_clusters=frozenset({1})), deployment(2, replicas=1)],
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 2, "H100"): 1, (2, 1, "H100"): 1}, name
    _table, candidates = build_candidates(problem, OPTIONS)
    assert [cand.cluster_id for cand in candidates[0].candidates] == [2]
    assert check_plan(problem, {(1, 1, "H100"): 1}) == ["d1 on c1: cluster is excluded for this deployment"]


# churn_free


def failback(churn_free):
    # Both regions are in the same place at the same price; only the preference differs (rank 0 vs 1 of 2).
    problem = ProblemInput(
        clusters=[cluster(1, region="eu-west"), cluster(2, region="eu-west2")],
        deployments=[
            deployment(1, replicas=1, region_preference=("aws/eu-west", "aws/eu-west2"), churn_free=churn_free)
        ],
        current={(1, 2, "H100"): 1},
    )
    return problem


def test_churn_free_returns_to_preferred_region():
    for name, plan in all_plans(failback(churn_free=True)).items():
        assert plan == {(1, 1, "H100"): 1}, name
    assert evaluate(failback(churn_free=True), {(1, 1, "H100"): 1})[1]["churn"] == 0


def test_without_churn_free_replica_stays():
    for name, plan in all_plans(failback(churn_free=False)).items():
        assert plan == {(1, 2, "H100"): 1}, name


# tiers, jitter and explanations


def test_tier_order_with_held_pairs():
    problem = ProblemInput(
        clusters=[cluster(1, free={"H100": 4}), cordoned(2, free={"H100": 100}, lat=40.7, lon=-74.0)],
        deployments=[
            deployment(1, replicas=1, gpus=4, tier_rank=0),
            deployment(2, replicas=1, gpus=4, tier_rank=2),
            deployment(3, replicas=1, gpus=4, tier_rank=2),
        ],
        current={(2, 1, "H100"): 1, (3, 2, "H100"): 1},
    )
    for name, plan in all_plans(problem).items():
        assert plan == {(1, 1, "H100"): 1, (3, 2, "H100"): 1}, name
    result = solve(problem, OPTIONS)
    assert result.unmet == {1: 0, 2: 1, 3: 0}


def jitter_fleet():
    places = [(53.3, -6.3), (50.1, 8.7), (40.7, -74.0), (35.7, 139.7), (48.9, 2.4), (37.8, -122.4)]
    providers = ["aws", "gcp", "azure"]
    clusters = [
        cluster(i + 1, provider=providers[i % 3], region=f"r{i}", lat=lat, lon=lon, free={"H100": 48, "A100": 32})
        for i, (lat, lon) in enumerate(places)
    ]
    rng = random.Random(7)
    deployments = []
    for i in range(12):
        lat, lon = rng.choice(places)
        origins = (DemandOriginInput("users", lat + rng.uniform(-2, 2), lon + rng.uniform(-2, 2), 1.0),)
        replicas = rng.randint(1, 4)
        deployments.append(
            deployment(
                i + 1,
                replicas=replicas,
                gpus=rng.choice([1, 2, 4]),
                tier_rank=rng.randint(0, 2),
                skus=rng.choice([("H100",), ("A100",), ("H100", "A100")]),
                min_providers=2 if replicas >= 2 and i % 3 == 0 else 1,
                origins=origins,
            )
        )
    return clusters, deployments


def test_capacity_jitter_moves_nothing():
    clusters, deployments = jitter_fleet()
    first = solve(ProblemInput(clusters=clusters, deployments=deployments), OPTIONS)
    used = defaultdict(int)
    gpus = {d.id: d.gpus_per_replica for d in deployments}
    for (deployment_id, cluster_id, sku), replicas in first.assignments.items():
        used[cluster_id, sku] += replicas * gpus[deployment_id]

    rng = random.Random(11)
    for _round in range(3):
        jittered = []
        for c in clusters:
            free = {sku: max(used[c.id, sku], gpus_free + rng.randint(-3, 3)) for sku, gpus_free in c.free_gpus.items()}
            jittered.append(
                cluster(
                    c.id, provider=c.provider, region=c.region.split("/")[1], lat=c.latitude, lon=c.longitude, free=free
                )
            )
        again = solve(
            ProblemInput(clusters=jittered, deployments=deployments, current=dict(first.assignments)), OPTIONS
        )
        assert again.assignments == first.assignments
        assert again.objective_terms["churn"] == 0


def test_explanations_of_failover_inputs():
    problem = ProblemInput(
        clusters=[
            cordoned(1, state="suspect"),
            cluster(2, lat=40.7, lon=-74.0),
            cluster(3),
            cluster(4, lat=50.1, lon=8.7),
        ],
        deployments=[
            deployment(1, replicas=1),
            deployment(2, replicas=1, excluded_clusters=frozenset({3}), penalised_clusters=frozenset({4})),
        ],
        current={(1, 1, "H100"): 1},
    )
    explanations = solve(problem, OPTIONS).explanations

    kept = explanations[1]["chosen"]
    assert [entry["cluster"] for entry in kept] == ["c1"]
    assert kept[0]["held"] is True
    assert "kept where it runs on a suspect cluster" in kept[0]["why"]

    reasons = {group["reason"]: group for group in explanations[2]["not_chosen"]}
    assert reasons[EXCLUDED]["clusters"] == ["c3"]
    assert "failback" in reasons[EXCLUDED]["message"]
    assert reasons["penalised"]["clusters"] == ["c4"]
    assert "repeatedly" in reasons["penalised"]["message"]
    assert reasons["not_schedulable"]["clusters"] == ["c1"]
    assert [entry["cluster"] for entry in explanations[2]["chosen"]] == ["c2"]


def test_explanation_of_chosen_penalised_cluster():
    problem = ProblemInput(
        clusters=[cluster(1)], deployments=[deployment(1, replicas=1, penalised_clusters=frozenset({1}))]
    )
    chosen = solve(problem, OPTIONS).explanations[1]["chosen"]
    assert chosen[0]["cluster"] == "c1"
    assert "repeatedly" in chosen[0]["why"]


def test_held_cluster_leaves_not_schedulable_group():
    problem = ProblemInput(
        clusters=[cordoned(1), cordoned(2), cluster(3, lat=40.7, lon=-74.0)],
        deployments=[deployment(1, replicas=1)],
        current={(1, 1, "H100"): 1},
    )
    _table, candidates = build_candidates(problem, OPTIONS)
    groups = {group.reason: group for group in candidates[0].rejections}
    assert groups["not_schedulable"].count == 1
    assert groups["not_schedulable"].clusters == ["c2"]
    assert sorted(cand.cluster_id for cand in candidates[0].candidates) == [1, 3]


# random fleets with every failover input


@st.composite
def failover_problems(draw):
    providers = ["aws", "gcp", "azure"]
    regions = [("eu-west", 53.3, -6.3), ("eu-central", 50.1, 8.7), ("us-east", 39.0, -77.5)]
    fleet = []
    for index in range(draw(st.integers(3, 8))):
        provider = draw(st.sampled_from(providers))
        region, lat, lon = draw(st.sampled_from(regions))
        mode = draw(st.sampled_from(["active", "active", "cordoned", "down"]))
        fleet.append(
            cluster(
                index + 1,
                provider=provider,
                region=region,
                lat=lat + draw(st.floats(-1, 1)),
                lon=lon + draw(st.floats(-1, 1)),
                free={sku: draw(st.sampled_from([0, 4, 8, 16])) for sku in ("H100", "A100")},
                schedulable=mode == "active",
                holds_current=mode == "cordoned",
                state=mode,
            )
        )
    ids = [c.id for c in fleet]
    workloads = []
    current = {}
    for index in range(draw(st.integers(2, 10))):
        replicas = draw(st.integers(1, 5))
        subset = st.frozensets(st.sampled_from(ids), max_size=2)
        workload = deployment(
            index + 1,
            replicas=replicas,
            gpus=draw(st.sampled_from([1, 2, 4])),
            tier_rank=draw(st.integers(0, 2)),
            skus=draw(st.sampled_from([("H100",), ("A100",), ("H100", "A100")])),
            min_providers=draw(st.sampled_from([1, 2])),
            min_regions=draw(st.sampled_from([1, 1, 2])),
            spread=draw(st.sampled_from([SPREAD_FULL, SPREAD_CAPPED, SPREAD_OFF])),
            hold_clusters=draw(subset),
            penalised_clusters=draw(subset),
            excluded_clusters=draw(subset),
            churn_free=draw(st.booleans()),
            origins=draw(st.sampled_from([(), (NEW_YORK,)])),
        )
        workloads.append(workload)
        for host in draw(st.lists(st.sampled_from(ids), max_size=3, unique=True)):
            current[workload.id, host, draw(st.sampled_from(["H100", "A100"]))] = draw(st.integers(1, replicas))
    return ProblemInput(clusters=fleet, deployments=workloads, current=current)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(failover_problems())
def test_random_failover_plans_meet_hard_constraints(problem):
    result = solve(problem, OPTIONS)
    assert check_plan(problem, result.assignments) == []
    assert check_plan(problem, greedy_plan(problem)) == []
    assert check_plan(problem, milp_plan(problem)) == []
    assert result.objective <= result.greedy_objective + 1e-6 * max(1.0, abs(result.greedy_objective))
    bound = solve_lp_relaxation(problem, OPTIONS)
    assert bound is not None
    assert bound <= result.objective + 1e-6 * max(1.0, abs(result.objective))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(failover_problems())
def test_random_failover_plans_fix_and_optimize(problem):
    # Every model size takes the fix-and-optimize path (a neighbourhood of deployments in the MILP stage).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("placements.scheduler.milp.FIX_AND_OPTIMIZE_MIN_VARIABLES", 0)
        milp = milp_plan(problem)
        result = solve(problem, OPTIONS)
    assert check_plan(problem, milp) == []
    assert check_plan(problem, result.assignments) == []
    assert result.objective <= result.greedy_objective + 1e-6 * max(1.0, abs(result.greedy_objective))
