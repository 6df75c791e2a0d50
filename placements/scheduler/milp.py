"""The placement MILP over all deployments, solved by HiGHS in stages within one deadline.

The model itself (variables and rows) is described in ``placements.scheduler.model``.
"""

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import highspy
import numpy as np

from .candidates import Candidate, ClusterTable, DeploymentCandidates, build_candidates
from .greedy import evaluate, greedy_place
from .model import Model, build_model, placement_values, start_values, to_highs
from .problem import PlacementKey, ProblemInput, SchedulerOptions
from .spread import SpreadCaps, spread_caps, spread_violation

logger = logging.getLogger(__name__)

# Models at least this large fix most deployments at their warm-start replicas before the MILP stage,
# and solve a MILP of a neighbourhood of the others only. On this project's 2-core development machine
# HiGHS solved a 1,000 x 100 model (16,000 variables) to optimality in under 20 s, but made no
# progress beyond its warm start in 60 s on a 5,000 x 300 one (98,000 variables).
FIX_AND_OPTIMIZE_MIN_VARIABLES = 50_000
# Share of the time left before the deadline that the LP stage may use; the MILP stage gets the rest.
LP_SHARE_OF_TIME = 0.6
# Share of the time left after the LP stage that relax-and-fix leaves to the MILP stage.
RELAX_AND_FIX_RESERVE = 0.3
# Relax-and-fix stops after this many LP rounds, or earlier when a round settles no deployment.
RELAX_AND_FIX_MAX_ROUNDS = 10
# The MILP stage re-solves the deployments that relax-and-fix could not settle from the first LP
# solution or left short, plus those the first LP solution leaves fractional, short or unspread while
# their x columns number at most this many per second left. On the 2-core
# development machine (load 2-4) at 10,000 x 1,000, from the relax-and-fix warm start, HiGHS proved
# the narrow neighbourhood (35,000 columns) within 1 % in 18-23 s. The broad one (54,000 columns,
# 43,000 of them x) gave a better plan when it had 39 s, but none better than the warm start in 30 s.
# NOTE: an estimate from single runs on one machine. A slower machine gets the narrow neighbourhood.
MILP_COLUMNS_PER_SECOND = 1_100
# HiGHS is not started for a stage with less time than this, in seconds.
MIN_STAGE_SECONDS = 0.05


@dataclass
class MilpOutcome:
    assignments: dict[PlacementKey, int] | None  # None when no stage produced an integer solution
    status: str
    bound: float | None
    build_seconds: float  # building every stage's model and passing it to HiGHS
    solve_seconds: float  # time spent inside HiGHS, all stages
    variables: int


@dataclass
class _Stage:
    status: str
    solution: list[float] | None  # column values, None when HiGHS returned none
    objective: float
    bound: float | None  # HiGHS's MIP dual bound, None for an LP
    seconds: float  # time spent inside HiGHS
    build_seconds: float = 0.0  # time PuLP spent passing the model to HiGHS


