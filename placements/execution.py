"""Execution of an applied plan through the clusters' Kubernetes APIs, make-before-break.

``prepare_steps`` turns a plan into ``ExecutionStep`` rows, one per deployment and cluster.
``advance_plan`` runs one pass over a plan's pending steps. It reads each involved cluster once,
then writes what is missing and marks a step executed once the cluster reports exactly the
desired replicas, all ready.

Make-before-break rule: a write that lowers a cluster's replica count waits until the
deployment's replacements are ready. A write lowers the count when the fresh observation shows
more replicas than the step wants. Replacements are ready when every cluster that the plan gives
the deployment reports at least the planned number of ready replicas. Writes that add replicas
never wait. The gate uses the fresh observation rather
than the step's phase, so a phase guessed from a stale observation cannot deadlock or break it.

Lost clusters (``fleet.availability``: under an open outage, or down) are left alone: their
steps stay pending without an API call, are counted as ``waiting_for_cluster``, and do not time
out, because failover planning handles the replicas there. The make-before-break gate ignores
targets on lost clusters, so a plan that keeps replicas on a lost cluster (failover blocked or
awaiting approval) does not hold back the deployment's scale-downs elsewhere. When the cluster
is back, the next pass runs its steps, and their time-out counts from the recovery.

No Kubernetes call runs inside a transaction: a step is claimed by a compare-and-set UPDATE of
its attempt counter, the API is called, then the outcome is recorded in a short transaction.
Every write is idempotent, so a second pass, or one after a crash half-way, changes nothing more.

Before any write, a pass checks the plan's steps against the deployments' effective placement
locks as they are now (``placements.lock_guard``), independently of the scheduler. A pending step
that would put replicas where a lock forbids fails without an API call. Its message names the
lock, and the pass records an audit event ``execution_step.lock_rejected`` and raises an alert
``lock_violation`` on the deployment. Make-before-break does not wait for rejected replacements.
A pass of a later plan whose steps for that deployment break no lock resolves the alert.
NOTE: a rejected step writes nothing, so replicas already running where a newer lock forbids stay
until a plan removes them (the scheduler plans them away, and a step to 0 is never rejected).

A pass runs in three phases, so that clusters are called concurrently while all database work
stays on the calling thread: decide and claim every step (database), write to the clusters,
one worker thread per cluster (``run_per_cluster``), then record the outcomes (database).
"""

import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from compliance.services import record_event
from fleet.alerts import raise_alert, resolve_alert
from fleet.availability import covers, lost_cluster_ids
from fleet.kube import ClusterAdapter, ClusterError, DesiredDeployment, ObservedDeployment
from fleet.models import Alert, AlertSeverity, Cluster, Outage, TelemetrySnapshot
from fleet.skus import gpu_product_for_sku
from placements.lock_guard import rejected_placements
from placements.models import (
    TIER_ORDER,
    Assignment,
    Deployment,
    ExecutionStep,
    PlacementPlan,
    PlanStatus,
    StepPhase,
    StepStatus,
)
from placements.observation import (
    Adapters,
    ClusterObservation,
    executable_clusters,
    kubernetes_name,
    observe_clusters,
    open_adapters,
    ready_on,
    run_per_cluster,
    unready_deployments,
)
from placements.routing import schedule_route_refresh

logger = logging.getLogger(__name__)

ACTOR = "executor"
LOCK_ALERT = "lock_violation"
StepKey = tuple[int, int]  # (deployment id, cluster id)


@dataclass
class ExecutionReport:
    plan_id: int
    plan_version: int
    current: bool = True
    pending: int = 0
    applied: int = 0
    executed: int = 0
    failed: int = 0
    waiting: int = 0
    blocked: int = 0
    # Pending steps on lost clusters, which the pass does not attempt.
    waiting_for_cluster: int = 0
    within_timeout: bool = False
    retryable_error: ClusterError | None = None

    @property
    def done(self) -> bool:
        """Whether every step that can run now is settled; steps on lost clusters wait for their cluster."""
        return not self.current or self.pending == self.executed + self.failed + self.waiting_for_cluster

    def as_dict(self) -> dict:
        data = {name: value for name, value in vars(self).items() if name != "retryable_error"}
        data["retryable_error"] = str(self.retryable_error) if self.retryable_error else ""
        data["done"] = self.done
        return data


