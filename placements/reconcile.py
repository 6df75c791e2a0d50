"""Reconciliation: compare what each cluster runs with the current plan, record drift and repair it.

Each run reads every cluster with an API endpoint afresh through its adapter. It does not use
the latest telemetry snapshot, because a removal decided on data up to one telemetry interval
old could delete replicas that have just become the only ready ones. Then, for the current plan:

1. replicas found where the plan wants none get a step to 0 replicas (``prepare_steps``);
2. one execution pass advances the pending steps, make-before-break (``advance_plan``);
3. executed or failed steps whose cluster no longer matches them are repaired: missing replicas
   are re-applied at once, and extra ones are removed only once the deployment's replacements
   are ready (the rule of ``placements.execution``);
4. stray Deployments are removed: those of deleted deployments at once, those of a live
   deployment under a name MCM did not give once its replacements are ready;
5. steps pending for longer than ``MCM_EXECUTION_TIMEOUT_S`` fail, and a re-plan is requested.

Lost clusters (``fleet.availability.lost_cluster_ids``) are not read and nothing on them is
repaired or removed, so a dead cluster costs no API time-outs. When a cluster stops being lost,
the next run reads it again, and replicas the plan no longer places there are removed once the
deployment's replacements are ready.

A settled step whose pods stop being ready (drift ``not_ready``) counts as a loss of that
deployment on that cluster (``placements.failover.record_loss``), once per episode: the episode
ends when the pods are ready again.

Every difference found is a ``DriftRecord``; a difference that persists unrepaired is recorded
once, not on every run. Like an execution pass, repairs and stray removals are decided on the
calling thread, written to all clusters concurrently, then recorded on the calling thread.
"""

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compliance.services import record_event
from fleet.availability import lost_cluster_ids
from fleet.kube import ClusterError, ObservedDeployment
from fleet.models import Cluster, ClusterCapacity
from fleet.skus import gpu_product_for_sku
from placements.execution import (
    ClusterWrite,
    WriteOutcome,
    advance_plan,
    fail_timed_out_steps,
    is_applied,
    is_converged,
    plan_targets,
    prepare_steps,
    step_summary,
    step_write,
    write_clusters,
)
from placements.models import Deployment, DriftRecord, ExecutionStep, PlacementPlan, StepPhase, StepStatus
from placements.observation import (
    Adapters,
    ClusterObservation,
    executable_clusters,
    kubernetes_name,
    observe_clusters,
    open_adapters,
    unready_deployments,
)
from placements.services import current_plan

logger = logging.getLogger(__name__)

ACTOR = "reconciler"
NOT_READY = "not_ready"  # drift action: the cluster has the step's spec, but fewer pods are ready


@dataclass
class ReconcileReport:
    plan_version: int | None = None
    clusters_observed: int = 0
    clusters_unreachable: list[str] = field(default_factory=list)
    clusters_lost: list[str] = field(default_factory=list)
    steps_created: int = 0
    execution: dict = field(default_factory=dict)
    drift_recorded: int = 0
    repaired: int = 0
    repairs_failed: int = 0
    steps_timed_out: int = 0
    replan_requested_for: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def reconcile(now: datetime | None = None) -> ReconcileReport:
    """Compare every cluster with the current plan, repair drift and fail steps that time out."""
    now = now or timezone.now()
    report = ReconcileReport()
    plan = current_plan()
    lost = lost_cluster_ids(now)
    clusters = list(executable_clusters())
    report.clusters_lost = sorted(cluster.name for cluster in clusters if cluster.pk in lost)
    with open_adapters() as adapters:
        observations = observe_clusters([cluster for cluster in clusters if cluster.pk not in lost], adapters)
        report.clusters_observed = len(observations)
        report.clusters_unreachable = sorted(
            observation.cluster.name for observation in observations.values() if observation.error is not None
        )
        targets: dict[int, dict[int, int]] = {}
        settled: list[ExecutionStep] = []
        unready: set[int] = set()
        if plan is not None:
            report.plan_version = plan.version
            # Only steps settled before this run's pass are checked for drift; the pass itself
            # settles others from the same observations.
            settled = list(
                ExecutionStep.objects.filter(plan=plan, status__in=[StepStatus.EXECUTED, StepStatus.FAILED])
                .exclude(cluster_id__in=lost)
                .select_related("deployment__customer", "cluster", "sku")
            )
            known = set(ExecutionStep.objects.filter(plan=plan).values_list("deployment_id", "cluster_id"))
            report.steps_created = prepare_steps(plan, observations)
            targets = plan_targets(plan, lost)
            record_unplanned(observations, targets, known, report)
            execution = advance_plan(plan, adapters, observations=observations, lost=lost, now=now)
            report.execution = execution.as_dict()
            unready = unready_deployments(targets, observations)
        repair_clusters(settled, observations, unready, adapters, report)

    if plan is not None:
        timed_out = fail_timed_out_steps(plan, now, lost)
        report.steps_timed_out = len(timed_out)
        if timed_out:
            report.replan_requested_for = request_replan(plan, timed_out, now)
    logger.info("reconciliation: %s", report.as_dict())
    return report


