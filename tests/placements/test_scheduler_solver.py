"""The scheduler's solver stages: the time limit, the solver's console output, fix-and-optimize."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import highspy
import pulp

from placements.scheduler import check_plan, solve
from placements.scheduler.candidates import build_candidates
from placements.scheduler.model import build_model, to_highs
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


def test_pulp_model_columns_match_highs():
    problem = crowded_fleet(60, 8)
    problem.deployments[0] = replace(problem.deployments[0], replicas=4, min_providers=2, min_regions=2)
    options = SchedulerOptions()
    table, candidates = build_candidates(problem, options)
    running = candidates[0].candidates[0]
    problem.current[problem.deployments[0].id, table.clusters[running.cluster].id, running.sku] = 2
    model = build_model(problem, table, candidates, spread=True)
    highs = to_highs(model, options, mip=True)
    lp = highs.getLp()

    assert isinstance(model.problem, pulp.LpProblem)
    assert model.problem.numConstraints() == highs.getNumRow()
    assert model.groups
    assert model.used
    assert model.churn
    assert highs.getNumCol() == model.columns
    assert list(lp.col_cost_) == model.cost
    assert list(lp.col_upper_) == [variable.upBound for variable in model.variables]
    assert highs.getObjectiveOffset()[1] == model.offset
    integer = [kind == highspy.HighsVarType.kInteger for kind in lp.integrality_]
    assert integer == [variable.cat == pulp.LpInteger for variable in model.variables]


def test_pulp_model_without_spread_rows_has_fewer_rows():
    problem = crowded_fleet(60, 8)
    options = SchedulerOptions()
    table, candidates = build_candidates(problem, options)
    with_spread = build_model(problem, table, candidates, spread=True)
    without_spread = build_model(problem, table, candidates, spread=False)

    assert without_spread.problem.numConstraints() < with_spread.problem.numConstraints()
    assert to_highs(without_spread, options, mip=False).getLp().integrality_ == []


def test_pulp_error_falls_back_to_greedy(monkeypatch):
    def reject(*_args, **_kwargs):
        raise pulp.PulpError("Invalid coefficient value")

    monkeypatch.setattr("placements.scheduler.milp.to_highs", reject)
    problem = crowded_fleet(40, 6)
    result = solve(problem, SchedulerOptions(time_limit_s=10))

    assert result.solver == "greedy"
    assert check_plan(problem, result.assignments) == []