def plan_targets(plan: PlacementPlan, lost: Collection[int] = ()) -> dict[int, dict[int, int]]:
    """Return the plan's replicas per deployment and cluster, from its steps.

    Steps to 0 replicas and steps on the ``lost`` clusters are left out, so that make-before-break
    waits only for replacements that can come up.
    """
    targets: dict[int, dict[int, int]] = defaultdict(dict)
    rows = (
        ExecutionStep.objects.filter(plan=plan, desired_replicas__gt=0)
        .exclude(cluster_id__in=lost)
        .values_list("deployment_id", "cluster_id", "desired_replicas")
    )
    for deployment_id, cluster_id, replicas in rows:
        targets[deployment_id][cluster_id] = replicas
    return dict(targets)


# Preparation.


def prepare_steps(plan: PlacementPlan, observed: dict[int, ClusterObservation] | None = None) -> int:
    """Create the plan's missing execution steps and supersede older plans' pending ones.

    One step per (deployment, cluster) that the plan uses, and a step to 0 replicas for every
    pair that ran in the previous applied plan or is observed running but that this plan leaves
    out. Only clusters with an API endpoint get steps. The phase compares the desired count with
    what the cluster runs now: ``observed`` if given, else the latest good snapshot, else the
    previous plan. Returns the number of steps created; 0 for a plan that is not applied.
    """
    now = timezone.now()
    with transaction.atomic():
        # Lock the plan row, so a newer plan cannot supersede it while its steps are written.
        locked = PlacementPlan.objects.select_for_update().get(pk=plan.pk)
        if locked.status != PlanStatus.APPLIED:
            return 0
        superseded = ExecutionStep.objects.filter(status=StepStatus.PENDING, plan__version__lt=locked.version).update(
            status=StepStatus.SUPERSEDED, updated_at=now
        )

        clusters = set(executable_clusters().values_list("pk", flat=True))
        desired = assignment_targets(locked, clusters)
        previous = assignment_targets(previous_plan(locked), clusters)
        running = running_replicas(clusters, observed)
        existing = set(ExecutionStep.objects.filter(plan=locked).values_list("deployment_id", "cluster_id"))
        fallback_skus = dict(Deployment.objects.filter(pk__in={key[0] for key in running}).values_list("pk", "sku_id"))

        steps = []
        for key, (sku_id, replicas) in desired.items():
            current = running.get(key, previous.get(key, (0, 0))[1])
            phase = StepPhase.SCALE_UP if replicas >= current else StepPhase.SCALE_DOWN
            steps.append(step_row(locked, key, sku_id, phase, replicas))
        for key in (previous.keys() | running.keys()) - desired.keys():
            sku_id: int | None = previous[key][0] if key in previous else fallback_skus.get(key[0])
            if sku_id is not None:
                steps.append(step_row(locked, key, sku_id, StepPhase.SCALE_DOWN, 0))
        new_steps = [step for step in steps if (step.deployment_id, step.cluster_id) not in existing]
        ExecutionStep.objects.bulk_create(new_steps, ignore_conflicts=True)

        if new_steps or superseded:
            record_event(
                actor=ACTOR,
                action="execution.prepared",
                subject=locked,
                after={"steps_created": len(new_steps), "older_steps_superseded": superseded},
            )
    if new_steps or superseded:
        logger.info("plan v%s: %s steps created, %s older steps superseded", locked.version, len(new_steps), superseded)
    return len(new_steps)


def step_row(plan: PlacementPlan, key: StepKey, sku_id: int, phase: str, replicas: int) -> ExecutionStep:
    return ExecutionStep(
        plan=plan, deployment_id=key[0], cluster_id=key[1], sku_id=sku_id, phase=phase, desired_replicas=replicas
    )