def solve_milp(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    options: SchedulerOptions,
    greedy: dict[PlacementKey, int],
    deadline: float,
) -> MilpOutcome:
    """Solve the model in stages that all end before ``deadline`` (a ``time.perf_counter`` value).

    1. The LP relaxation without the spread rows, which are most of the rows, so it is quick. Its
       optimum is the reported bound.
    2. Relax-and-fix from that solution (``_relax_and_fix``), completed by greedy: the warm start,
       when it beats ``greedy``.
    3. The MILP, spread rows included, warm-started from it. On large models it covers only a
       neighbourhood of deployments (fix-and-optimize): those that relax-and-fix found hard to
       settle and those the warm start leaves short. Every deployment that the first LP solution
       left fractional joins them if their columns fit the time left (``MILP_COLUMNS_PER_SECOND``).
       The others keep their warm-start replicas, and the MILP gets the capacity they leave.

    The outcome has no assignments when no stage produced an integer solution better than greedy.
    """
    started = time.perf_counter()
    model = build_model(problem, table, candidates, spread=False)
    build_seconds = time.perf_counter() - started

    lp_limit = LP_SHARE_OF_TIME * (deadline - time.perf_counter())
    lp = _run(model, options, mip=False, time_limit=lp_limit)
    lp_bound = lp.objective if lp.status == "Optimal" else None
    lp_seconds = lp.seconds
    build_seconds += lp.build_seconds

    start_plan, start_objective = greedy, evaluate(problem, greedy)[0]
    include = list(range(len(candidates)))
    rounds = 0
    if lp_bound is not None:
        values = placement_values(model, candidates, lp.solution)
        fractional = _unsettled_deployments(table, candidates, values)
        fix_until = deadline - RELAX_AND_FIX_RESERVE * (deadline - time.perf_counter())
        settlement = _relax_and_fix(problem, table, candidates, options, values, fix_until)
        rounds, lp_seconds = settlement.rounds, lp_seconds + settlement.lp_seconds
        build_seconds += settlement.build_seconds
        rounded = _round_and_repair(problem, table, candidates, values, settlement.plan, settlement.unsettled)
        rounded_objective = evaluate(problem, rounded)[0]
        if rounded_objective < start_objective:
            start_plan, start_objective = rounded, rounded_objective
            if model.columns >= FIX_AND_OPTIMIZE_MIN_VARIABLES:
                budget = MILP_COLUMNS_PER_SECOND * (deadline - time.perf_counter())
                narrow = set(settlement.contested) | _short_deployments(candidates, rounded)
                include = _neighbourhood(candidates, narrow, fractional, budget)
    fixed = len(candidates) - len(include)
    logger.info(
        "LP relaxation without spread rows: status %s, objective %s, %.1f s; %d LP rounds of relax-and-fix; "
        "warm start objective %.6g (%s); %d deployments fixed",
        lp.status,
        lp_bound,
        lp.seconds,
        rounds,
        start_objective,
        "greedy" if start_plan is greedy else "rounded LP solution",
        fixed,
    )

    stage_started = time.perf_counter()
    taken = _gpus_taken(table, candidates, start_plan, excluded=include)
    milp_model = build_model(problem, table, candidates, spread=True, include=include, taken_gpus=taken)
    start = start_values(milp_model, problem, table, candidates, start_plan)
    build_seconds += time.perf_counter() - stage_started
    milp = _run(milp_model, options, mip=True, time_limit=deadline - time.perf_counter(), start=start)
    build_seconds += milp.build_seconds
    logger.info(
        "HiGHS MILP stage stopped with status %s after %.1f s (%d variables, objective %s, bound %s)",
        milp.status,
        milp.seconds,
        milp_model.columns,
        milp.objective,
        milp.bound,
    )

    assignments = _merge(problem, table, candidates, start_plan, milp_model, milp, start_objective)
    if assignments is None and start_plan is not greedy:
        assignments = start_plan
    # With deployments fixed, HiGHS's bound is that of a restricted model, so only the LP bound holds.
    mip_bound = milp.bound if fixed == 0 else None
    bounds = [value for value in (lp_bound, mip_bound) if value is not None and math.isfinite(value)]
    status = milp.status
    if fixed:
        status += f" ({fixed} of {len(candidates)} deployments fixed from the LP solution)"
    return MilpOutcome(
        assignments=assignments,
        status=status,
        bound=max(bounds) if bounds else None,
        build_seconds=build_seconds,
        solve_seconds=lp_seconds + milp.seconds,
        variables=model.columns,
    )


@dataclass
class _Settlement:
    """The outcome of relax-and-fix."""

    plan: dict[PlacementKey, int]  # the settled deployments' replicas
    unsettled: list[int]  # deployment indices left unsettled
    contested: list[int]  # deployment indices that the first LP solution did not settle
    rounds: int  # LP re-solves
    lp_seconds: float  # time spent inside HiGHS
    build_seconds: float = 0.0  # time spent building the re-solved models and passing them to HiGHS