def repair_clusters(
    settled: list[ExecutionStep],
    observations: dict[int, ClusterObservation],
    unready: set[int],
    adapters: Adapters,
    report: ReconcileReport,
) -> None:
    """Repair the settled steps' drift and remove strays, writing to the clusters concurrently."""
    not_ready = set(
        DriftRecord.objects.filter(repaired_at__isnull=True, action=NOT_READY).values_list(
            "cluster_id", "kubernetes_name"
        )
    )
    repairs = []
    for step in settled:
        observation = observations.get(step.cluster_id)
        repair = plan_repair(step, observation, step.deployment_id not in unready, not_ready, report)
        if repair is not None:
            repairs.append(repair)
    removals = plan_stray_removals(observations, unready, report)

    writes = [(repair.step.cluster, repair.write) for repair in repairs]
    writes += [(removal.cluster, ClusterWrite(removal.stray.name, None)) for removal in removals]
    outcomes = write_clusters(writes, adapters)

    for repair, outcome in zip(repairs, outcomes[: len(repairs)], strict=True):
        record_repair(repair, outcome, report)
    for removal, outcome in zip(removals, outcomes[len(repairs) :], strict=True):
        record_stray_removal(removal, outcome, report)


def record_unplanned(
    observations: dict[int, ClusterObservation],
    targets: dict[int, dict[int, int]],
    known: set[tuple[int, int]],
    report: ReconcileReport,
) -> None:
    """Record drift for replicas the plan does not place on a cluster and that no step expected."""
    for cluster_id, observation in observations.items():
        for deployment_id, current in observation.deployments.items():
            unplanned = cluster_id not in targets.get(deployment_id, {})
            if unplanned and current.replicas > 0 and (deployment_id, cluster_id) not in known:
                deployment = Deployment.objects.filter(pk=deployment_id).first()
                record_drift(observation.cluster, deployment, current.name, 0, current, "removal_scheduled", report)


@dataclass(frozen=True)
class Repair:
    """A settled step whose cluster drifted, with what the cluster ran and the write that repairs it."""

    step: ExecutionStep
    current: ObservedDeployment | None
    gpu_product: str
    write: ClusterWrite


def plan_repair(
    step: ExecutionStep,
    observation: ClusterObservation | None,
    replacements_ready: bool,
    not_ready: set[tuple[int, str]],
    report: ReconcileReport,
) -> Repair | None:
    """Return the repair a settled step's cluster needs, or None after recording why none is made now.

    A failed step whose cluster converged becomes executed here. ``not_ready`` contains the
    (cluster id, Kubernetes name) pairs with an open ``not_ready`` drift record; a converged
    step closes its record, so the next time its pods stop being ready counts as a new loss.
    """
    gpu_product = gpu_product_for_sku(step.sku.name)
    if observation is None or observation.error is not None or gpu_product is None:
        return None
    current = observation.deployments.get(step.deployment_id)
    name = kubernetes_name(step.deployment)
    if is_converged(step, current, gpu_product):
        if step.status == StepStatus.FAILED:
            recover_step(step, current)
        if (step.cluster_id, name) in not_ready:
            close_not_ready(step.cluster, name)
        return None

    if is_applied(step, current, gpu_product):
        # The spec is right but pods are not ready (lost capacity, a crash loop): nothing to re-apply.
        recorded = record_drift(step.cluster, step.deployment, name, step.desired_replicas, current, NOT_READY, report)
        if recorded and step.status == StepStatus.EXECUTED:
            count_loss(step)
        return None
    if current is not None and current.replicas > step.desired_replicas and not replacements_ready:
        record_drift(
            step.cluster, step.deployment, name, step.desired_replicas, current, "waiting_for_replacements", report
        )
        return None
    return Repair(step, current, gpu_product, step_write(step, gpu_product))