def previous_plan(plan: PlacementPlan) -> PlacementPlan | None:
    return PlacementPlan.objects.filter(applied_at__isnull=False, version__lt=plan.version).order_by("-version").first()


def assignment_targets(plan: PlacementPlan | None, clusters: set[int]) -> dict[StepKey, tuple[int, int]]:
    """Return (SKU id, replicas) per (deployment, cluster) of a plan, on the given clusters.

    NOTE: a step carries one SKU, because one Kubernetes Deployment has one node selector. When a
    plan puts replicas of one deployment on two SKUs of one cluster, only the SKU with more
    replicas is executed, and a warning is logged.
    """
    if plan is None:
        return {}
    result: dict[StepKey, tuple[int, int]] = {}
    rows = Assignment.objects.filter(plan=plan, cluster_id__in=clusters).values_list(
        "deployment_id", "cluster_id", "sku_id", "replicas"
    )
    for deployment_id, cluster_id, sku_id, replicas in rows:
        key = (deployment_id, cluster_id)
        if key in result:
            logger.warning(
                "plan v%s puts deployment %s on two SKUs of cluster %s; executing the larger assignment",
                plan.version,
                deployment_id,
                cluster_id,
            )
            if result[key][1] >= replicas:
                continue
        result[key] = (sku_id, replicas)
    return result


def running_replicas(clusters: set[int], observed: dict[int, ClusterObservation] | None) -> dict[StepKey, int]:
    """Return replicas running per (deployment, cluster), from observations or the latest good snapshots."""
    running: dict[StepKey, int] = {}
    if observed is not None:
        for cluster_id, observation in observed.items():
            for deployment_id, current in observation.deployments.items():
                if current.replicas > 0:
                    running[(deployment_id, cluster_id)] = current.replicas
        return running
    for cluster_id in clusters:
        snapshot = TelemetrySnapshot.objects.filter(cluster_id=cluster_id, ok=True).first()
        for raw_id, counts in (snapshot.deployments if snapshot else {}).items():
            if raw_id.isdigit() and counts.get("replicas", 0) > 0:
                running[(int(raw_id), cluster_id)] = counts["replicas"]
    existing = set(Deployment.objects.filter(pk__in={key[0] for key in running}).values_list("pk", flat=True))
    return {key: replicas for key, replicas in running.items() if key[0] in existing}


# Execution.


@dataclass(frozen=True)
class ClusterWrite:
    """One API write to a Deployment as plain data, so that a worker thread makes it without the ORM."""

    name: str  # the Deployment's Kubernetes name
    desired: DesiredDeployment | None  # None deletes the Deployment

    def apply(self, adapter: ClusterAdapter) -> ObservedDeployment | None:
        """Call the cluster's API: delete when ``desired`` is None, otherwise create or patch."""
        if self.desired is None:
            adapter.delete_deployment(self.name)
            return None
        return adapter.apply_deployment(self.desired)


WriteOutcome = ObservedDeployment | None | ClusterError


def step_write(step: ExecutionStep, gpu_product: str) -> ClusterWrite:
    """Return the write that brings the step's cluster to the step's spec: delete for 0 replicas."""
    name = kubernetes_name(step.deployment)
    if step.desired_replicas == 0:
        return ClusterWrite(name, None)
    desired = DesiredDeployment(
        name=name,
        deployment_id=step.deployment_id,
        replicas=step.desired_replicas,
        gpus_per_replica=step.deployment.gpus_per_replica,
        gpu_product=gpu_product,
    )
    return ClusterWrite(name, desired)


