"""Properties of the scheduler's plans on many random small fleets (hypothesis)."""

from collections import defaultdict
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placements.scheduler import solve
from placements.scheduler.locks import lock_violation
from placements.scheduler.problem import (
    ClusterInput,
    DemandOriginInput,
    DeploymentInput,
    LockInput,
    ProblemInput,
    SchedulerOptions,
)

PROVIDERS = ["aws", "gcp", "azure", "oci"]
REGIONS = [("eu-west", "EU", 53.3, -6.3), ("eu-central", "EU", 50.1, 8.7), ("us-east", "US", 39.0, -77.5)]
REGIONS += [("ap-northeast", "JP", 35.7, 139.7), ("sa-east", "BR", -23.5, -46.6)]
SKUS = ["H100", "A100", "L40S", "L4"]
CAPABILITIES = ["soc2", "static-egress"]

# HiGHS proves these models (at most 25 deployments x 12 clusters) optimal in milliseconds. The time
# limit is far above that, so that a busy machine cannot turn an optimality-dependent property into
# a timing failure.
TIME_LIMIT_S = 30
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clusters(draw, count):
    result = []
    for index in range(count):
        provider = draw(st.sampled_from(PROVIDERS))
        region, jurisdiction, lat, lon = draw(st.sampled_from(REGIONS))
        skus = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
        result.append(
            ClusterInput(
                id=index + 1,
                name=f"c{index + 1}",
                provider=provider,
                region=f"{provider}/{region}",
                jurisdiction=jurisdiction,
                latitude=lat + draw(st.floats(-2, 2)),
                longitude=lon + draw(st.floats(-2, 2)),
                capabilities=frozenset(draw(st.lists(st.sampled_from(CAPABILITIES), max_size=2))),
                free_gpus={sku: draw(st.sampled_from([0, 4, 8, 16, 32])) for sku in skus},
                price_per_gpu_hour={sku: draw(st.floats(0.5, 6.0)) for sku in skus},
                schedulable=draw(st.booleans() | st.just(True)),
            )
        )
    return result


@st.composite
def locks(draw):
    kind = draw(st.sampled_from(["none", "jurisdiction", "provider", "excluded", "capability", "region"]))
    if kind == "none":
        return ()
    if kind == "jurisdiction":
        rule = {"allowed_jurisdictions": frozenset(draw(st.lists(st.sampled_from(["EU", "US", "JP"]), min_size=1)))}
    elif kind == "provider":
        rule = {"allowed_providers": frozenset(draw(st.lists(st.sampled_from(PROVIDERS), min_size=1)))}
    elif kind == "excluded":
        rule = {"excluded_providers": frozenset({draw(st.sampled_from(PROVIDERS))})}
    elif kind == "capability":
        rule = {"required_capabilities": frozenset({draw(st.sampled_from(CAPABILITIES))})}
    else:
        region = draw(st.sampled_from(REGIONS))[0]
        rule = {"allowed_regions": frozenset(f"{provider}/{region}" for provider in PROVIDERS)}
    return (LockInput(f"customer {kind}", "policy", **rule),)


@st.composite
def deployments(draw, count):
    result = []
    for index in range(count):
        replicas = draw(st.integers(1, 5))
        origins = tuple(
            DemandOriginInput(f"o{k}", lat, lon, draw(st.floats(0.1, 1.0)))
            for k, (_r, _j, lat, lon) in enumerate(draw(st.lists(st.sampled_from(REGIONS), min_size=0, max_size=2)))
        )
        region_names = [f"{provider}/{region}" for provider in PROVIDERS for region, *_rest in REGIONS]
        result.append(
            DeploymentInput(
                id=index + 1,
                name=f"d{index + 1}",
                tier=f"t{index % 3}",
                tier_rank=draw(st.integers(0, 3)),
                skus=tuple(draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=2, unique=True))),
                gpus_per_replica=draw(st.sampled_from([1, 2, 4, 8])),
                replicas=replicas,
                min_providers=draw(st.sampled_from([1, 1, 2])),
                min_regions=draw(st.sampled_from([1, 1, 2])),
                region_preference=tuple(draw(st.lists(st.sampled_from(region_names), max_size=3, unique=True))),
                origins=origins,
                locks=draw(locks()),
            )
        )
    return result


