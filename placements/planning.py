"""Runs the global scheduler on the database's state and stores the result as a placement plan.

Reads every deployment and cluster with its availability (``fleet.availability``), decides what
to do with replicas on lost clusters (``placements.failover``), solves
(``placements.scheduler.solve``), and writes a ``PlacementPlan`` with its assignments, outcomes
and audit event. Applying a plan holds a row lock on ``SchedulerLock`` from reading the inputs to
committing the plan and the deployments' conditions, so two runs never apply plans computed from
the same state.
"""

import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from compliance.locks import locks_by_subject
from compliance.services import record_event
from fleet.availability import Availability, cluster_availability
from fleet.models import Cluster, GpuSku
from placements import failover
from placements.autoscaling import measured_traffic, served_per_replica, weighted_origins
from placements.models import (
    TIER_ORDER,
    Assignment,
    Deployment,
    DeploymentOutcome,
    PlacementPlan,
    PlanStatus,
    SchedulerLock,
)
from placements.routing import schedule_route_refresh
from placements.scheduler import solve
from placements.scheduler.problem import (
    ClusterInput,
    DemandOriginInput,
    DeploymentInput,
    PlacementKey,
    PlanResult,
    ProblemInput,
    SchedulerOptions,
)
from placements.services import current_placement, current_plan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exclusions:
    """What a dry run pretends ("what if provider X goes down?", "what if I drain this cluster?").

    Excluded providers and regions count as lost, like an outage. A drained cluster keeps no
    replicas; a cordoned one keeps those it runs and takes no new ones. Clusters are named.
    """

    providers: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()  # region codes, or "provider/code" keys
    drain_clusters: frozenset[str] = frozenset()
    cordon_clusters: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.providers or self.regions or self.drain_clusters or self.cordon_clusters)

    def excludes(self, cluster: Cluster) -> bool:
        region = cluster.region
        return (
            region.provider.name in self.providers
            or region.code in self.regions
            or f"{region.provider.name}/{region.code}" in self.regions
        )

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "providers": sorted(self.providers),
            "regions": sorted(self.regions),
            "drain_clusters": sorted(self.drain_clusters),
            "cordon_clusters": sorted(self.cordon_clusters),
        }


@dataclass
class PlanDiff:
    """Replica changes between two plans, per deployment and per provider and region."""

    added: int = 0
    removed: int = 0
    deployments_changed: int = 0
    by_location: dict[str, int] = field(default_factory=dict)  # "provider/region" -> net change


def plan_placement(plan: PlacementPlan | None) -> dict[PlacementKey, int]:
    """Return a plan's replicas by (deployment id, cluster id, SKU); empty for no plan."""
    return current_placement(plan) if plan is not None else {}


def region_key(provider: str, code: str) -> str:
    return f"{provider}/{code}"


def load_clusters(
    exclusions: Exclusions,
    *,
    availability: dict[int, Availability] | None = None,
    now: datetime | None = None,
) -> list[ClusterInput]:
    """Read every cluster as the scheduler's input, with its availability at ``now``.

    Only a cluster whose availability is schedulable, and that a dry run does not exclude, takes
    new replicas. A holding cluster (cordoned, suspect, recovering) keeps the replicas it runs.
    ``availability`` defaults to ``fleet.availability.cluster_availability`` at ``now``.
    """
    clusters = list(Cluster.objects.select_related("region__provider").prefetch_related("capacities__sku"))
    now = now or timezone.now()
    if availability is None:
        availability = cluster_availability(clusters, now=now)
    result = []
    for cluster in clusters:
        region = cluster.region
        state = availability.get(cluster.pk) or cluster_availability([cluster], now=now)[cluster.pk]
        excluded = exclusions.excludes(cluster)
        what_if = excluded or cluster.name in exclusions.drain_clusters or cluster.name in exclusions.cordon_clusters
        holds, label = state.holds_current, state.reason
        if excluded:
            holds, label = False, "excluded"
        elif cluster.name in exclusions.drain_clusters:
            holds, label = False, "draining (what-if)"
        elif cluster.name in exclusions.cordon_clusters:
            holds, label = state.holds_current or state.schedulable, "cordoned (what-if)"
        # Capacity where replicas recently failed to become ready counts as full until avoid_until.
        # TODO: free GPUs are counted per cluster and SKU, not per node. A replica whose GPUs fit
        # in the total but on no single node stays pending until its step times out. This goes
        # once telemetry reports free GPUs per node and the scheduler packs replicas by node.
        free = {
            capacity.sku.name: 0 if capacity.avoid_until and capacity.avoid_until > now else capacity.free_gpus
            for capacity in cluster.capacities.all()
        }
        prices = {capacity.sku.name: float(capacity.hourly_price_per_gpu) for capacity in cluster.capacities.all()}
        largest = {
            capacity.sku.name: capacity.largest_node_gpus
            for capacity in cluster.capacities.all()
            if capacity.largest_node_gpus is not None
        }
        result.append(
            ClusterInput(
                id=cluster.pk,
                name=cluster.name,
                provider=region.provider.name,
                region=region_key(region.provider.name, region.code),
                jurisdiction=region.jurisdiction,
                latitude=region.latitude,
                longitude=region.longitude,
                capabilities=frozenset(cluster.capabilities),
                free_gpus=free,
                price_per_gpu_hour=prices,
                largest_node_gpus=largest,
                schedulable=state.schedulable and not what_if,
                holds_current=holds,
                state=label,
            )
        )
    return result