def write_clusters(writes: list[tuple[Cluster, ClusterWrite]], adapters: Adapters) -> list[WriteOutcome]:
    """Make the writes, clusters concurrently and each cluster's writes in the given order.

    Returns each write's outcome, in the order of ``writes``: the Deployment that the cluster
    returned, None after a delete, or the ``ClusterError`` that the write, or connecting to its
    cluster, raised. A failed write does not stop the next writes to the same cluster.

    A write that would put replicas where an effective lock forbids is not made. Its outcome is a
    non-retryable ``ClusterError`` that names the lock (see ``rejected_writes``). This applies to
    every caller, including the repairs of reconciliation.
    """
    outcomes: list[WriteOutcome] = [None] * len(writes)
    rejected = rejected_writes(writes)
    by_cluster: dict[int, tuple[Cluster, list[int]]] = {}
    for index, (cluster, _) in enumerate(writes):
        if index in rejected:
            outcomes[index] = rejected[index]
            continue
        by_cluster.setdefault(cluster.pk, (cluster, []))[1].append(index)
    jobs = [
        (cluster, partial(apply_writes, [writes[index][1] for index in indexes]))
        for cluster, indexes in by_cluster.values()
    ]
    results = run_per_cluster(jobs, adapters)

    for cluster_id, (_, indexes) in by_cluster.items():
        result = results[cluster_id]
        for position, index in enumerate(indexes):
            outcomes[index] = result if isinstance(result, ClusterError) else result[position]
    return outcomes


def rejected_writes(writes: list[tuple[Cluster, ClusterWrite]]) -> dict[int, ClusterError]:
    """Return the writes that break an effective lock now, by index, each with the error that rejects it.

    Raises the deployment's ``lock_violation`` alert for each. A delete is never rejected.
    """
    placing = [
        (index, cluster, write.desired) for index, (cluster, write) in enumerate(writes) if write.desired is not None
    ]
    if not placing:
        return {}
    requested = [(desired.deployment_id, cluster, desired.replicas) for _, cluster, desired in placing]
    violations = rejected_placements(requested)
    if not violations:
        return {}
    deployments = Deployment.objects.in_bulk({deployment_id for deployment_id, _cluster_id in violations})
    rejected: dict[int, ClusterError] = {}
    for index, cluster, desired in placing:
        violation = violations.get((desired.deployment_id, cluster.pk))
        if violation is None:
            continue
        message = f"rejected by the lock guard, nothing was written: {violation}"
        rejected[index] = ClusterError(cluster.name, f"apply {desired.name}", message, retryable=False)
        logger.error(
            "write of %s (deployment %s) to cluster %s rejected: %s",
            desired.name,
            desired.deployment_id,
            cluster.name,
            violation,
        )
        deployment = deployments.get(desired.deployment_id)
        if deployment is not None:
            alert = f"{desired.replicas} replicas of {deployment} on cluster {cluster.name} rejected: {violation}"
            raise_alert(LOCK_ALERT, AlertSeverity.CRITICAL, deployment, alert)
    return rejected


def apply_writes(batch: list[ClusterWrite], adapter: ClusterAdapter) -> list[WriteOutcome]:
    """Make one cluster's writes in order; runs on a worker thread, so it must not touch the ORM."""
    outcomes: list[WriteOutcome] = []
    for write in batch:
        try:
            outcomes.append(write.apply(adapter))
        except ClusterError as error:
            outcomes.append(error)
    return outcomes


def recently_recovered(since: datetime) -> set[int]:
    """Return the ids of the clusters that came back from being lost after ``since``.

    A cluster came back when it became healthy again after being down (``healthy_since``), or
    when an outage covering it was cleared.

    TODO: a cluster whose operator state went from down back to active has no timestamp for it,
    so it is missing here until the model records one.
    """
    recovered = set(Cluster.objects.filter(healthy_since__gt=since).values_list("pk", flat=True))
    cleared = list(Outage.objects.filter(cleared_at__gt=since))
    if cleared:
        for cluster in Cluster.objects.select_related("region"):
            if any(covers(outage, cluster) for outage in cleared):
                recovered.add(cluster.pk)
    return recovered