@st.composite
def problems(draw):
    fleet = draw(clusters(draw(st.integers(3, 12))))
    workloads = draw(deployments(draw(st.integers(3, 25))))
    current = {}
    for deployment in workloads:
        if draw(st.booleans()):
            host = draw(st.sampled_from(fleet))
            sku = draw(st.sampled_from(deployment.skus))
            current[deployment.id, host.id, sku] = draw(st.integers(1, deployment.replicas))
    max_candidates = draw(st.sampled_from([0, 3, 16]))
    return ProblemInput(clusters=fleet, deployments=workloads, current=current), max_candidates


def options_with(max_candidates):
    return SchedulerOptions(time_limit_s=TIME_LIMIT_S, gap_target=1e-6, max_candidates=max_candidates)


@SETTINGS
@given(problems())
def test_plan_meets_hard_constraints(case):
    problem, max_candidates = case
    result = solve(problem, options_with(max_candidates))
    assert_hard_constraints(problem, result)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_fix_and_optimize_plan_meets_hard_constraints(case):
    problem, max_candidates = case
    with mock.patch("placements.scheduler.milp.FIX_AND_OPTIMIZE_MIN_VARIABLES", 0):
        result = solve(problem, options_with(max_candidates))
    assert_hard_constraints(problem, result)
    assert result.objective <= result.greedy_objective + 1e-6 * max(1.0, abs(result.greedy_objective))


def assert_hard_constraints(problem, result):
    clusters = {cluster.id: cluster for cluster in problem.clusters}
    deployments = {deployment.id: deployment for deployment in problem.deployments}

    used = defaultdict(int)
    by_cluster = defaultdict(lambda: defaultdict(int))
    for (deployment_id, cluster_id, sku), replicas in result.assignments.items():
        deployment, cluster = deployments[deployment_id], clusters[cluster_id]
        used[cluster_id, sku] += replicas * deployment.gpus_per_replica
        by_cluster[deployment_id][cluster_id] += replicas
        assert replicas > 0
        assert sku in deployment.skus
        assert cluster.schedulable
        for lock in deployment.locks:
            assert lock_violation(lock, cluster) is None

    for (cluster_id, sku), gpus in used.items():
        assert gpus <= clusters[cluster_id].free_gpus.get(sku, 0)

    for deployment_id, counts in by_cluster.items():
        deployment = deployments[deployment_id]
        placed = sum(counts.values())
        if deployment.replicas >= 2:
            assert max(counts.values()) < placed
            assert len({clusters[c].provider for c in counts}) >= deployment.min_providers
            assert len({clusters[c].region for c in counts}) >= deployment.min_regions


@SETTINGS
@given(problems())
def test_plan_bookkeeping_and_objective(case):
    problem, max_candidates = case
    result = solve(problem, options_with(max_candidates))
    placed = defaultdict(int)
    for (deployment_id, _cluster_id, _sku), replicas in result.assignments.items():
        placed[deployment_id] += replicas

    for deployment in problem.deployments:
        assert placed[deployment.id] + result.unmet[deployment.id] == deployment.replicas
        assert result.unmet[deployment.id] >= 0
    assert result.objective <= result.greedy_objective + 1e-6 * max(1.0, abs(result.greedy_objective))
    assert result.objective == sum(result.objective_terms.values())
    assert set(result.explanations) == {deployment.id for deployment in problem.deployments}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_replan_of_own_plan_moves_nothing(case):
    problem, max_candidates = case
    first = solve(problem, options_with(max_candidates))
    again = ProblemInput(clusters=problem.clusters, deployments=problem.deployments, current=dict(first.assignments))
    second = solve(again, options_with(max_candidates))
    assert second.objective_terms["churn"] == 0
    assert second.objective <= first.objective - first.objective_terms["churn"] + 1e-6