def _run(model: Model, options: SchedulerOptions, mip: bool, time_limit: float, start=None) -> _Stage:
    """Solve ``model`` with HiGHS within ``time_limit`` seconds, counting the handover to HiGHS.

    A stage with less than ``MIN_STAGE_SECONDS`` left, before or after the handover, is skipped.
    """
    if time_limit < MIN_STAGE_SECONDS or model.columns == 0:
        return _Stage("Not run: no time left" if model.columns else "Not run: empty model", None, math.inf, None, 0.0)
    handover_started = time.perf_counter()
    highs = to_highs(model, options, mip=mip)
    started = time.perf_counter()
    handover = started - handover_started
    time_limit -= handover
    if time_limit < MIN_STAGE_SECONDS:
        return _Stage("Not run: no time left", None, math.inf, None, 0.0, handover)
    highs.setOptionValue("time_limit", float(time_limit))
    if mip:
        highs.setOptionValue("mip_rel_gap", options.gap_target)
        if start is not None:
            highs.setSolution(len(start), np.arange(len(start), dtype=np.int32), start)
    highs.run()
    status = highs.getModelStatus()
    objective = highs.getInfo().objective_function_value
    has_solution = status == highspy.HighsModelStatus.kOptimal or (
        status in _STOPPED_EARLY and math.isfinite(objective) and highs.getInfo().primal_solution_status == 2
    )
    bound = highs.getInfo().mip_dual_bound if mip else None
    solution = list(highs.getSolution().col_value) if has_solution else None
    seconds = time.perf_counter() - started
    if solution is not None and start is not None:
        # NOTE: HiGHS 1.16 can report an optimal objective with the warm start's column values, seen
        # on a model that presolve solved. Solving again without the start returns matching values.
        actual = float(np.dot(model.cost, solution)) + model.offset
        if abs(actual - objective) > 1e-6 * max(1.0, abs(objective)):
            logger.warning(
                "HiGHS reported objective %.9g but its solution has %.9g; solving again without the warm start",
                objective,
                actual,
            )
            again = _run(model, options, mip, time_limit - seconds)
            if again.solution is not None:
                again.seconds += seconds
                again.build_seconds += handover
                return again
    return _Stage(highs.modelStatusToString(status), solution, objective, bound, seconds, handover)


_STOPPED_EARLY = (
    highspy.HighsModelStatus.kObjectiveBound,
    highspy.HighsModelStatus.kObjectiveTarget,
    highspy.HighsModelStatus.kInterrupt,
    highspy.HighsModelStatus.kTimeLimit,
    highspy.HighsModelStatus.kIterationLimit,
    highspy.HighsModelStatus.kSolutionLimit,
    highspy.HighsModelStatus.kMemoryLimit,
)


def _relax_and_fix(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    options: SchedulerOptions,
    values: dict[int, np.ndarray],
    until: float,
) -> "_Settlement":
    """Settle deployments from LP solutions, re-solving the LP of the others, until ``until``.

    Each round settles, in greedy's order, every deployment whose LP replicas round up to a
    placement that fits the capacity left and meets the spread rule. It then solves the LP of the
    deployments left, spread rows included, with the capacity left. Re-solving moves them to pairs
    with room, where rounding all LP replicas down would leave them unmet. ``values`` maps each
    deployment index to its candidates' LP values and is updated in place. Held candidates take no
    free GPUs.
    """
    free = {
        (cand.cluster, cand.sku): cand.free_gpus for entry in candidates for cand in entry.candidates if not cand.held
    }
    capacity = dict(free)
    settled: dict[PlacementKey, int] = {}
    unsettled = sorted(
        range(len(candidates)),
        key=lambda d: (candidates[d].deployment.tier_rank, -candidates[d].deployment.gpus_per_replica, d),
    )
    result = _Settlement(settled, unsettled, [], 0, 0.0)
    while unsettled:
        left = []
        for d in unsettled:
            entry = candidates[d]
            counts = _round_up(table, entry, values[d], free)
            if counts is None:
                left.append(d)
                continue
            for cand, replicas in zip(entry.candidates, counts, strict=True):
                if replicas > 0:
                    if not cand.held:
                        free[cand.cluster, cand.sku] -= replicas * entry.deployment.gpus_per_replica
                    settled[entry.deployment.id, cand.cluster_id, cand.sku] = replicas
        progress = len(left) < len(unsettled)
        logger.debug(
            "relax-and-fix round %d: %d deployments settled, %d left",
            result.rounds,
            len(unsettled) - len(left),
            len(left),
        )
        if result.rounds == 0:
            result.contested = list(left)
        unsettled = result.unsettled = left
        if not left or not progress or result.rounds >= RELAX_AND_FIX_MAX_ROUNDS or time.perf_counter() >= until:
            break
        taken = {pair: capacity[pair] - gpus for pair, gpus in free.items() if gpus < capacity[pair]}
        build_started = time.perf_counter()
        model = build_model(problem, table, candidates, spread=True, include=unsettled, taken_gpus=taken)
        result.build_seconds += time.perf_counter() - build_started
        lp = _run(model, options, mip=False, time_limit=until - time.perf_counter())
        result.lp_seconds += lp.seconds
        result.build_seconds += lp.build_seconds
        if lp.solution is None or lp.status != "Optimal":
            break
        values.update(placement_values(model, candidates, lp.solution))
        result.rounds += 1
    return result


