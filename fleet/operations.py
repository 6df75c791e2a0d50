"""Operator controls: cordon, uncordon and drain a cluster, declare and clear an outage.

Each control runs in one transaction that locks the changed row, writes an audit event with the
state before and after and the operator's reason, and enqueues a re-plan once the transaction
commits. Placement reads the result through ``fleet.availability``: a cordoned cluster keeps its
replicas and gets no new ones, a draining one loses its replicas make-before-break, and every
cluster an open outage covers counts as lost.

Bad input raises ``OperationError`` (a ``ValueError``) naming the field and the rejected value,
and changes nothing.
"""

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from compliance.services import record_event
from fleet.alerts import raise_alert, resolve_alert
from fleet.models import Cluster, ClusterState, Outage, OutageScope, OutageSource, Provider, Region
from placements.planning import Exclusions
from placements.routing import schedule_route_refresh

logger = logging.getLogger(__name__)

OUTAGE_ALERT_KIND = "outage.open"
REASON_MAX_LENGTH = 2000

# The model an outage of each scope covers; the Outage field named after the scope stores the target.
SCOPE_TARGETS: dict[str, type] = {
    OutageScope.CLUSTER: Cluster,
    OutageScope.REGION: Region,
    OutageScope.PROVIDER: Provider,
}

# Operator states each control accepts a cluster in. Every other state is an invalid transition.
CORDON_FROM = (ClusterState.ACTIVE, ClusterState.DRAINING)
UNCORDON_FROM = (ClusterState.CORDONED, ClusterState.DRAINING, ClusterState.DOWN)
DRAIN_FROM = (ClusterState.ACTIVE, ClusterState.CORDONED)


class OperationError(ValueError):
    """An operator control rejected its input; ``field`` names the input or model field at fault."""

    def __init__(self, message: str, *, field: str = "non_field_errors"):
        super().__init__(message)
        self.field = field

    @property
    def message(self) -> str:
        return str(self)


def actor_label(actor) -> str:
    if isinstance(actor, str) or actor is None:
        return actor or "system"
    return actor.get_username()


def clean_reason(reason) -> str:
    """Return ``reason`` stripped; raise when it is missing, blank or too long for an audit trail."""
    text = reason.strip() if isinstance(reason, str) else ""
    if not text:
        raise OperationError(
            f"reason {reason!r} is empty: say why, because it is stored in the audit trail.", field="reason"
        )
    if len(text) > REASON_MAX_LENGTH:
        raise OperationError(
            f"reason is {len(text)} characters long; the maximum is {REASON_MAX_LENGTH}.", field="reason"
        )
    return text


def enqueue_replan() -> None:
    """Enqueue a re-plan with the operator trigger; called on commit of a control."""
    from tasks.tasks import plan_placements  # imported here: the tasks module imports the placements app

    plan_placements.delay(trigger="operator")


# Cluster state.


def cordon(cluster: Cluster, *, actor, reason: str) -> Cluster:
    """Stop placing new replicas on ``cluster``; the replicas running there stay."""
    return change_state(
        cluster,
        actor=actor,
        reason=reason,
        new_state=ClusterState.CORDONED,
        allowed_from=CORDON_FROM,
        action="cluster.cordoned",
    )


def uncordon(cluster: Cluster, *, actor, reason: str) -> Cluster:
    """Make ``cluster`` active again, from cordoned, draining or down."""
    return change_state(
        cluster,
        actor=actor,
        reason=reason,
        new_state=ClusterState.ACTIVE,
        allowed_from=UNCORDON_FROM,
        action="cluster.uncordoned",
    )


def drain(cluster: Cluster, *, actor, reason: str) -> Cluster:
    """Move every replica off ``cluster``: the next plan places them elsewhere, make-before-break.

    The executor scales each deployment up on its new clusters and waits for the replicas to be
    ready before it scales the draining cluster down.
    """
    return change_state(
        cluster,
        actor=actor,
        reason=reason,
        new_state=ClusterState.DRAINING,
        allowed_from=DRAIN_FROM,
        action="cluster.draining",
    )