def execute_plan(plan_id: int, *, now: datetime | None = None) -> ExecutionReport:
    """Prepare a plan's steps and run one execution pass; a plan that is no longer applied is left alone."""
    plan = PlacementPlan.objects.get(pk=plan_id)
    if plan.status != PlanStatus.APPLIED:
        logger.info("plan v%s is %s, not applied; nothing to execute", plan.version, plan.status)
        return ExecutionReport(plan.pk, plan.version, current=False)
    prepare_steps(plan)
    with open_adapters() as adapters:
        return advance_plan(plan, adapters, now=now)


def advance_plan(
    plan: PlacementPlan,
    adapters: Adapters,
    *,
    observations: dict[int, ClusterObservation] | None = None,
    lost: set[int] | None = None,
    now: datetime | None = None,
) -> ExecutionReport:
    """Run one pass over the plan's pending steps, scale-ups first; see the module docstring.

    ``lost`` defaults to ``fleet.availability.lost_cluster_ids()``; steps on those clusters are
    not attempted.
    """
    now = now or timezone.now()
    report = ExecutionReport(plan.pk, plan.version)
    pending = list(
        ExecutionStep.objects.filter(plan=plan, status=StepStatus.PENDING).select_related(
            "deployment__customer", "cluster__region__provider", "sku"
        )
    )
    report.pending = len(pending)
    if not pending:
        return report
    violations = plan_lock_violations(plan)
    for step in pending:
        if (step.deployment_id, step.cluster_id) in violations:
            reject_step(plan, step, violations[step.deployment_id, step.cluster_id], now)
            report.failed += 1
    pending = [step for step in pending if step.status == StepStatus.PENDING]
    lost = lost_cluster_ids(now) if lost is None else lost
    steps = [step for step in pending if step.cluster_id not in lost]
    report.waiting_for_cluster = len(pending) - len(steps)
    if report.waiting_for_cluster:
        logger.info("plan v%s: %s steps wait for lost clusters", plan.version, report.waiting_for_cluster)
    observations = dict(observations or {})
    targets = plan_targets(plan, lost)
    for deployment_id, cluster_id in violations:
        targets.get(deployment_id, {}).pop(cluster_id, None)
    # The make-before-break gate reads every cluster that runs a pending deployment's
    # replacements, including clusters whose own steps are already executed.
    # TODO: a plan that swaps two deployments between two full clusters waits here until the
    # steps time out (MCM_EXECUTION_TIMEOUT_S) and the re-plan avoids that capacity. This goes
    # once the scheduler keeps the room of replicas that move out for the next plan, without
    # stopping a higher tier from taking a lower tier's room.
    needed = {step.cluster_id for step in steps}
    needed |= {cluster_id for step in steps for cluster_id in targets.get(step.deployment_id, {})}
    needed -= observations.keys()
    if needed:
        clusters = {step.cluster_id: step.cluster for step in steps}
        missing = needed - clusters.keys()
        clusters.update({cluster.pk: cluster for cluster in Cluster.objects.filter(pk__in=missing)})
        observations.update(observe_clusters([clusters[pk] for pk in needed], adapters))
    unready = unready_deployments(targets, observations)
    timeout = timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S)

    steps.sort(key=lambda step: (step.phase != StepPhase.SCALE_UP, step.cluster_id, step.deployment_id))
    # Settle or claim every step first, then write to the clusters concurrently, then record.
    claimed: list[tuple[ExecutionStep, ClusterWrite]] = []
    ready_before = {step.pk: step.observed_ready for step in steps}
    preempting = preempting_tiers(steps, observations)
    for step in steps:
        replacements_ready = step.deployment_id not in unready or is_preempted(step, preempting)
        write = plan_step(step, observations[step.cluster_id], replacements_ready, report, now)
        if write is not None:
            claimed.append((step, write))
    # NOTE: an exception other than ClusterError from a write leaves every claimed attempt of this
    # pass unrecorded. The next pass observes the clusters again and settles those steps, each
    # with one attempt more on its counter.
    outcomes = write_clusters([(step.cluster, write) for step, write in claimed], adapters)
    for (step, write), outcome in zip(claimed, outcomes, strict=True):
        record_outcome(step, write, outcome, report, now)
    # Routes change only where a step's observed ready count changed in this pass.
    schedule_route_refresh(
        {step.deployment_id for step in steps if step.observed_ready != ready_before[step.pk]}, reason="execution"
    )

    recovered = recently_recovered(now - timeout)
    for step in steps:
        if step.status == StepStatus.PENDING and (now - step.created_at < timeout or step.cluster_id in recovered):
            report.within_timeout = True
    logger.info("execution pass of plan v%s: %s", plan.version, report.as_dict())
    return report


