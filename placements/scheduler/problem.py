"""The scheduler's input and output, as plain data.

The scheduler package never touches the database: ``placements.planning`` builds a
``ProblemInput`` from the models, and stores a ``PlanResult`` back. Benchmarks and property tests
build ``ProblemInput`` directly.
"""

from dataclasses import dataclass, field

# Key of a placement decision: (deployment id, cluster id, SKU name).
PlacementKey = tuple[int, int, str]


@dataclass(frozen=True)
class ClusterInput:
    """A cluster as the scheduler models it."""

    id: int
    name: str
    provider: str
    region: str  # "provider/code", unique across providers
    jurisdiction: str
    latitude: float
    longitude: float
    capabilities: frozenset[str] = frozenset()
    # SKU name -> GPUs free for MCM's replicas (allocatable minus GPUs used by other workloads).
    free_gpus: dict[str, int] = field(default_factory=dict)
    # SKU name -> USD per GPU-hour.
    price_per_gpu_hour: dict[str, float] = field(default_factory=dict)
    # SKU name -> GPUs of the largest node; a replica needs its GPUs on one node. Absent: not known.
    largest_node_gpus: dict[str, int] = field(default_factory=dict)
    # False for a cordoned, draining, suspect, recovering or down cluster, or one excluded by a dry run.
    schedulable: bool = True
    # For a cluster that is not schedulable: True keeps the replicas running there now (cordoned,
    # suspect, recovering), without counting them against its capacity, and places no new ones.
    holds_current: bool = False
    state: str = "active"


@dataclass(frozen=True)
class LockInput:
    """One placement lock. ``None`` or an empty set means that part does not restrict."""

    source: str  # where it comes from, for example "customer acme" or "deployment acme/chat"
    reason: str
    allowed_regions: frozenset[str] | None = None  # region keys, "provider/code"
    allowed_jurisdictions: frozenset[str] | None = None
    allowed_providers: frozenset[str] | None = None
    excluded_providers: frozenset[str] = frozenset()
    required_capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DemandOriginInput:
    name: str
    latitude: float
    longitude: float
    share: float


@dataclass(frozen=True)
class DeploymentInput:
    """A deployment's request: how many replicas of which shape, where its users are, its locks."""

    id: int
    name: str
    tier: str
    tier_rank: int  # 0 is the highest tier
    skus: tuple[str, ...]  # primary SKU first, then allowed alternatives
    gpus_per_replica: int
    replicas: int  # desired replicas
    min_providers: int = 1
    min_regions: int = 1
    region_preference: tuple[str, ...] = ()  # region keys, most preferred first
    origins: tuple[DemandOriginInput, ...] = ()
    locks: tuple[LockInput, ...] = ()
    # SPREAD_FULL in normal operation; while clusters it ran on are lost, SPREAD_CAPPED (hard
    # spread) or SPREAD_OFF (soft spread). See placements.models.SpreadMode; placements.scheduler.spread
    # has the rule of each mode.
    spread: str = "full"
    # Clusters, not schedulable, where this deployment's current replicas are kept as on a
    # ``holds_current`` cluster: lost clusters of a blocked deployment, or of one awaiting approval.
    # A schedulable cluster listed here is an ordinary candidate.
    hold_clusters: frozenset[int] = frozenset()
    # Clusters charged extra for this deployment, because they lost its replicas repeatedly
    # (costs.PENALISED_CLUSTER_PER_GPU per GPU, so they are used when nothing else has room).
    penalised_clusters: frozenset[int] = frozenset()
    # Clusters this deployment may not use now (a failback that waits for approval).
    excluded_clusters: frozenset[int] = frozenset()
    # True during a failback: moving its running replicas costs nothing, so they return to their
    # preferred places even where the gain is smaller than the usual churn cost.
    churn_free: bool = False
    # Measured requests per second per running replica, by cluster id, where the deployment has
    # traffic samples. Removing a replica costs less churn where its replicas serve less demand
    # (costs.churn_cost_per_replica), so a scale-down removes the least-used ones first.
    served_per_replica: tuple[tuple[int, float], ...] = ()


# DeploymentInput.spread values.
SPREAD_FULL = "full"  # no cluster runs every placed replica, and min providers and regions are spanned
SPREAD_CAPPED = "capped"  # no cluster, provider or region runs more than the full rule allows; fewer may be placed
SPREAD_OFF = "off"  # no spread rule


@dataclass
class ProblemInput:
    clusters: list[ClusterInput]
    deployments: list[DeploymentInput]
    # Replicas running now, from the current applied plan; the objective charges for moving them.
    current: dict[PlacementKey, int] = field(default_factory=dict)


@dataclass
class SchedulerOptions:
    time_limit_s: float = 60.0
    gap_target: float = 0.01  # relative MIP gap at which the solver stops early
    # Candidate (cluster, SKU) pairs kept per deployment, cheapest first; 0 keeps all of them.
    max_candidates: int = 16
    threads: int | None = None
    random_seed: int = 0
    solver_log: bool = False


@dataclass
class PlanResult:
    assignments: dict[PlacementKey, int]
    unmet: dict[int, int]  # deployment id -> replicas not placed
    objective: float
    objective_terms: dict[str, float]
    bound: float | None  # best proven lower bound of the (pruned) model
    gap: float | None
    greedy_objective: float
    solver: str  # "highs" or "greedy" (when greedy's plan was kept)
    solver_status: str
    build_seconds: float
    solve_seconds: float
    candidates: int  # (deployment, cluster, SKU) variables in the model
    # deployment id -> explanation (see placements.scheduler.explain)
    explanations: dict[int, dict] = field(default_factory=dict)