def change_state(cluster: Cluster, *, actor, reason: str, new_state: str, allowed_from, action: str) -> Cluster:
    reason = clean_reason(reason)
    with transaction.atomic():
        locked = Cluster.objects.select_for_update().get(pk=cluster.pk)
        if locked.state not in allowed_from:
            allowed = ", ".join(str(state) for state in allowed_from)
            raise OperationError(
                f"Cluster {locked.name} is {locked.state}, so it cannot become {new_state}: "
                f"that needs state {allowed}.",
                field="state",
            )
        before = cluster_snapshot(locked)
        locked.state = new_state
        locked.save(update_fields=["state"])
        record_event(
            actor=actor, action=action, subject=locked, reason=reason, before=before, after=cluster_snapshot(locked)
        )
        schedule_route_refresh(reason=f"{action} {locked.name}")
        transaction.on_commit(enqueue_replan)
    logger.info(
        "%s: cluster %s (id %s) %s -> %s by %s",
        action,
        locked.name,
        locked.pk,
        before["state"],
        new_state,
        actor_label(actor),
    )
    return locked


def cluster_snapshot(cluster: Cluster) -> dict:
    return {"name": cluster.name, "state": cluster.state, "health": cluster.health}


# Outages.


def check_outage(*, scope, target, reason) -> str:
    """Check a new declared outage and return its cleaned reason; raise ``OperationError`` on bad input.

    The admin's form calls this too, so both doors reject the same input with the same message.
    """
    if scope not in SCOPE_TARGETS:
        choices = ", ".join(SCOPE_TARGETS)
        raise OperationError(f"scope {scope!r} is not valid: use one of {choices}.", field="scope")
    model = SCOPE_TARGETS[scope]
    if target is None:
        raise OperationError(f"A {scope} outage needs its {scope}; {scope} is missing.", field=scope)
    if not isinstance(target, model) or target.pk is None:
        raise OperationError(
            f"{scope} {target!r} is not a stored {model.__name__}, as a {scope} outage needs.", field=scope
        )
    cleaned = clean_reason(reason)
    open_outage = Outage.objects.filter(
        scope=scope, source=OutageSource.DECLARED, cleared_at__isnull=True, **{scope: target}
    ).first()
    if open_outage is not None:
        raise OperationError(
            f"{scope} {target} already has an open declared outage (id {open_outage.pk}, since "
            f"{open_outage.started_at:%Y-%m-%d %H:%M:%S %Z}); clear it before declaring another.",
            field=scope,
        )
    return cleaned


def declare_outage(*, scope: str, target, actor, reason: str) -> Outage:
    """Declare ``target`` (a cluster, region or provider, matching ``scope``) out of service.

    Every cluster the outage covers counts as lost until it is cleared, so the re-plan enqueued on
    commit places their replicas elsewhere. Raises a critical ``outage.open`` alert.
    """
    with transaction.atomic():
        # Lock the target so that two concurrent declarations cannot both pass the duplicate check.
        if isinstance(target, SCOPE_TARGETS.get(scope, ())) and target.pk is not None:
            type(target).objects.select_for_update().filter(pk=target.pk).first()
        cleaned = check_outage(scope=scope, target=target, reason=reason)
        outage = Outage.objects.create(
            scope=scope,
            source=OutageSource.DECLARED,
            reason=cleaned,
            declared_by=actor_label(actor),
            **{scope: target},
        )
        record_event(
            actor=actor, action="outage.declared", subject=outage, reason=cleaned, after=outage_snapshot(outage)
        )
        raise_alert(
            OUTAGE_ALERT_KIND,
            "critical",
            outage,
            f"Declared {scope} outage of {target} by {outage.declared_by}: {cleaned}",
        )
        schedule_route_refresh(reason=f"{scope} outage of {target} declared")
        transaction.on_commit(enqueue_replan)
    logger.warning("outage declared: %s %s (outage id %s) by %s", scope, target, outage.pk, outage.declared_by)
    return outage


def clear_outage(outage: Outage, *, actor, reason: str) -> Outage:
    """Close an open outage, declared or detected, and resolve its alert.

    Its clusters then count as recovering for ``MCM_FAILBACK_AFTER_S`` before replicas return.
    """
    cleaned = clean_reason(reason)
    with transaction.atomic():
        locked = (
            Outage.objects.select_for_update(of=("self",))
            .select_related("cluster", "region__provider", "provider")
            .get(pk=outage.pk)
        )
        if locked.cleared_at is not None:
            raise OperationError(
                f"Outage {locked.pk} was already cleared at {locked.cleared_at:%Y-%m-%d %H:%M:%S %Z} "
                f"by {locked.cleared_by or 'unknown'}.",
                field="cleared_at",
            )
        before = outage_snapshot(locked)
        locked.cleared_at = timezone.now()
        locked.cleared_by = actor_label(actor)
        locked.save(update_fields=["cleared_at", "cleared_by"])
        record_event(
            actor=actor,
            action="outage.cleared",
            subject=locked,
            reason=cleaned,
            before=before,
            after=outage_snapshot(locked),
        )
        resolve_alert(OUTAGE_ALERT_KIND, locked)
        schedule_route_refresh(reason=f"{locked.scope} outage of {locked.target} cleared")
        transaction.on_commit(enqueue_replan)
    logger.info("outage cleared: %s %s (outage id %s) by %s", locked.scope, locked.target, locked.pk, locked.cleared_by)
    return locked


