"""Benchmark the global placement scheduler on synthetic fleets.

Usage: .venv/bin/python bench/scheduler.py [--sizes 100x20,1000x100] [--time-limit 60]

A size DxC means D deployments over C clusters. Problems come from a fixed seed, so runs compare.
Peak memory is the process's ``ru_maxrss``, the resident set high-water mark that Linux reports in
KiB, read after each size. It never decreases, so a row shows the peak of its size and every size
before it.
The gap is taken against the LP relaxation of the same pruned model, not of the full problem.
``--unpruned-max-pairs`` also solves the LP relaxation with every feasible pair, which shows what
pruning costs.
"""

import argparse
import logging
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from placements.scheduler import solve, solve_lp_relaxation  # noqa: E402
from placements.scheduler.candidates import build_candidates  # noqa: E402
from placements.scheduler.problem import (  # noqa: E402
    ClusterInput,
    DemandOriginInput,
    DeploymentInput,
    LockInput,
    ProblemInput,
    SchedulerOptions,
)

PROVIDERS = ["aws", "gcp", "azure", "oci", "coreweave", "lambda", "nebius", "crusoe", "vultr", "ovh", "scaleway"]
# (code, city, country, jurisdiction, latitude, longitude)
LOCATIONS = [
    ("us-east", "Ashburn", "US", "US", 39.04, -77.49),
    ("us-east2", "Columbus", "US", "US", 39.96, -83.00),
    ("us-central", "Des Moines", "US", "US", 41.59, -93.62),
    ("us-south", "Dallas", "US", "US", 32.78, -96.80),
    ("us-west", "The Dalles", "US", "US", 45.59, -121.18),
    ("us-west2", "Los Angeles", "US", "US", 34.05, -118.24),
    ("ca-central", "Montreal", "CA", "CA", 45.50, -73.57),
    ("sa-east", "Sao Paulo", "BR", "BR", -23.55, -46.63),
    ("eu-west", "Dublin", "IE", "EU", 53.35, -6.26),
    ("eu-west2", "London", "GB", "UK", 51.51, -0.13),
    ("eu-central", "Frankfurt", "DE", "EU", 50.11, 8.68),
    ("eu-west3", "Paris", "FR", "EU", 48.86, 2.35),
    ("eu-north", "Stockholm", "SE", "EU", 59.33, 18.07),
    ("eu-south", "Milan", "IT", "EU", 45.46, 9.19),
    ("eu-west4", "Amsterdam", "NL", "EU", 52.37, 4.90),
    ("me-central", "Dubai", "AE", "AE", 25.20, 55.27),
    ("ap-south", "Mumbai", "IN", "IN", 19.08, 72.88),
    ("ap-southeast", "Singapore", "SG", "SG", 1.35, 103.82),
    ("ap-northeast", "Tokyo", "JP", "JP", 35.68, 139.69),
    ("ap-northeast2", "Seoul", "KR", "KR", 37.57, 126.98),
    ("ap-southeast2", "Sydney", "AU", "AU", -33.87, 151.21),
    ("af-south", "Johannesburg", "ZA", "ZA", -26.20, 28.05),
]
# SKU -> (share of clusters offering it, USD per GPU-hour range)
SKUS = {
    "H100": (0.6, (2.0, 4.5)),
    "H200": (0.3, (3.0, 6.0)),
    "A100": (0.5, (1.2, 3.0)),
    "L40S": (0.4, (0.8, 1.8)),
    "L4": (0.4, (0.4, 0.9)),
}
ALTERNATIVES = {
    "H100": ["H200", "A100"],
    "H200": ["H100"],
    "A100": ["H100", "L40S"],
    "L40S": ["L4", "A100"],
    "L4": ["L40S"],
}
TIERS = [("platinum", 0, 0.1), ("gold", 1, 0.2), ("silver", 2, 0.3), ("bronze", 3, 0.4)]