def load_deployments(
    current: dict[PlacementKey, int] | None = None, *, now: datetime | None = None
) -> list[DeploymentInput]:
    """Read every deployment as the scheduler's input, with its demand weighted by measured traffic.

    Where a deployment has traffic samples in its window (``placements.autoscaling.measured_traffic``),
    its demand origins' shares follow the measured requests per second of matching origins, and
    ``served_per_replica`` gives the requests per second each of its ``current`` replicas serves
    per cluster. The stored demand origins are not changed.
    """
    by_customer, by_deployment = locks_by_subject()
    tier_rank = {tier.value: rank for rank, tier in enumerate(TIER_ORDER)}
    deployments = (
        Deployment.objects.select_related("customer", "sku")
        .prefetch_related("alternative_skus", "region_preferences__region__provider", "demand_origins")
        .order_by("pk")
    )
    traffic = measured_traffic(Deployment.objects.values_list("pk", flat=True), now=now)
    replicas_by_cluster: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (deployment_id, cluster_id, _sku), replicas in (current or {}).items():
        replicas_by_cluster[deployment_id][cluster_id] += replicas
    result = []
    for deployment in deployments:
        measured = traffic.get(deployment.pk)
        alternatives = sorted(sku.name for sku in deployment.alternative_skus.all() if sku.pk != deployment.sku_id)
        preferences = sorted(deployment.region_preferences.all(), key=lambda preference: preference.rank)
        result.append(
            DeploymentInput(
                id=deployment.pk,
                name=str(deployment),
                tier=deployment.customer.tier,
                tier_rank=tier_rank[deployment.customer.tier],
                skus=(deployment.sku.name, *alternatives),
                gpus_per_replica=deployment.gpus_per_replica,
                replicas=deployment.desired_replicas,
                min_providers=deployment.min_providers,
                min_regions=deployment.min_regions,
                region_preference=tuple(
                    region_key(preference.region.provider.name, preference.region.code) for preference in preferences
                ),
                origins=weighted_origins(
                    [
                        DemandOriginInput(origin.name, origin.latitude, origin.longitude, origin.share)
                        for origin in deployment.demand_origins.all()
                    ],
                    measured,
                ),
                locks=tuple(by_customer.get(deployment.customer_id, []) + by_deployment.get(deployment.pk, [])),
                served_per_replica=served_per_replica(measured, replicas_by_cluster.get(deployment.pk, {})),
            )
        )
    return result


def build_problem(exclusions: Exclusions = Exclusions(), *, now: datetime | None = None) -> ProblemInput:
    """Build the scheduler's input as a dry run would: failover decisions are made, nothing is written."""
    problem, _decisions = prepare_problem(exclusions, write=False, now=now)
    return problem


def prepare_problem(
    exclusions: Exclusions, *, write: bool, now: datetime | None = None
) -> tuple[ProblemInput, failover.FailoverDecisions]:
    """Build the scheduler's input with each deployment's failover decisions.

    Clusters a dry run excludes count as lost, like clusters under an outage. ``write`` (only for
    a run that applies its plan, under the scheduler lock) lets failover write its requests,
    audit events and alerts.
    """
    now = now or timezone.now()
    availability = cluster_availability(now=now)
    clusters = load_clusters(exclusions, availability=availability, now=now)
    lost = {pk for pk, state in availability.items() if state.lost}
    lost |= {cluster.id for cluster in clusters if cluster.state == "excluded"}
    current = current_placement()
    deployments, decisions = failover.plan_failover(
        clusters, load_deployments(current, now=now), current, lost=lost, now=now, write=write
    )
    return ProblemInput(clusters=clusters, deployments=deployments, current=current), decisions


