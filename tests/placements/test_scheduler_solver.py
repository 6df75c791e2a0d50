"""The scheduler's solver stages: the time limit, the solver's console output, fix-and-optimize."""

import subprocess
import sys
from pathlib import Path

from placements.scheduler import check_plan, solve
from placements.scheduler.problem import ProblemInput, SchedulerOptions
from tests.placements.scheduler_factories import cluster, deployment

REPOSITORY = Path(__file__).resolve().parents[2]
PROVIDERS = ["aws", "gcp", "azure", "oci"]


def crowded_fleet(deployments: int, clusters: int) -> ProblemInput:
    """Build a fleet where capacity is short, so the MILP has real choices to make."""
    fleet = [
        cluster(
            i,
            provider=PROVIDERS[i % len(PROVIDERS)],
            region=f"r{i % 7}",
            lat=40.0 + i % 13,
            lon=-10.0 + i % 17,
            free={"H100": 8 * (1 + i % 3), "A100": 8},
            price={"H100": 2.0 + (i % 5) / 2, "A100": 1.5 + (i % 3) / 2},
        )
        for i in range(1, clusters + 1)
    ]
    workloads = [
        deployment(i, replicas=1 + i % 5, gpus=(1, 2, 4)[i % 3], tier_rank=i % 4, skus=("H100", "A100")[: 1 + i % 2])
        for i in range(1, deployments + 1)
    ]
    return ProblemInput(clusters=fleet, deployments=workloads)


def test_solver_stages_stay_within_time_limit():
    problem = crowded_fleet(400, 40)
    options = SchedulerOptions(time_limit_s=2.0)
    result = solve(problem, options)
    assert result.solve_seconds <= options.time_limit_s
    assert check_plan(problem, result.assignments) == []


def test_fix_and_optimize_plan_is_valid(monkeypatch):
    monkeypatch.setattr("placements.scheduler.milp.FIX_AND_OPTIMIZE_MIN_VARIABLES", 0)
    problem = crowded_fleet(120, 12)
    result = solve(problem, SchedulerOptions(time_limit_s=30))
    assert check_plan(problem, result.assignments) == []
    assert result.solver == "highs"
    assert result.objective <= result.greedy_objective
    assert result.bound is not None
    assert result.bound <= result.objective + 1e-6


def test_solve_writes_nothing_to_stdout_without_solver_log():
    script = (
        "from placements.scheduler import solve\n"
        "from placements.scheduler.problem import ProblemInput, SchedulerOptions\n"
        "from tests.placements.scheduler_factories import cluster, deployment\n"
        "problem = ProblemInput(clusters=[cluster(1), cluster(2, provider='gcp')], deployments=[deployment(1, 2)])\n"
        "solve(problem, SchedulerOptions(time_limit_s=10))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=True
    )
    assert completed.stdout == ""
    assert "HiGHS" not in completed.stderr
