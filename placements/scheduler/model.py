"""The placement model as a PuLP problem, handed to HiGHS through PuLP's highspy bridge.

Variables, per deployment d with desired replicas R and GPUs per replica g:

- x[d,c,s] integer: replicas on candidate (cluster c, SKU s), from ``candidates``, so locks, SKU fit
  and schedulability hold by construction. Its upper bound is the per-cluster cap of the spread
  mode (R - 1 for R >= 2, except R under SPREAD_OFF), and for a held candidate also the replicas
  running there;
- u[d] integer: replicas not placed, with sum x[d,.,.] + u[d] = R;
- r[d,c,s] >= running - x[d,c,s]: running replicas removed, only where the deployment runs now and
  is not ``churn_free``;
- z[d,group] and w[d] binaries, only for full-spread deployments that ask for two or more providers
  or regions.

Constraints: capacity sum g * x[.,c,s] <= free GPUs per (c, s), over candidates that are not held
(held candidates keep running replicas and take no free GPUs). Spread for R >= 2 depends on the
deployment's mode (``placements.scheduler.spread``):

- SPREAD_FULL: R * x[d,c] <= (R - 1) * P[d] with x[d,c] summed over SKUs and P[d] = R - u[d] the
  placed count, which forbids one cluster holding every placed replica and so also forbids placing
  exactly one; and for min_providers or min_regions N >= 2: sum over c in group of
  x[d,c] >= z[d,group], sum of z[d,.] >= N * w[d], P[d] <= R * w[d];
- SPREAD_CAPPED: x[d,c] <= R - 1 for a cluster with several SKU columns, and for N >= 2 the sum over
  a provider or region of x[d,c] <= R - (N - 1);
- SPREAD_OFF: no rows.

Each model is its own ``pulp.LpProblem``: the LP stage builds one without the spread rows and later
stages build others with them, so no stage has to remove rows. Variables are created in column order
and every one of them appears in a row, so PuLP's ``exported_variables()``, whose order
``HiGHS.buildSolverModel`` gives the highspy columns, is that same order. ``to_highs`` checks the
column count, and the solver stages address columns by these indices.

PuLP 4.2 builds and hands over the 182,000-column LP stage model of the 10,000 x 1,000 benchmark
fleet in about 5 s, where numpy arrays passed to highspy took 2 s (``docs/bench/scheduler.md``).
"""

import contextlib
import operator
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import highspy
import numpy as np
import pulp

from .candidates import ClusterTable, DeploymentCandidates
from .costs import churn_cost_per_replica, lowest_tier_rank, unmet_penalty_per_replica
from .problem import SPREAD_CAPPED, SPREAD_FULL, SPREAD_OFF, PlacementKey, ProblemInput, SchedulerOptions
from .spread import spread_caps

_banner_lock = threading.Lock()
_banner_written = False