def digest_problem(problem: ProblemInput) -> str:
    """SHA-256 of the problem in a canonical JSON form, so identical inputs have one digest."""

    def canonical(value):
        if isinstance(value, frozenset | set):
            return sorted(value)
        raise TypeError(f"cannot serialise {type(value).__name__}")

    payload = {
        "clusters": [dataclasses.asdict(cluster) for cluster in problem.clusters],
        "deployments": [dataclasses.asdict(deployment) for deployment in problem.deployments],
        "current": sorted([*key, replicas] for key, replicas in problem.current.items()),
    }
    encoded = json.dumps(payload, sort_keys=True, default=canonical).encode()
    return hashlib.sha256(encoded).hexdigest()


def default_options() -> SchedulerOptions:
    return SchedulerOptions(
        time_limit_s=settings.MCM_SCHEDULER_TIME_LIMIT_S,
        gap_target=settings.MCM_SCHEDULER_GAP_TARGET,
    )


def run_plan(
    *,
    actor,
    trigger: str,
    dry_run: bool = False,
    exclusions: Exclusions = Exclusions(),
    options: SchedulerOptions | None = None,
) -> PlacementPlan:
    """Plan every deployment's replicas; apply the plan unless ``dry_run``.

    A dry run solves without the scheduler lock and stores the plan with status ``dry_run``; an
    applied plan supersedes the previous one. Both are audited.
    """
    options = options or default_options()
    if dry_run:
        problem, decisions = prepare_problem(exclusions, write=False)
        result = solve(problem, options)
        with transaction.atomic():
            SchedulerLock.acquire()
            return store_plan(
                actor=actor,
                trigger=trigger,
                problem=problem,
                result=result,
                status=PlanStatus.DRY_RUN,
                exclusions=exclusions,
                options=options,
                decisions=decisions,
            )

    if exclusions:
        raise ValueError(
            "exclusions are only for dry runs: declare an outage, or cordon or drain a cluster, to do it for real"
        )
    with transaction.atomic():
        SchedulerLock.acquire()
        now = timezone.now()
        problem, decisions = prepare_problem(exclusions, write=True, now=now)
        result = solve(problem, options)
        previous = current_plan()
        plan = store_plan(
            actor=actor,
            trigger=trigger,
            problem=problem,
            result=result,
            status=PlanStatus.APPLIED,
            exclusions=exclusions,
            options=options,
            decisions=decisions,
        )
        if previous is not None:
            previous.status = PlanStatus.SUPERSEDED
            previous.save(update_fields=["status"])
        failover.record_failbacks(plan, decisions, now)
        failover.update_conditions(plan, now)
        schedule_route_refresh(reason=f"plan v{plan.version} applied")
    return plan


def store_plan(
    *,
    actor,
    trigger: str,
    problem: ProblemInput,
    result: PlanResult,
    status: str,
    exclusions: Exclusions,
    options: SchedulerOptions,
    decisions: failover.FailoverDecisions | None = None,
) -> PlacementPlan:
    """Insert the plan, its assignments and outcomes, and its audit event; the caller holds the lock."""
    version = (PlacementPlan.objects.aggregate(last=Max("version"))["last"] or 0) + 1
    summary = summarise(problem, result)
    plan = PlacementPlan.objects.create(
        version=version,
        trigger=trigger,
        status=status,
        parameters={
            "exclusions": exclusions.as_dict(),
            "time_limit_s": options.time_limit_s,
            "gap_target": options.gap_target,
            "max_candidates": options.max_candidates,
            "candidates": result.candidates,
            "failover": (decisions or failover.FailoverDecisions()).as_parameters(),
        },
        inputs_digest=digest_problem(problem),
        objective=result.objective,
        objective_terms=result.objective_terms,
        bound=result.bound,
        gap=result.gap,
        greedy_objective=result.greedy_objective,
        solver=result.solver,
        solver_status=result.solver_status,
        build_seconds=result.build_seconds,
        solve_seconds=result.solve_seconds,
        summary=summary,
        applied_at=timezone.now() if status == PlanStatus.APPLIED else None,
    )
    store_rows(plan, problem, result)

    action = "plan.applied" if status == PlanStatus.APPLIED else "plan.dry_run"
    record_event(
        actor=actor,
        action=action,
        subject=plan,
        reason=f"trigger={trigger}",
        after={
            "version": plan.version,
            "objective": plan.objective,
            "gap": plan.gap,
            "solver": plan.solver,
            "placed": summary["placed_replicas"],
            "unmet": summary["unmet_replicas"],
            "exclusions": exclusions.as_dict(),
        },
    )
    logger.info(
        "stored plan v%s status=%s solver=%s objective=%s gap=%s unmet=%s",
        plan.version,
        status,
        plan.solver,
        plan.objective,
        plan.gap,
        summary["unmet_replicas"],
    )
    return plan