# The lock guard.


def plan_lock_violations(plan: PlacementPlan) -> dict[StepKey, str]:
    """Return the plan's steps that break an effective lock now, as (deployment id, cluster id) -> violation.

    Checks every step that places replicas, whatever its status, so that ``advance_plan`` can drop
    rejected replacements from the make-before-break targets. Resolves the ``lock_violation`` alert
    of each deployment of the plan whose steps break no lock.
    """
    rows = ExecutionStep.objects.filter(plan=plan, desired_replicas__gt=0).select_related("cluster__region__provider")
    violations = rejected_placements((step.deployment_id, step.cluster, step.desired_replicas) for step in rows)
    alerted = set(
        Alert.objects.filter(
            kind=LOCK_ALERT, subject_type=Deployment._meta.label_lower, resolved_at__isnull=True
        ).values_list("subject_id", flat=True)
    )
    if alerted:
        in_plan = set(ExecutionStep.objects.filter(plan=plan).values_list("deployment_id", flat=True).distinct())
        breaking = {deployment_id for deployment_id, _cluster_id in violations}
        for deployment_id in sorted(in_plan - breaking):
            if str(deployment_id) in alerted:
                resolve_alert(LOCK_ALERT, (Deployment._meta.label_lower, deployment_id))
    return violations


def reject_step(plan: PlacementPlan, step: ExecutionStep, violation: str, now: datetime) -> bool:
    """Fail a pending step that breaks a lock, without an API call, with its audit event and alert."""
    message = (
        f"rejected by the lock guard: {step.desired_replicas} replicas of {step.deployment} on cluster "
        f"{step.cluster.name}, but {violation}. Nothing was written to the cluster."
    )
    with transaction.atomic():
        failed = fail_step(step, message, now, action="execution_step.lock_rejected")
        if failed:
            raise_alert(
                LOCK_ALERT,
                AlertSeverity.CRITICAL,
                step.deployment,
                f"plan v{plan.version} step {step.pk}: {message}",
            )
    return failed


def tier_rank(step: ExecutionStep) -> int:
    return TIER_ORDER.index(step.deployment.customer.tier)


def preempting_tiers(steps: list[ExecutionStep], observations: dict[int, ClusterObservation]) -> dict[tuple, int]:
    """Return, per (cluster id, SKU id), the highest tier rank among scale-ups whose replicas are not all ready."""
    waiting: dict[tuple, int] = {}
    for step in steps:
        if step.desired_replicas == 0 or ready_on(observations.get(step.cluster_id), step.deployment_id) >= (
            step.desired_replicas
        ):
            continue
        key = (step.cluster_id, step.sku_id)
        waiting[key] = min(waiting.get(key, len(TIER_ORDER)), tier_rank(step))
    return waiting


def is_preempted(step: ExecutionStep, preempting: dict[tuple, int]) -> bool:
    """Return whether a higher tier waits for the room this step's removal frees.

    The plan gave that room to a more important deployment, so this removal does not wait for
    its own replacements: waiting could deadlock, as the replacements may need room that is
    itself freed only after the higher tier's replicas run.
    """
    return preempting.get((step.cluster_id, step.sku_id), len(TIER_ORDER)) < tier_rank(step)