def _neighbourhood(
    candidates: list[DeploymentCandidates], narrow: set[int], fractional: list[int], budget: float
) -> list[int]:
    """Return ``narrow`` plus, in greedy's order, as many ``fractional`` deployments as fit ``budget`` x columns."""
    columns = sum(len(candidates[d].candidates) for d in narrow)
    chosen = set(narrow)
    extra = sorted(
        (d for d in fractional if d not in chosen),
        key=lambda d: (candidates[d].deployment.tier_rank, -candidates[d].deployment.gpus_per_replica, d),
    )
    for d in extra:
        if columns + len(candidates[d].candidates) > budget:
            break
        chosen.add(d)
        columns += len(candidates[d].candidates)
    return sorted(chosen)


def _short_deployments(candidates: list[DeploymentCandidates], plan: dict[PlacementKey, int]) -> set[int]:
    """Return the deployments with candidates that ``plan`` places fewer replicas of than desired."""
    placed: dict[int, int] = defaultdict(int)
    for (deployment_id, _cluster_id, _sku), replicas in plan.items():
        placed[deployment_id] += replicas
    return {
        d
        for d, entry in enumerate(candidates)
        if entry.candidates and placed[entry.deployment.id] < entry.deployment.replicas
    }


def _unsettled_deployments(
    table: ClusterTable, candidates: list[DeploymentCandidates], values: dict[int, np.ndarray]
) -> list[int]:
    """Return the deployments that an LP solution does not place fully, integrally and spread."""
    unsettled = []
    for d, entry in enumerate(candidates):
        replicas = np.rint(values[d])
        if np.any(np.abs(values[d] - replicas) > 1e-6) or replicas.sum() != entry.deployment.replicas:
            unsettled.append(d)
            continue
        by_cluster: dict[int, int] = defaultdict(int)
        for cand, count in zip(entry.candidates, replicas, strict=True):
            if count > 0:
                by_cluster[cand.cluster_id] += int(count)
        used = {cand.cluster_id: table.clusters[cand.cluster] for cand in entry.candidates}
        if spread_violation(entry.deployment, by_cluster, used):
            unsettled.append(d)
    return unsettled


def _round_up(
    table: ClusterTable, entry: DeploymentCandidates, values: np.ndarray, free: dict[tuple[int, str], int]
) -> list[int] | None:
    """Round one deployment's LP replicas up to whole replicas, or return None if that does not fit.

    The placed count is the LP's, rounded up. Each candidate keeps its rounded-down replicas and the
    rest go to the largest fractional parts first, within ``free`` GPUs (a held candidate within
    its ``held`` replicas), the caps of the spread mode and its rule.
    """
    deployment = entry.deployment
    gpus = deployment.gpus_per_replica
    caps = spread_caps(deployment)
    target = min(deployment.replicas, math.ceil(float(values.sum()) - 1e-6))
    counts = [math.floor(value + 1e-6) for value in values]
    groups = _cap_groups(table, entry, caps)
    used: dict[tuple, int] = defaultdict(int)
    for cand, replicas in zip(entry.candidates, counts, strict=True):
        if not _fits(cand, replicas, gpus, free):
            return None
        for group, cap in groups[cand.cluster]:
            used[group] += replicas
            if used[group] > cap:
                return None
    order = sorted(range(len(counts)), key=lambda j: counts[j] - values[j])
    for j in order:
        if sum(counts) >= target or values[j] - counts[j] <= 1e-6:
            break
        cand = entry.candidates[j]
        cluster_groups = groups[cand.cluster]
        if _fits(cand, counts[j] + 1, gpus, free) and all(used[group] < cap for group, cap in cluster_groups):
            counts[j] += 1
            for group, _cap in cluster_groups:
                used[group] += 1
    if sum(counts) < target:
        return None
    per_cluster: dict[int, int] = defaultdict(int)
    for cand, replicas in zip(entry.candidates, counts, strict=True):
        if replicas > 0:
            per_cluster[cand.cluster_id] += replicas
    clusters = {cand.cluster_id: table.clusters[cand.cluster] for cand in entry.candidates}
    if spread_violation(deployment, per_cluster, clusters):
        return None
    return counts


def _fits(cand: Candidate, replicas: int, gpus: int, free: dict[tuple[int, str], int]) -> bool:
    """Return whether ``replicas`` fit on ``cand``: its running ones if held, else the ``free`` GPUs."""
    if cand.held:
        return replicas <= cand.held
    return replicas * gpus <= free[cand.cluster, cand.sku]