def build_problem(deployments: int, clusters: int, seed: int = 42) -> ProblemInput:
    """Build a synthetic fleet of ``clusters`` and ``deployments``, with supply about 1.2x demand."""
    rng = random.Random(seed)
    regions = [
        (f"{provider}/{code}", provider, city, jurisdiction, lat, lon)
        for provider in PROVIDERS
        for code, city, _country, jurisdiction, lat, lon in LOCATIONS
        if rng.random() < 0.6
    ]
    mean_gpus_per_deployment = 4.5 * 3.75
    gpus_per_cluster = max(16, int(1.2 * mean_gpus_per_deployment * deployments / clusters))

    fleet = []
    for index in range(clusters):
        region, provider, _city, jurisdiction, lat, lon = rng.choice(regions)
        offered = [sku for sku, (share, _price) in SKUS.items() if rng.random() < share] or ["H100"]
        free, price = {}, {}
        for sku in offered:
            free[sku] = 8 * max(1, round(gpus_per_cluster / len(offered) / 8 * rng.uniform(0.4, 1.6)))
            low, high = SKUS[sku][1]
            price[sku] = round(rng.uniform(low, high), 2)
        state = rng.choices(["active", "cordoned", "down"], [0.95, 0.03, 0.02])[0]
        fleet.append(
            ClusterInput(
                id=index + 1,
                name=f"{region.replace('/', '-')}-{index}",
                provider=provider,
                region=region,
                jurisdiction=jurisdiction,
                latitude=lat + rng.uniform(-1.5, 1.5),
                longitude=lon + rng.uniform(-1.5, 1.5),
                capabilities=frozenset(cap for cap in ("static-egress", "soc2") if rng.random() < 0.3),
                free_gpus=free,
                price_per_gpu_hour=price,
                schedulable=state == "active",
                state=state,
            )
        )

    workloads = [_deployment(rng, index, regions) for index in range(deployments)]
    current = {}
    for deployment in workloads:
        if rng.random() < 0.5:
            hosts = [c for c in fleet if deployment.skus[0] in c.free_gpus]
            for host in rng.sample(hosts, min(2, len(hosts))):
                current[deployment.id, host.id, deployment.skus[0]] = max(1, deployment.replicas // 2)
    return ProblemInput(clusters=fleet, deployments=workloads, current=current)


def _deployment(rng: random.Random, index: int, regions: list) -> DeploymentInput:
    tier, rank, _weight = rng.choices(TIERS, [weight for _t, _r, weight in TIERS])[0]
    primary = rng.choice(list(SKUS))
    skus = (primary, *rng.sample(ALTERNATIVES[primary], rng.randint(0, len(ALTERNATIVES[primary]))))
    origins = []
    for _ in range(rng.randint(1, 3)):
        _code, city, _country, _jurisdiction, lat, lon = rng.choice(LOCATIONS)
        origins.append(DemandOriginInput(city, lat + rng.uniform(-3, 3), lon + rng.uniform(-3, 3), rng.uniform(0.1, 1)))

    locks = []
    roll = rng.random()
    if roll < 0.10:
        locks.append(LockInput("customer eu-bank", "GDPR data residency", allowed_jurisdictions=frozenset({"EU"})))
    elif roll < 0.15:
        locks.append(LockInput("customer gov", "contract", allowed_providers=frozenset(rng.sample(PROVIDERS, 3))))
    elif roll < 0.20:
        locks.append(LockInput("customer acme", "vendor policy", excluded_providers=frozenset({rng.choice(PROVIDERS)})))
    elif roll < 0.23:
        locks.append(LockInput("deployment fin/api", "audit", required_capabilities=frozenset({"soc2"})))

    preference = ()
    if rng.random() < 0.3:
        preference = tuple(region for region, *_rest in rng.sample(regions, rng.randint(1, 3)))
    replicas = rng.randint(1, 8)
    return DeploymentInput(
        id=index + 1,
        name=f"customer{index % 97}/model{index}",
        tier=tier,
        tier_rank=rank,
        skus=skus,
        gpus_per_replica=rng.choice([1, 2, 4, 8]),
        replicas=replicas,
        min_providers=2 if replicas >= 2 and rng.random() < 0.1 else 1,
        region_preference=preference,
        origins=tuple(origins),
        locks=tuple(locks),
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(size: str, time_limit: float, max_candidates: int, gap_target: float, unpruned_max_pairs: int) -> dict:
    deployments, clusters = (int(part) for part in size.lower().split("x"))
    problem = build_problem(deployments, clusters)
    options = SchedulerOptions(time_limit_s=time_limit, max_candidates=max_candidates, gap_target=gap_target)

    started = time.perf_counter()
    prepared = build_candidates(problem, options)
    candidate_seconds = time.perf_counter() - started
    feasible = sum(entry.feasible_pairs for entry in prepared[1])
    started = time.perf_counter()
    lp_bound = solve_lp_relaxation(problem, options, prepared)
    lp_seconds = time.perf_counter() - started

    unpruned_bound, unpruned_seconds = None, None
    if feasible <= unpruned_max_pairs:
        started = time.perf_counter()
        unpruned = SchedulerOptions(time_limit_s=time_limit, max_candidates=0, gap_target=gap_target)
        unpruned_bound = solve_lp_relaxation(problem, unpruned)
        unpruned_seconds = round(time.perf_counter() - started, 2)
    pruning_cost = None
    if lp_bound is not None and unpruned_bound is not None:
        pruning_cost = round(100 * (lp_bound - unpruned_bound) / max(abs(unpruned_bound), 1e-9), 2)

    started = time.perf_counter()
    result = solve(problem, options)
    total_seconds = time.perf_counter() - started
    placed = sum(result.assignments.values())
    desired = sum(deployment.replicas for deployment in problem.deployments)
    lp_gap = None if lp_bound is None else (result.objective - lp_bound) / max(abs(result.objective), 1e-9)
    return {
        "size": size,
        "feasible pairs": feasible,
        "candidates (vars)": result.candidates,
        "candidate filter s": round(candidate_seconds, 2),
        "build s": round(result.build_seconds, 2),
        "solve s": round(result.solve_seconds, 2),
        "total s": round(total_seconds, 2),
        "status": result.solver_status,
        "kept": result.solver,
        "objective": round(result.objective, 1),
        "greedy objective": round(result.greedy_objective, 1),
        "solve() bound": None if result.bound is None else round(result.bound, 1),
        "solve() gap %": None if result.gap is None else round(100 * result.gap, 2),
        "LP relaxation bound": None if lp_bound is None else round(lp_bound, 1),
        "LP relaxation s": round(lp_seconds, 2),
        "gap to LP relaxation %": None if lp_gap is None else round(100 * lp_gap, 2),
        "LP relaxation bound, all feasible pairs": None if unpruned_bound is None else round(unpruned_bound, 1),
        "LP relaxation s, all feasible pairs": unpruned_seconds,
        "pruning raises the LP bound by %": pruning_cost,
        "greedy above LP %": None
        if lp_bound is None
        else round(100 * (result.greedy_objective - lp_bound) / lp_bound, 2),
        "placed / desired": f"{placed} / {desired}",
        "peak RSS MiB": round(peak_rss_mib()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100x20,1000x100,5000x300,10000x1000", help="DxC sizes, comma-separated")
    parser.add_argument(
        "--time-limit", type=float, default=60.0, help="time limit of each solve() call and each LP, in seconds"
    )
    parser.add_argument("--max-candidates", type=int, default=16, help="candidate pairs kept per deployment (0: all)")
    parser.add_argument("--gap-target", type=float, default=0.01, help="relative MIP gap at which HiGHS stops")
    parser.add_argument(
        "--unpruned-max-pairs",
        type=int,
        default=0,
        help="also solve the LP relaxation with every feasible pair for sizes with at most this many pairs",
    )
    parser.add_argument("--log", action="store_true", help="log the scheduler's stages at INFO level")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.log else logging.WARNING)

    for size in args.sizes.split(","):
        row = run(size, args.time_limit, args.max_candidates, args.gap_target, args.unpruned_max_pairs)
        print(f"\n## {size}")
        print("| metric | value |\n| --- | --- |")
        for name, value in row.items():
            print(f"| {name} | {value} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