def plan_step(
    step: ExecutionStep,
    observation: ClusterObservation,
    replacements_ready: bool,
    report: ExecutionReport,
    now: datetime,
) -> ClusterWrite | None:
    """Settle a step that needs no API write, or claim an attempt and return the write to make.

    Updates ``step`` and ``report`` for settled steps. Returns None when nothing is to be written
    now, including when another pass claimed the attempt first.
    """
    gpu_product = gpu_product_for_sku(step.sku.name)
    if gpu_product is None:
        fail_step(step, f"no nvidia.com/gpu.product label is known for SKU {step.sku.name}; add one to fleet.skus", now)
        report.failed += 1
        return None
    if observation.error is not None:
        if claim_attempt(step, now):
            record_error(step, observation.error, report, now)
        return None

    current = observation.deployments.get(step.deployment_id)
    if is_converged(step, current, gpu_product):
        report.executed += mark_executed(step, current, now)
        return None
    if is_applied(step, current, gpu_product):
        note_observed(step, current, now)
        report.waiting += 1
        return None
    if current is not None and current.replicas > step.desired_replicas and not replacements_ready:
        note_observed(step, current, now)
        report.blocked += 1
        return None

    if not claim_attempt(step, now):
        return None
    return step_write(step, gpu_product)


def record_outcome(
    step: ExecutionStep, write: ClusterWrite, outcome: WriteOutcome, report: ExecutionReport, now: datetime
) -> None:
    """Record the outcome of a claimed step's API write, updating ``step`` and ``report``."""
    if isinstance(outcome, ClusterError):
        record_error(step, outcome, report, now)
        return
    report.applied += 1
    # A delete leaves nothing whose GPU product could be compared.
    gpu_product = write.desired.gpu_product if write.desired is not None else ""
    if is_converged(step, outcome, gpu_product):
        report.executed += mark_executed(step, outcome, now)
    else:
        note_observed(step, outcome, now)
        report.waiting += 1


def is_applied(step: ExecutionStep, current: ObservedDeployment | None, gpu_product: str) -> bool:
    """Return whether the cluster already has the step's spec (its pods may still be coming up)."""
    if step.desired_replicas == 0:
        return current is None
    return current is not None and current.replicas == step.desired_replicas and current.gpu_product == gpu_product


def is_converged(step: ExecutionStep, current: ObservedDeployment | None, gpu_product: str) -> bool:
    """Return whether the cluster runs exactly the desired replicas, all of them ready."""
    if not is_applied(step, current, gpu_product):
        return False
    return current is None or current.ready_replicas == step.desired_replicas


# Recording outcomes. Each write is a compare-and-set on a pending step, so a step that another
# pass has finished, failed or superseded in the meantime is left as it is.


def claim_attempt(step: ExecutionStep, now: datetime) -> bool:
    """Count one attempt; False when another pass claimed this attempt or the step is not pending."""
    claimed = ExecutionStep.objects.filter(pk=step.pk, status=StepStatus.PENDING, attempts=step.attempts).update(
        attempts=F("attempts") + 1, updated_at=now
    )
    if claimed != 1:
        logger.info("step %s was claimed by another pass or is no longer pending", step.pk)
        return False
    step.attempts += 1
    return True


def note_observed(step: ExecutionStep, current: ObservedDeployment | None, now: datetime) -> None:
    replicas = current.replicas if current else 0
    ready = current.ready_replicas if current else 0
    if (step.observed_replicas, step.observed_ready) == (replicas, ready):
        return
    ExecutionStep.objects.filter(pk=step.pk, status=StepStatus.PENDING).update(
        observed_replicas=replicas, observed_ready=ready, updated_at=now
    )
    step.observed_replicas, step.observed_ready = replicas, ready