def close_not_ready(cluster: Cluster, name: str) -> None:
    """Close the open ``not_ready`` records of a Deployment whose pods are all ready again."""
    closed = DriftRecord.objects.filter(
        cluster=cluster, kubernetes_name=name, action=NOT_READY, repaired_at__isnull=True
    ).update(repaired_at=timezone.now())
    if closed:
        logger.info("%s on cluster %s is ready again", name, cluster.name)


def count_loss(step: ExecutionStep) -> None:
    """Record that an executed step's cluster lost ready replicas of its deployment."""
    from placements.failover import record_loss  # imported here: the failover module imports the planner

    record_loss(step.deployment_id, step.cluster_id)
    logger.warning("cluster %s lost ready replicas of %s; loss recorded", step.cluster.name, step.deployment)


def record_repair(repair: Repair, outcome: WriteOutcome, report: ReconcileReport) -> None:
    """Record a repair's drift; a failed step that the repair made converge becomes executed."""
    step, current, name = repair.step, repair.current, repair.write.name
    if isinstance(outcome, ClusterError):
        report.repairs_failed += 1
        logger.warning("repair of step %s on cluster %s failed: %s", step.pk, step.cluster.name, outcome)
        record_drift(step.cluster, step.deployment, name, step.desired_replicas, current, "repair_failed", report)
        return
    action = repair_action(current, step.desired_replicas)
    record_drift(step.cluster, step.deployment, name, step.desired_replicas, current, action, report, repaired=True)
    if step.status == StepStatus.FAILED and is_converged(step, outcome, repair.gpu_product):
        recover_step(step, outcome)


def repair_action(current: ObservedDeployment | None, desired: int) -> str:
    if desired == 0:
        return "deleted"
    if current is None:
        return "created"
    return "scaled_down" if current.replicas > desired else "scaled"


def recover_step(step: ExecutionStep, current: ObservedDeployment | None) -> None:
    """Mark a failed step executed because its cluster now runs the step's desired replicas."""
    now = timezone.now()
    with transaction.atomic():
        updated = ExecutionStep.objects.filter(pk=step.pk, status=StepStatus.FAILED).update(
            status=StepStatus.EXECUTED,
            observed_replicas=current.replicas if current else 0,
            observed_ready=current.ready_replicas if current else 0,
            executed_at=now,
            updated_at=now,
        )
        if updated:
            record_event(actor=ACTOR, action="execution_step.recovered", subject=step, after=step_summary(step))
    if updated:
        logger.info("failed step %s converged later and is now executed", step.pk)


@dataclass(frozen=True)
class StrayRemoval:
    """A stray Deployment to delete from a cluster, and the live deployment it belongs to, if any."""

    cluster: Cluster
    deployment: Deployment | None
    stray: ObservedDeployment


def plan_stray_removals(
    observations: dict[int, ClusterObservation], unready: set[int], report: ReconcileReport
) -> list[StrayRemoval]:
    """Return the strays to delete now: managed Deployments that belong to no live deployment under MCM's name for it.

    Strays that must stay for now get a drift record instead.
    """
    ids = {stray.deployment_id for obs in observations.values() for stray in obs.strays if stray.deployment_id}
    live = {deployment.pk: deployment for deployment in Deployment.objects.filter(pk__in=ids)}
    removals = []
    for observation in observations.values():
        for stray in observation.strays:
            deployment = live.get(stray.deployment_id) if stray.deployment_id is not None else None
            if stray.deployment_id is None:
                # NOTE: a managed Deployment without a readable deployment id is left for an
                # operator, because MCM cannot tell which replicas it would remove.
                action = "unidentified"
            elif deployment is not None and deployment.pk in unready:
                action = "waiting_for_replacements"
            else:
                removals.append(StrayRemoval(observation.cluster, deployment, stray))
                continue
            record_drift(observation.cluster, deployment, stray.name, 0, stray, action, report)
    return removals