def store_rows(plan: PlacementPlan, problem: ProblemInput, result: PlanResult) -> None:
    """Insert a plan's assignments and one outcome per deployment, in batches."""
    sku_ids = dict(GpuSku.objects.values_list("name", "pk"))
    Assignment.objects.bulk_create(
        [
            Assignment(plan=plan, deployment_id=deployment, cluster_id=cluster, sku_id=sku_ids[sku], replicas=replicas)
            for (deployment, cluster, sku), replicas in result.assignments.items()
            if replicas > 0
        ],
        batch_size=2000,
    )
    placed: dict[int, int] = defaultdict(int)
    for (deployment, _cluster, _sku), replicas in result.assignments.items():
        placed[deployment] += replicas
    DeploymentOutcome.objects.bulk_create(
        [
            DeploymentOutcome(
                plan=plan,
                deployment_id=deployment.id,
                placed_replicas=placed[deployment.id],
                unmet_replicas=result.unmet.get(deployment.id, 0),
                explanation=result.explanations.get(deployment.id, {}),
            )
            for deployment in problem.deployments
        ],
        batch_size=2000,
    )


def summarise(problem: ProblemInput, result: PlanResult) -> dict:
    """Replicas per provider and region, and unmet replicas per tier, for reports and the admin."""
    clusters = {cluster.id: cluster for cluster in problem.clusters}
    by_provider: dict[str, int] = defaultdict(int)
    by_region: dict[str, int] = defaultdict(int)
    gpus_by_sku: dict[str, int] = defaultdict(int)
    gpus_per_replica = {deployment.id: deployment.gpus_per_replica for deployment in problem.deployments}
    for (deployment, cluster_id, sku), replicas in result.assignments.items():
        cluster = clusters[cluster_id]
        by_provider[cluster.provider] += replicas
        by_region[cluster.region] += replicas
        gpus_by_sku[sku] += replicas * gpus_per_replica[deployment]
    unmet_by_tier = {tier.value: 0 for tier in TIER_ORDER}
    requested_by_tier = {tier.value: 0 for tier in TIER_ORDER}
    for deployment in problem.deployments:
        requested_by_tier[deployment.tier] += deployment.replicas
        unmet_by_tier[deployment.tier] += result.unmet.get(deployment.id, 0)
    return {
        "deployments": len(problem.deployments),
        "clusters": len(problem.clusters),
        "schedulable_clusters": sum(1 for cluster in problem.clusters if cluster.schedulable),
        "requested_replicas": sum(deployment.replicas for deployment in problem.deployments),
        "placed_replicas": sum(result.assignments.values()),
        "unmet_replicas": sum(result.unmet.values()),
        "replicas_by_provider": dict(sorted(by_provider.items())),
        "replicas_by_region": dict(sorted(by_region.items())),
        "gpus_by_sku": dict(sorted(gpus_by_sku.items())),
        "requested_by_tier": requested_by_tier,
        "unmet_by_tier": unmet_by_tier,
    }


def diff_plans(old: PlacementPlan | None, new: PlacementPlan) -> PlanDiff:
    """Compare two plans' assignments; ``old`` None means everything in ``new`` is added."""
    before = plan_placement(old)
    after = plan_placement(new)
    cluster_ids = {key[1] for key in before} | {key[1] for key in after}
    locations = {
        pk: region_key(provider, code)
        for pk, provider, code in Cluster.objects.filter(pk__in=cluster_ids).values_list(
            "pk", "region__provider__name", "region__code"
        )
    }
    diff = PlanDiff()
    changed = set()
    by_location: dict[str, int] = defaultdict(int)
    for key in before.keys() | after.keys():
        delta = after.get(key, 0) - before.get(key, 0)
        if delta == 0:
            continue
        changed.add(key[0])
        if delta > 0:
            diff.added += delta
        else:
            diff.removed -= delta
        by_location[locations[key[1]]] += delta
    diff.deployments_changed = len(changed)
    diff.by_location = {location: delta for location, delta in sorted(by_location.items()) if delta}
    return diff