def mark_executed(step: ExecutionStep, current: ObservedDeployment | None, now: datetime) -> int:
    """Mark a pending step executed, audited if it took an API write; returns 1, or 0 if it was not pending."""
    replicas = current.replicas if current else 0
    ready = current.ready_replicas if current else 0
    with transaction.atomic():
        updated = ExecutionStep.objects.filter(pk=step.pk, status=StepStatus.PENDING).update(
            status=StepStatus.EXECUTED,
            observed_replicas=replicas,
            observed_ready=ready,
            last_error="",
            executed_at=now,
            updated_at=now,
        )
        if updated:
            step.status, step.observed_replicas, step.observed_ready = StepStatus.EXECUTED, replicas, ready
        # A step that found its cluster already converged made no change, so it is not audited.
        # Auditing it would add one event per deployment and cluster on every re-plan.
        if updated and step.attempts > 0:
            record_event(actor=ACTOR, action="execution_step.executed", subject=step, after=step_summary(step))
    if updated:
        logger.info("step %s executed: %s", step.pk, step_summary(step))
    return updated


def record_error(step: ExecutionStep, error: ClusterError, report: ExecutionReport, now: datetime) -> None:
    """Record a failed attempt; the step fails for good on a non-retryable error or the last attempt."""
    max_attempts = settings.MCM_EXECUTION_MAX_ATTEMPTS
    if not error.retryable or step.attempts >= max_attempts:
        reason = "not retryable" if not error.retryable else f"failed {step.attempts} of {max_attempts} attempts"
        fail_step(step, f"{error} ({reason})", now)
        report.failed += 1
        return
    ExecutionStep.objects.filter(pk=step.pk, status=StepStatus.PENDING).update(last_error=str(error), updated_at=now)
    step.last_error = str(error)
    report.retryable_error = report.retryable_error or error
    logger.warning("step %s attempt %s of %s failed, will retry: %s", step.pk, step.attempts, max_attempts, error)


def fail_step(step: ExecutionStep, message: str, now: datetime, *, action: str = "execution_step.failed") -> bool:
    """Mark a pending step failed with its audit event; False if it was no longer pending."""
    with transaction.atomic():
        updated = ExecutionStep.objects.filter(pk=step.pk, status=StepStatus.PENDING).update(
            status=StepStatus.FAILED, last_error=message, updated_at=now
        )
        if updated:
            step.status, step.last_error = StepStatus.FAILED, message
            record_event(actor=ACTOR, action=action, subject=step, reason=message, after=step_summary(step))
    if updated:
        logger.error("step %s failed: %s", step.pk, message)
    return bool(updated)


def fail_timed_out_steps(plan: PlacementPlan, now: datetime, lost: set[int] | None = None) -> list[ExecutionStep]:
    """Fail the plan's steps pending for longer than ``MCM_EXECUTION_TIMEOUT_S``; returns those failed now.

    Steps on ``lost`` clusters (default: ``lost_cluster_ids()``) do not time out, and on a cluster
    that came back from being lost the time-out counts from its recovery.
    """
    lost = lost_cluster_ids(now) if lost is None else lost
    cutoff = now - timedelta(seconds=settings.MCM_EXECUTION_TIMEOUT_S)
    stale = (
        ExecutionStep.objects.filter(plan=plan, status=StepStatus.PENDING, created_at__lt=cutoff)
        .exclude(cluster_id__in=lost)
        .select_related("deployment__customer", "cluster", "sku")
    )
    recovered = recently_recovered(cutoff)
    failed = []
    for step in stale:
        if step.cluster_id in recovered:
            continue
        message = (
            f"timed out: not converged within {settings.MCM_EXECUTION_TIMEOUT_S:g} s "
            f"(observed {step.observed_ready} of {step.desired_replicas} ready)"
        )
        if fail_step(step, message, now, action="execution_step.timed_out"):
            failed.append(step)
    return failed


def step_summary(step: ExecutionStep) -> dict:
    return {
        "plan_id": step.plan_id,
        "deployment_id": step.deployment_id,
        "cluster_id": step.cluster_id,
        "phase": step.phase,
        "desired_replicas": step.desired_replicas,
        "observed_replicas": step.observed_replicas,
        "observed_ready": step.observed_ready,
        "attempts": step.attempts,
    }