_SENSES: dict[str, Callable[[pulp.LpAffineExpression, float], pulp.LpAffineExpression]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass
class Model:
    """A placement model over a subset of the deployments, as a PuLP problem with indexed columns."""

    deployments: list[int]  # indices into the candidate list, in column order
    problem: pulp.LpProblem = field(default_factory=lambda: pulp.LpProblem("placement"))
    variables: list[pulp.LpVariable] = field(default_factory=list)  # column index -> PuLP variable
    x_start: dict[int, int] = field(default_factory=dict)  # deployment index -> column of its first x
    unmet: dict[int, int] = field(default_factory=dict)  # deployment index -> column of u
    churn: dict[tuple[int, int], int] = field(default_factory=dict)  # (deployment, candidate) -> column of r
    groups: dict[tuple[int, str, str], int] = field(default_factory=dict)  # (deployment, kind, name) -> z
    used: dict[int, int] = field(default_factory=dict)  # deployment index -> column of w
    cost: list[float] = field(default_factory=list)  # objective coefficient per column
    offset: float = 0.0

    @property
    def columns(self) -> int:
        return len(self.variables)

    def add_column(self, name: str, cost: float, upper: float, cat: Literal["Integer", "Binary"] = "Integer") -> int:
        """Add a variable with lower bound 0 and return its column index."""
        self.variables.append(self.problem.add_variable(name, 0.0, upper, cat))
        self.cost.append(cost)
        return len(self.variables) - 1

    def add_row(self, columns: list[int], values: list[float], sense: str, rhs: float) -> None:
        """Add the constraint sum(values * columns) ``sense`` ``rhs``, ``sense`` being "<=", ">=" or "=="."""
        terms = [(self.variables[column], value) for column, value in zip(columns, values, strict=True)]
        self.problem.addConstraint(_SENSES[sense](pulp.LpAffineExpression.from_list(terms), rhs))

    def set_objective(self) -> None:
        """Give the problem the objective sum(cost * columns) + offset, leaving out zero costs."""
        terms = [(variable, cost) for variable, cost in zip(self.variables, self.cost, strict=True) if cost]
        self.problem.setObjective(pulp.LpAffineExpression.from_list(terms, constant=self.offset))


def build_model(
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    spread: bool = True,
    include: list[int] | None = None,
    taken_gpus: dict[tuple[int, str], int] | None = None,
) -> Model:
    """Build the placement model of the deployments ``include`` (all of them by default).

    Without ``spread`` the spread and diversity rows are left out: they are most of the rows, and
    the LP stage solves without them. ``taken_gpus`` maps (cluster index, SKU) to GPUs that
    deployments outside the model already hold, which the capacity rows subtract.
    """
    include = list(range(len(candidates))) if include is None else include
    taken_gpus = taken_gpus or {}
    model = Model(deployments=include)
    lowest = lowest_tier_rank(problem.deployments)
    capacity_columns: dict[tuple[int, str], list[int]] = defaultdict(list)
    capacity_values: dict[tuple[int, str], list[float]] = defaultdict(list)
    capacity_demand: dict[tuple[int, str], int] = defaultdict(int)
    running: dict[int, dict[tuple[int, str], int]] = defaultdict(dict)
    for (deployment_id, cluster_id, sku), replicas in problem.current.items():
        running[deployment_id][cluster_id, sku] = replicas

    for d in include:
        entry = candidates[d]
        deployment = entry.deployment
        replicas = deployment.replicas
        gpus = deployment.gpus_per_replica
        cap = spread_caps(deployment).cluster
        model.x_start[d] = model.columns
        for j, cand in enumerate(entry.candidates):
            if cand.held:
                model.add_column(f"x_{d}_{j}", cand.cost.total, max(0, min(cap, cand.held)))
                continue
            pair = (cand.cluster, cand.sku)
            free = cand.free_gpus - taken_gpus.get(pair, 0)
            upper = max(0, min(cap, free // gpus))
            column = model.add_column(f"x_{d}_{j}", cand.cost.total, upper)
            capacity_columns[pair].append(column)
            capacity_values[pair].append(float(gpus))
            capacity_demand[pair] += upper * gpus
        unmet = model.add_column(f"u_{d}", unmet_penalty_per_replica(deployment, lowest), replicas)
        model.unmet[d] = unmet
        x_columns = list(range(model.x_start[d], unmet))
        model.add_row([*x_columns, unmet], [1.0] * (len(x_columns) + 1), "==", replicas)

        model.offset += _add_churn(model, d, entry, running.get(deployment.id, {}))
        if spread and replicas >= 2 and entry.candidates and deployment.spread != SPREAD_OFF:
            add_spread(model, table, d, entry)

    for pair, columns in capacity_columns.items():
        cluster, sku = pair
        free = int(table.free[sku][cluster]) - taken_gpus.get(pair, 0)
        if capacity_demand[pair] > free:  # rows that can never bind are left out
            model.add_row(columns, capacity_values[pair], "<=", free)
    model.set_objective()
    return model


def _add_churn(model: Model, d: int, entry: DeploymentCandidates, running_pairs: dict[tuple[int, str], int]) -> float:
    """Add r >= running - x where the deployment runs now; return the churn of pairs with no candidate.

    ``running_pairs`` maps (cluster id, SKU) to the deployment's replicas running there now. A
    ``churn_free`` deployment gets no columns and no rows.
    """
    if entry.deployment.churn_free:
        return 0.0
    position = {(cand.cluster_id, cand.sku): j for j, cand in enumerate(entry.candidates)}
    constant = 0.0
    for pair, running in running_pairs.items():
        if running <= 0:
            continue
        churn = churn_cost_per_replica(entry.deployment, pair[0])
        j = position.get(pair)
        if j is None:
            constant += running * churn
            continue
        removed = model.add_column(f"r_{d}_{j}", churn, running)
        model.churn[d, j] = removed
        model.add_row([removed, model.x_start[d] + j], [1.0, 1.0], ">=", running)
    return constant


def add_spread(model: Model, table: ClusterTable, d: int, entry: DeploymentCandidates) -> None:
    """Add the spread rows of the deployment's mode (see the module docstring); SPREAD_OFF has none."""
    deployment = entry.deployment
    by_cluster: dict[int, list[int]] = defaultdict(list)
    for j, cand in enumerate(entry.candidates):
        by_cluster[cand.cluster].append(model.x_start[d] + j)
    if deployment.spread == SPREAD_FULL:
        _add_full_spread(model, table, d, entry, by_cluster)
    elif deployment.spread == SPREAD_CAPPED:
        _add_capped_spread(model, table, d, entry, by_cluster)


def _add_capped_spread(
    model: Model, table: ClusterTable, d: int, entry: DeploymentCandidates, by_cluster: dict[int, list[int]]
) -> None:
    """Cap the replicas per cluster, provider and region; x's upper bound already caps a one-column cluster."""
    caps = spread_caps(entry.deployment)
    for columns in by_cluster.values():
        if len(columns) > 1:
            model.add_row(columns, [1.0] * len(columns), "<=", caps.cluster)
    for cap, names in ((caps.provider, table.providers), (caps.region, table.regions)):
        if cap is None:
            continue
        members: dict[str, list[int]] = defaultdict(list)
        for cluster, columns in by_cluster.items():
            members[names[cluster]].extend(columns)
        for columns in members.values():
            model.add_row(columns, [1.0] * len(columns), "<=", cap)


def _add_full_spread(
    model: Model, table: ClusterTable, d: int, entry: DeploymentCandidates, by_cluster: dict[int, list[int]]
) -> None:
    """Add the one-cluster spread rows and, where asked, the provider and region diversity rows."""
    deployment = entry.deployment
    replicas = deployment.replicas
    unmet = model.unmet[d]

    # R * x[d,c] <= (R - 1) * (R - u[d]), rearranged to R * x[d,c] + (R - 1) * u[d] <= (R - 1) * R.
    for columns in by_cluster.values():
        values = [float(replicas)] * len(columns) + [float(replicas - 1)]
        model.add_row([*columns, unmet], values, "<=", (replicas - 1) * replicas)

    wanted = {"provider": deployment.min_providers, "region": deployment.min_regions}
    if max(wanted.values()) < 2:
        return
    used = model.add_column(f"w_{d}", 0.0, 1, "Binary")
    model.used[d] = used
    # P[d] <= R * w[d], with P[d] = R - u[d].
    model.add_row([unmet, used], [1.0, float(replicas)], ">=", replicas)
    for kind, minimum in wanted.items():
        if minimum < 2:
            continue
        names = table.providers if kind == "provider" else table.regions
        members: dict[str, list[int]] = defaultdict(list)
        for cluster, columns in by_cluster.items():
            members[names[cluster]].extend(columns)
        zs = []
        for number, (name, columns) in enumerate(members.items()):
            z = model.add_column(f"z_{d}_{kind}_{number}", 0.0, 1, "Binary")
            model.groups[d, kind, name] = z
            zs.append(z)
            model.add_row([*columns, z], [1.0] * len(columns) + [-1.0], ">=", 0)
        model.add_row([*zs, used], [1.0] * len(zs) + [-float(minimum)], ">=", 0)


def to_highs(model: Model, options: SchedulerOptions, mip: bool) -> highspy.Highs:
    """Pass the model to a new HiGHS instance configured from ``options``; ``mip`` keeps integrality.

    PuLP's ``HiGHS.buildSolverModel`` fills the instance that ``problem.solverModel`` holds, so the
    instance comes from ``new_highs``, which keeps the banner quiet, and not from PuLP's
    ``createAndConfigureSolver``, which creates one without silencing the banner.
    """
    highs = new_highs(options)
    model.problem.solverModel = highs
    try:
        pulp.HiGHS(mip=mip, msg=options.solver_log).buildSolverModel(model.problem)
    finally:
        model.problem.solverModel = None  # the caller owns the instance; the model may outlive it
    if highs.getNumCol() != model.columns:
        # exported_variables() leaves out variables in no row and no objective term; columns would shift.
        raise pulp.PulpError(
            f"Passing the model to HiGHS failed: PuLP exported {highs.getNumCol()} columns for "
            f"{model.columns} variables, so column indices would not match the variables"
        )
    return highs


def new_highs(options: SchedulerOptions) -> highspy.Highs:
    """Create a HiGHS instance with the log, thread and seed options of ``options``."""
    if options.threads is not None:
        # HiGHS keeps one thread pool per process, sized by the first run. A later run with another
        # thread count fails with no solution unless the pool is reset first.
        # NOTE: the reset is unsafe while another thread of this process is inside a HiGHS solve.
        highspy.Highs.resetGlobalScheduler(True)
    with _quiet_banner(not options.solver_log):
        highs = highspy.Highs()
    highs.setOptionValue("output_flag", options.solver_log)
    highs.setOptionValue("random_seed", options.random_seed)
    if options.threads is not None:
        highs.setOptionValue("threads", options.threads)
    return highs


@contextlib.contextmanager
def _quiet_banner(quiet: bool):
    """Send file descriptor 1 to /dev/null while the process's first HiGHS instance is created.

    highspy 1.16 writes its version and copyright banner to the C stdout from the constructor of
    the first instance in a process, before any option such as ``output_flag`` can be set.
    NOTE: output that another thread writes to stdout in that window is lost too.
    """
    global _banner_written
    with _banner_lock:
        if not quiet or _banner_written:
            _banner_written = True
            yield
            return
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            _banner_written = True


def start_values(
    model: Model,
    problem: ProblemInput,
    table: ClusterTable,
    candidates: list[DeploymentCandidates],
    plan: dict[PlacementKey, int],
) -> np.ndarray:
    """Return the value of every column in ``plan`` (a feasible plan), for HiGHS's ``setSolution``."""
    values = np.zeros(model.columns)
    for d in model.deployments:
        entry = candidates[d]
        deployment = entry.deployment
        placed = 0
        for j, cand in enumerate(entry.candidates):
            cluster = table.clusters[cand.cluster]
            replicas = plan.get((deployment.id, cluster.id, cand.sku), 0)
            values[model.x_start[d] + j] = replicas
            placed += replicas
            if replicas > 0:
                for key in ((d, "provider", cluster.provider), (d, "region", cluster.region)):
                    if key in model.groups:
                        values[model.groups[key]] = 1.0
            removed = model.churn.get((d, j))
            if removed is not None:
                running = problem.current.get((deployment.id, cluster.id, cand.sku), 0)
                values[removed] = max(0, running - replicas)
        values[model.unmet[d]] = deployment.replicas - placed
        if d in model.used:
            values[model.used[d]] = 1.0 if placed > 0 else 0.0
    return values


def placement_values(model: Model, candidates: list[DeploymentCandidates], solution) -> dict[int, np.ndarray]:
    """Return deployment index -> the x values of its candidates in ``solution`` (a column-value list)."""
    values = np.asarray(solution, dtype=np.float64)
    return {d: values[model.x_start[d] : model.x_start[d] + len(candidates[d].candidates)] for d in model.deployments}