def outage_snapshot(outage: Outage) -> dict:
    return {
        "scope": outage.scope,
        "target": str(outage.target),
        "target_id": getattr(outage.target, "pk", None),
        "source": outage.source,
        "reason": outage.reason,
        "declared_by": outage.declared_by,
        "started_at": outage.started_at.isoformat() if outage.started_at else None,
        "cleared_at": outage.cleared_at.isoformat() if outage.cleared_at else None,
        "cleared_by": outage.cleared_by,
    }


# Re-plans: a preview that changes nothing, and an applied re-plan.

# Maximum number of changed deployments a preview lists row by row, most replicas moved first.
PREVIEW_DEPLOYMENT_LIMIT = 50


@dataclass(frozen=True)
class WhatIf(Exclusions):
    """Exclusions of a dry run, and clusters that count as lost, as a declared cluster outage makes them."""

    lost_clusters: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return super().__bool__() or bool(self.lost_clusters)

    def excludes(self, cluster: Cluster) -> bool:
        return cluster.name in self.lost_clusters or super().excludes(cluster)

    def as_dict(self) -> dict[str, list[str]]:
        return {**super().as_dict(), "lost_clusters": sorted(self.lost_clusters)}


def preview_replan(
    *,
    actor,
    exclude_providers=(),
    exclude_regions=(),
    drain_clusters=(),
    cordon_clusters=(),
    lost_clusters=(),
) -> dict:
    """Run a dry-run plan with the given what-ifs and return how it differs from the current plan.

    Names are provider names, region codes or 'provider/code' keys, and cluster names; the caller
    checks that they exist. A lost cluster counts as under an outage: its replicas fail over as each
    deployment's failover policy says. The dry-run plan is stored (status dry_run) and audited
    (``plan.dry_run``), but nothing is applied. The result contains replicas added and removed in
    total and per provider and region, the net change per provider and region, the deployments
    changed, and unmet replicas per tier before (current plan) and after (the dry run).
    """
    from placements.models import PlanTrigger
    from placements.planning import run_plan
    from placements.services import current_plan

    exclusions = build_exclusions(
        providers=exclude_providers,
        regions=exclude_regions,
        drain=drain_clusters,
        cordon=cordon_clusters,
        lost=lost_clusters,
    )
    before = current_plan()
    plan = run_plan(actor=actor, trigger=PlanTrigger.OPERATOR, dry_run=True, exclusions=exclusions)
    moves = replica_moves(before, plan)
    before_summary = before.summary if before is not None else {}
    return {
        "plan_id": plan.pk,
        "plan_version": plan.version,
        "current_plan_version": before.version if before is not None else None,
        "exclusions": exclusions.as_dict(),
        "replicas_added": sum(counts["added"] for counts in moves["by_region"].values()),
        "replicas_removed": sum(counts["removed"] for counts in moves["by_region"].values()),
        "deployments_changed": moves["deployments_changed"],
        "by_provider": net_changes(moves["by_provider"]),
        "by_region": net_changes(moves["by_region"]),
        "moved_by_provider": moves["by_provider"],
        "moved_by_region": moves["by_region"],
        "changed_deployments": moves["deployments"],
        "replicas_by_provider": {
            "before": before_summary.get("replicas_by_provider", {}),
            "after": plan.summary.get("replicas_by_provider", {}),
        },
        "unmet_replicas": {
            "before": before_summary.get("unmet_replicas"),
            "after": plan.summary.get("unmet_replicas"),
        },
        "unmet_by_tier": {
            "before": before_summary.get("unmet_by_tier", {}),
            "after": plan.summary.get("unmet_by_tier", {}),
        },
    }