def _cap_groups(
    table: ClusterTable, entry: DeploymentCandidates, caps: SpreadCaps
) -> dict[int, list[tuple[tuple, int]]]:
    """Return cluster index -> the (group, cap) pairs its replicas count against: cluster, provider, region."""
    groups: dict[int, list[tuple[tuple, int]]] = {}
    for cand in entry.candidates:
        if cand.cluster in groups:
            continue
        cluster_groups = [(("cluster", cand.cluster), caps.cluster)]
        if caps.provider is not None:
            cluster_groups.append((("provider", table.providers[cand.cluster]), caps.provider))
        if caps.region is not None:
            cluster_groups.append((("region", table.regions[cand.cluster]), caps.region))
        groups[cand.cluster] = cluster_groups
    return groups


def _round_and_repair(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    values: dict[int, np.ndarray],
    settled: dict[PlacementKey, int],
    unsettled: list[int],
) -> dict[PlacementKey, int]:
    """Complete a settled plan to one that meets every hard constraint.

    The unsettled deployments keep their rounded-down LP replicas, which fit the capacity that
    the settled ones leave. Greedy then adds missing replicas, placing them first on the pairs with
    the largest fractional parts.
    """
    start = dict(settled)
    fractions: dict[PlacementKey, float] = {}
    for d in unsettled:
        entry = candidates[d]
        for cand, value in zip(entry.candidates, values[d], strict=True):
            key = (entry.deployment.id, cand.cluster_id, cand.sku)
            whole = math.floor(value + 1e-6)
            if whole > 0:
                start[key] = whole
            if value - whole > 1e-6:
                fractions[key] = value - whole
    return greedy_place(problem, table, candidates, start=start, guide=fractions)


def _gpus_taken(
    table: ClusterTable, candidates: list[DeploymentCandidates], plan: dict[PlacementKey, int], excluded: list[int]
) -> dict[tuple[int, str], int]:
    """Return (cluster index, SKU) -> GPUs that ``plan`` gives the deployments not in ``excluded``."""
    if len(excluded) == len(candidates):
        return {}
    skipped = {candidates[d].deployment.id for d in excluded}
    gpus = {entry.deployment.id: entry.deployment.gpus_per_replica for entry in candidates}
    taken: dict[tuple[int, str], int] = defaultdict(int)
    for (deployment_id, cluster_id, sku), replicas in plan.items():
        index = table.index_by_id[cluster_id]
        # Replicas on a cluster that is not schedulable are on held pairs, which take no free GPUs.
        if deployment_id not in skipped and table.schedulable[index]:
            taken[index, sku] += replicas * gpus[deployment_id]
    return taken


def _merge(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    start_plan: dict[PlacementKey, int],
    model: Model,
    stage: _Stage,
    start_objective: float,
) -> dict[PlacementKey, int] | None:
    """Return the MILP stage's plan with the fixed deployments of ``start_plan``, if it is not worse."""
    if stage.solution is None:
        return None
    solved = {candidates[d].deployment.id for d in model.deployments}
    plan = {key: replicas for key, replicas in start_plan.items() if key[0] not in solved}
    for d, xs in placement_values(model, candidates, stage.solution).items():
        entry = candidates[d]
        for cand, value in zip(entry.candidates, xs, strict=True):
            replicas = round(value)
            if replicas > 0:
                plan[entry.deployment.id, table.clusters[cand.cluster].id, cand.sku] = replicas
    if evaluate(problem, plan)[0] > start_objective:
        return start_plan
    return plan


def solve_lp_relaxation(
    problem: ProblemInput,
    options: SchedulerOptions,
    prepared: tuple[ClusterTable, list[DeploymentCandidates]] | None = None,
) -> float | None:
    """Return the optimal objective of the LP relaxation of the (pruned) model, or None if it failed.

    The relaxation includes the spread and diversity rows. ``prepared`` is the output of
    ``build_candidates`` for the same problem and options, to reuse.
    """
    if prepared is None:
        prepared = build_candidates(problem, options)
    table, candidates = prepared
    model = build_model(problem, table, candidates, spread=True)
    stage = _run(model, options, mip=False, time_limit=options.time_limit_s)
    if stage.status != "Optimal":
        logger.warning("LP relaxation stopped with status %s and no optimum", stage.status)
        return None
    return stage.objective
