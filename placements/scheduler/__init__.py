"""The global placement scheduler: which deployment's replicas run in which cluster.

``solve`` runs the candidate filter, a greedy placement, the MILP warm-started from it, keeps the
better of the two valid plans, and explains the kept plan. The package never imports Django.
"""

import logging
import time

import pulp
from highspy.highs import HighsError

from .candidates import build_candidates
from .explain import explain_plan
from .greedy import check_plan, evaluate, greedy_place, placed_replicas
from .milp import solve_lp_relaxation, solve_milp
from .problem import PlanResult, ProblemInput, SchedulerOptions

__all__ = ["check_plan", "evaluate", "solve", "solve_lp_relaxation"]

logger = logging.getLogger(__name__)


def solve(problem: ProblemInput, options: SchedulerOptions | None = None) -> PlanResult:
    """Compute a placement plan for every deployment of ``problem``.

    The MILP's plan is kept only when HiGHS returned an integer solution that passes
    ``check_plan`` and is not worse than the greedy plan under ``evaluate``. Otherwise the greedy
    plan is kept and ``solver`` is "greedy". ``bound`` and ``gap`` refer to the pruned model.
    ``options.time_limit_s`` is the budget of the whole call: the solver stages get what the
    candidate filter and greedy leave of it, minus a reserve for checking and explaining the plan.
    The call still overruns it when filtering alone takes longer, or the reserve is too short.
    """
    options = options or SchedulerOptions()
    started = time.perf_counter()
    deadline = started + options.time_limit_s - _finish_reserve(options.time_limit_s, problem)
    table, candidates = build_candidates(problem, options)
    greedy = greedy_place(problem, table, candidates)
    greedy_objective, greedy_terms = evaluate(problem, greedy)
    candidate_seconds = time.perf_counter() - started
    greedy_violations = check_plan(problem, greedy)
    if greedy_violations:
        # NOTE: greedy is built to meet every hard constraint; this guards against a bug in it.
        logger.error(
            "greedy plan violates %d hard constraints, first: %s", len(greedy_violations), greedy_violations[0]
        )

    size = sum(len(entry.candidates) for entry in candidates)
    kept, objective, terms = greedy, greedy_objective, greedy_terms
    solver, status, bound = "greedy", "not run: no candidates", None
    build_seconds, solve_seconds = candidate_seconds, 0.0
    if size > 0:
        try:
            outcome = solve_milp(
                problem, table, candidates, options, greedy={} if greedy_violations else greedy, deadline=deadline
            )
        except (HighsError, pulp.PulpError):
            logger.exception("MILP solve failed; keeping the greedy plan")
            outcome = None
        if outcome is not None:
            status, bound = outcome.status, outcome.bound
            build_seconds = candidate_seconds + outcome.build_seconds
            solve_seconds = outcome.solve_seconds
            choice = _milp_if_better(problem, outcome.assignments, greedy_objective)
            if choice is not None and outcome.assignments is not None:
                kept, (objective, terms), solver = outcome.assignments, choice, "highs"

    placed = placed_replicas(kept)
    gap = None
    if bound is not None:
        gap = max(0.0, (objective - bound) / max(abs(objective), 1e-9))
    return PlanResult(
        assignments={key: replicas for key, replicas in kept.items() if replicas > 0},
        unmet={deployment.id: deployment.replicas - placed.get(deployment.id, 0) for deployment in problem.deployments},
        objective=objective,
        objective_terms=terms,
        bound=bound,
        gap=gap,
        greedy_objective=greedy_objective,
        solver=solver,
        solver_status=status,
        build_seconds=build_seconds,
        solve_seconds=solve_seconds,
        candidates=size,
        explanations=explain_plan(problem, table, candidates, kept),
    )


def _finish_reserve(time_limit_s: float, problem: ProblemInput) -> float:
    """Return the seconds kept after the solver stages for reading, checking and explaining the plan.

    At 10,000 deployments that work took 2.5-3 s on the 2-core development machine (load 2-3).
    """
    return min(0.25 * time_limit_s, 0.1 + len(problem.deployments) * 5e-4)


def _milp_if_better(problem, assignments, greedy_objective) -> tuple[float, dict[str, float]] | None:
    """Return the MILP plan's (objective, terms) if it is valid and not worse than greedy's, else None."""
    if assignments is None:
        logger.warning("HiGHS returned no integer solution; keeping the greedy plan")
        return None
    violations = check_plan(problem, assignments)
    if violations:
        logger.error(
            "MILP plan violates %d hard constraints, first: %s. Keeping the greedy plan", len(violations), violations[0]
        )
        return None
    objective, terms = evaluate(problem, assignments)
    if objective > greedy_objective + 1e-9 * max(1.0, abs(greedy_objective)):
        logger.warning(
            "MILP plan (%.6g) is worse than greedy (%.6g); keeping the greedy plan", objective, greedy_objective
        )
        return None
    return objective, terms