def replica_moves(before, after) -> dict:
    """Count the replicas added and removed per provider, per region and per deployment between two plans.

    ``before`` None counts every replica of ``after`` as added. Returns ``by_provider`` and
    ``by_region`` ({name: {"added", "removed", "net"}}, only where a replica moved),
    ``deployments_changed`` (how many deployments changed) and ``deployments``: up to
    ``PREVIEW_DEPLOYMENT_LIMIT`` changed deployments, most replicas moved first.
    """
    from placements.planning import plan_placement, region_key

    old, new = plan_placement(before), plan_placement(after)
    cluster_ids = {key[1] for key in old} | {key[1] for key in new}
    locations = {
        pk: (provider, region_key(provider, code))
        for pk, provider, code in Cluster.objects.filter(pk__in=cluster_ids).values_list(
            "pk", "region__provider__name", "region__code"
        )
    }
    by_provider: dict[str, dict[str, int]] = {}
    by_region: dict[str, dict[str, int]] = {}
    by_deployment: dict[int, dict[str, int]] = {}
    for key in old.keys() | new.keys():
        delta = new.get(key, 0) - old.get(key, 0)
        if delta == 0:
            continue
        provider, region = locations[key[1]]
        for totals, name in ((by_provider, provider), (by_region, region), (by_deployment, key[0])):
            counts = totals.setdefault(name, {"added": 0, "removed": 0, "net": 0})
            counts["added" if delta > 0 else "removed"] += abs(delta)
            counts["net"] += delta
    return {
        "by_provider": dict(sorted(by_provider.items())),
        "by_region": dict(sorted(by_region.items())),
        "deployments_changed": len(by_deployment),
        "deployments": changed_deployment_rows(before, after, old, new, by_deployment),
    }


def net_changes(moved: dict[str, dict[str, int]]) -> dict[str, int]:
    """Return the net replica change of each name in ``moved``, leaving out names whose moves cancel out."""
    return {name: counts["net"] for name, counts in moved.items() if counts["net"]}


def changed_deployment_rows(before, after, old: dict, new: dict, moved: dict[int, dict[str, int]]) -> list[dict]:
    """Describe the changed deployments with the most replicas moved, up to ``PREVIEW_DEPLOYMENT_LIMIT``.

    ``old`` and ``new`` are the plans' placements, ``moved`` the replicas added and removed per
    deployment id. Unmet replicas come from each plan's outcomes: None where a plan has none.
    """
    from placements.models import Deployment, DeploymentOutcome

    listed = sorted(moved, key=lambda pk: (-moved[pk]["added"] - moved[pk]["removed"], pk))[:PREVIEW_DEPLOYMENT_LIMIT]
    replicas_before: dict[int, int] = dict.fromkeys(listed, 0)
    replicas_after: dict[int, int] = dict.fromkeys(listed, 0)
    for placement, totals in ((old, replicas_before), (new, replicas_after)):
        for (deployment_id, _cluster, _sku), replicas in placement.items():
            if deployment_id in totals:
                totals[deployment_id] += replicas
    plans = [plan.pk for plan in (before, after) if plan is not None]
    unmet = {
        (plan_id, deployment_id): replicas
        for plan_id, deployment_id, replicas in DeploymentOutcome.objects.filter(
            plan_id__in=plans, deployment_id__in=listed
        ).values_list("plan_id", "deployment_id", "unmet_replicas")
    }
    deployments = Deployment.objects.select_related("customer").in_bulk(listed)
    before_id = before.pk if before is not None else None
    rows = []
    for pk in listed:
        deployment = deployments.get(pk)
        rows.append(
            {
                "deployment_id": pk,
                "deployment": str(deployment) if deployment is not None else f"deployment {pk} (deleted)",
                "tier": deployment.customer.tier if deployment is not None else None,
                "replicas_before": replicas_before[pk],
                "replicas_after": replicas_after[pk],
                "replicas_added": moved[pk]["added"],
                "replicas_removed": moved[pk]["removed"],
                "unmet_before": unmet.get((before_id, pk)),
                "unmet_after": unmet.get((after.pk, pk)),
            }
        )
    return rows


def build_exclusions(*, providers=(), regions=(), drain=(), cordon=(), lost=()) -> WhatIf:
    return WhatIf(
        providers=frozenset(providers),
        regions=frozenset(regions),
        drain_clusters=frozenset(drain),
        cordon_clusters=frozenset(cordon),
        lost_clusters=frozenset(lost),
    )


def apply_replan(*, actor):
    """Plan every deployment and apply the plan now, with the operator trigger; enqueue its execution on commit."""
    from functools import partial

    from placements.models import PlanTrigger
    from placements.planning import run_plan
    from placements.tasks import enqueue_execution

    plan = run_plan(actor=actor, trigger=PlanTrigger.OPERATOR)
    transaction.on_commit(partial(enqueue_execution, plan.pk))
    logger.info("re-plan v%s applied by %s", plan.version, actor_label(actor))
    return plan