def record_stray_removal(removal: StrayRemoval, outcome: WriteOutcome, report: ReconcileReport) -> None:
    cluster, deployment, stray = removal.cluster, removal.deployment, removal.stray
    if isinstance(outcome, ClusterError):
        report.repairs_failed += 1
        logger.warning("removing stray deployment %s from cluster %s failed: %s", stray.name, cluster.name, outcome)
        record_drift(cluster, deployment, stray.name, 0, stray, "repair_failed", report)
        return
    record_drift(cluster, deployment, stray.name, 0, stray, "deleted", report, repaired=True)


def record_drift(
    cluster: Cluster,
    deployment: Deployment | None,
    name: str,
    desired: int,
    current: ObservedDeployment | None,
    action: str,
    report: ReconcileReport,
    *,
    repaired: bool = False,
) -> bool:
    """Store a drift record, unless the same unrepaired difference is already on record; returns whether it stored one.

    The same difference means the same desired and observed replicas and the same action. A
    repair also closes the earlier unrepaired records of that Deployment on that cluster.
    """
    replicas = current.replicas if current else 0
    ready = current.ready_replicas if current else 0
    now = timezone.now()
    with transaction.atomic():
        open_records = DriftRecord.objects.select_for_update().filter(
            cluster=cluster, kubernetes_name=name, repaired_at__isnull=True
        )
        # Ready counts move while pods start, so a change in them alone is not a new difference.
        same = open_records.filter(desired_replicas=desired, observed_replicas=replicas, action=action)
        if not repaired and same.exists():
            return False
        if repaired:
            open_records.update(repaired_at=now)
        record = DriftRecord.objects.create(
            cluster=cluster,
            deployment=deployment,
            kubernetes_name=name,
            desired_replicas=desired,
            observed_replicas=replicas,
            ready_replicas=ready,
            action=action,
            repaired_at=now if repaired else None,
        )
        if repaired:
            record_event(
                actor=ACTOR,
                action="drift.repaired",
                subject=record,
                reason=f"{name} on {cluster.name}: {replicas} replicas, {desired} desired",
                after={"action": action, "desired": desired, "observed": replicas, "ready": ready},
            )
    report.drift_recorded += 1
    report.repaired += int(repaired)
    logger.info(
        "drift on cluster %s: %s has %s/%s, desired %s: %s", cluster.name, name, ready, replicas, desired, action
    )
    return True


def request_replan(plan: PlacementPlan, timed_out: list[ExecutionStep], now: datetime) -> list[str]:
    """Audit each cluster that did not converge in time, and enqueue one re-plan around it after commit.

    The SKUs of the timed-out scale-up steps are avoided on their clusters for
    ``MCM_NOT_CONVERGED_AVOID_S`` (``ClusterCapacity.avoid_until``), so the re-plan places those
    replicas elsewhere. A timed-out scale-down step is not held against its cluster: it usually
    waited, make-before-break, for replacements that did not start elsewhere, while its own
    replicas kept running. The cluster's state is not changed: taking a cluster out of service is
    the health model's decision.
    """
    clusters = {step.cluster.pk: step.cluster for step in timed_out}
    avoid_until = now + timedelta(seconds=settings.MCM_NOT_CONVERGED_AVOID_S)
    with transaction.atomic():
        starting = [step for step in timed_out if step.phase == StepPhase.SCALE_UP]
        for step in starting:
            ClusterCapacity.objects.filter(cluster_id=step.cluster_id, sku_id=step.sku_id).update(
                avoid_until=avoid_until
            )
        avoided = {step.cluster_id for step in starting}
        for cluster in clusters.values():
            step_ids = [step.pk for step in timed_out if step.cluster_id == cluster.pk]
            after = {"plan_version": plan.version, "steps": step_ids}
            if cluster.pk in avoided:
                after["avoid_until"] = avoid_until.isoformat()
            record_event(
                actor=ACTOR,
                action="cluster.not_converged",
                subject=cluster,
                reason=f"steps of plan v{plan.version} did not converge in time; re-plan requested",
                after=after,
            )
        transaction.on_commit(enqueue_replan)
    names = sorted(cluster.name for cluster in clusters.values())
    logger.warning("clusters %s did not converge for plan v%s; re-plan requested", names, plan.version)
    return names


def enqueue_replan() -> None:
    from tasks.tasks import plan_placements  # imported here: the tasks module imports this app

    plan_placements.delay()
