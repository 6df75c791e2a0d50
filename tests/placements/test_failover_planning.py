"""Failover planning on PostgreSQL: lost clusters, locks, tiers, spread, failback, repeated losses, bursts."""

from collections import defaultdict
from datetime import timedelta

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from fleet.models import Alert, AlertSeverity, Cluster, ClusterCapacity, ClusterState
from placements.failover import record_loss
from placements.models import (
    Assignment,
    ClusterAvoidance,
    Customer,
    DeploymentCondition,
    DeploymentOutcome,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
    PlanStatus,
    SpreadMode,
    Tier,
)
from placements.planning import Exclusions, build_problem, run_plan
from placements.services import deployment_shortfall
from tests.placements.failover_factories import (
    FAST,
    bring_back,
    build_fleet,
    lock_to_jurisdictions,
    lock_to_regions,
    make_deployment,
    placed_on,
    plan,
    provider_outage,
    set_free,
    take_down,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(db):
    return Customer.objects.create(name="acme", tier=Tier.PREMIUM)


def deployment_input(problem, deployment):
    return next(item for item in problem.deployments if item.id == deployment.pk)


# A provider outage.


def test_provider_outage_moves_every_replica_within_locks(acme):
    fleet = build_fleet({"aws-use1-a": 8, "aws-use1-b": 8, "aws-euw1-a": 8, "gcp-use4-a": 8, "gcp-usw4-a": 8})
    chat = make_deployment(acme, "chat", replicas=4)
    lock_to_jurisdictions(chat, "us", reason="US customers' data stays in the US")
    search = make_deployment(acme, "search", replicas=2)
    before = plan()
    assert set(placed_on(before, chat)) <= {"aws-use1-a", "aws-use1-b"}

    provider_outage(fleet.providers["aws"])
    after = plan()

    chat_placed = placed_on(after, chat)
    assert sum(chat_placed.values()) == 4
    assert set(chat_placed) <= {"gcp-use4-a", "gcp-usw4-a"}
    assert sum(placed_on(after, search).values()) == 2
    assert not Assignment.objects.filter(plan=after, cluster__region__provider__name="aws").exists()
    assert DeploymentOutcome.objects.get(plan=after, deployment=chat).unmet_replicas == 0


def test_provider_outage_records_automatic_failover(acme):
    fleet = build_fleet({"aws-use1-a": 8, "aws-use1-b": 8, "gcp-use4-a": 8, "gcp-usw4-a": 8})
    chat = make_deployment(acme, "chat", replicas=2)
    plan()

    provider_outage(fleet.providers["aws"])
    after = plan()

    request = FailoverRequest.objects.get(deployment=chat)
    assert request.kind == FailoverKind.FAILOVER
    assert request.status == FailoverStatus.APPROVED
    assert request.decided_by_label == "automatic"
    assert request.replicas == 2
    assert set(request.clusters.values_list("name", flat=True)) == {"aws-use1-a", "aws-use1-b"}
    assert AuditEvent.objects.filter(action="failover.automatic", subject_id=str(request.pk)).exists()
    assert after.parameters["failover"]["deployments"][str(chat.pk)]["state"] == "failing_over"
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.NORMAL
    assert ClusterAvoidance.objects.filter(deployment=chat, losses=1).count() == 2


def test_second_plan_during_outage_opens_no_new_request(acme):
    fleet = build_fleet({"aws-use1-a": 8, "aws-use1-b": 8, "gcp-use4-a": 8, "gcp-usw4-a": 8})
    chat = make_deployment(acme, "chat", replicas=2)
    plan()
    provider_outage(fleet.providers["aws"])
    plan()

    plan()

    assert FailoverRequest.objects.filter(deployment=chat).count() == 1


# Too little capacity elsewhere.


def test_outage_short_of_capacity_places_higher_tier_first(db):
    fleet = build_fleet({"aws-use1-a": 8, "aws-use1-b": 8})
    bank = Customer.objects.create(name="bank", tier=Tier.CRITICAL)
    hobby = Customer.objects.create(name="hobby", tier=Tier.BEST_EFFORT)
    trading = make_deployment(bank, "trading", replicas=4, gpus=2, spread_mode=SpreadMode.SOFT)
    toy = make_deployment(hobby, "toy", replicas=4, gpus=2, spread_mode=SpreadMode.SOFT)
    first = plan()
    assert sum(placed_on(first, trading).values()) == 4
    assert sum(placed_on(first, toy).values()) == 4
    set_free(fleet, "gcp-use4-a", 8)

    provider_outage(fleet.providers["aws"])
    after = plan()

    assert placed_on(after, trading) == {"gcp-use4-a": 4}
    assert placed_on(after, toy) == {}
    assert DeploymentOutcome.objects.get(plan=after, deployment=toy).unmet_replicas == 4
    assert after.summary["unmet_by_tier"]["best_effort"] == 4
    assert after.summary["unmet_by_tier"]["critical"] == 0


def test_outage_short_of_capacity_marks_deployment_degraded(db):
    fleet = build_fleet({"aws-use1-a": 8, "aws-use1-b": 8})
    bank = Customer.objects.create(name="bank", tier=Tier.CRITICAL)
    hobby = Customer.objects.create(name="hobby", tier=Tier.BEST_EFFORT)
    trading = make_deployment(bank, "trading", replicas=4, gpus=2, spread_mode=SpreadMode.SOFT)
    toy = make_deployment(hobby, "toy", replicas=4, gpus=2, spread_mode=SpreadMode.SOFT)
    plan()
    set_free(fleet, "gcp-use4-a", 8)

    provider_outage(fleet.providers["aws"])
    plan()

    toy.refresh_from_db()
    trading.refresh_from_db()
    assert toy.condition == DeploymentCondition.DEGRADED
    assert "0 of 4 replicas placed" in toy.condition_reason
    assert "best_effort" in toy.condition_reason
    assert toy.condition_since is not None
    assert trading.condition == DeploymentCondition.NORMAL
    shortfall = deployment_shortfall(toy)
    assert shortfall["unmet_replicas"] == 4
    assert shortfall["placed_replicas"] == 0
    assert shortfall["condition"] == DeploymentCondition.DEGRADED
    event = AuditEvent.objects.get(action="deployment.condition_changed", subject_id=str(toy.pk))
    assert event.before["condition"] == DeploymentCondition.NORMAL
    assert event.after["condition"] == DeploymentCondition.DEGRADED


def test_unchanged_condition_is_audited_once(db):
    build_fleet({"aws-use1-a": 2})
    hobby = Customer.objects.create(name="hobby", tier=Tier.BEST_EFFORT)
    toy = make_deployment(hobby, "toy", replicas=4, spread_mode=SpreadMode.SOFT)

    plan()
    plan()

    assert AuditEvent.objects.filter(action="deployment.condition_changed", subject_id=str(toy.pk)).count() == 1


# A region-locked deployment whose region fails.


def region_locked_setup(acme):
    fleet = build_fleet({"aws-euw1-a": 8, "gcp-euw4-a": 8, "gcp-use4-a": 8})
    gdpr = make_deployment(acme, "gdpr", replicas=1, preference=["aws/eu-west-1"])
    lock_to_regions(gdpr, fleet.regions["eu-west-1"], reason="contract clause 7: Irish data centre only")
    first = plan()
    assert placed_on(first, gdpr) == {"aws-euw1-a": 1}
    return fleet, gdpr


def test_region_locked_deployment_is_blocked_and_kept(acme):
    fleet, gdpr = region_locked_setup(acme)

    take_down(fleet.clusters["aws-euw1-a"])
    blocked = plan()

    assert placed_on(blocked, gdpr) == {"aws-euw1-a": 1}
    assert not FailoverRequest.objects.filter(deployment=gdpr).exists()
    gdpr.refresh_from_db()
    assert gdpr.condition == DeploymentCondition.FAILOVER_BLOCKED
    assert "region in aws/eu-west-1" in gdpr.condition_reason
    assert "contract clause 7" in gdpr.condition_reason
    alert = Alert.objects.get(kind="failover.blocked", subject_id=str(gdpr.pk), resolved_at__isnull=True)
    assert alert.severity == AlertSeverity.CRITICAL
    assert AuditEvent.objects.filter(action="failover.blocked", subject_id=str(gdpr.pk)).count() == 1


def test_region_locked_deployment_restored_on_recovery(acme):
    fleet, gdpr = region_locked_setup(acme)
    take_down(fleet.clusters["aws-euw1-a"])
    plan()

    bring_back(fleet.clusters["aws-euw1-a"])
    recovered = plan()

    assert placed_on(recovered, gdpr) == {"aws-euw1-a": 1}
    gdpr.refresh_from_db()
    assert gdpr.condition == DeploymentCondition.NORMAL
    assert not Alert.objects.filter(kind="failover.blocked", resolved_at__isnull=True).exists()
    assert AuditEvent.objects.filter(action="failover.unblocked", subject_id=str(gdpr.pk)).exists()


def test_dry_run_writes_no_failover_state(acme):
    fleet, gdpr = region_locked_setup(acme)
    take_down(fleet.clusters["aws-euw1-a"])

    dry = run_plan(actor="test", trigger="manual", dry_run=True, options=FAST)

    assert dry.status == PlanStatus.DRY_RUN
    assert dry.parameters["failover"]["deployments"][str(gdpr.pk)]["state"] == "blocked"
    gdpr.refresh_from_db()
    assert gdpr.condition == DeploymentCondition.NORMAL
    assert not Alert.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="failover.").exists()


def test_dry_run_exclusion_counts_as_lost(acme):
    build_fleet({"aws-use1-a": 8, "aws-use1-b": 8, "gcp-use4-a": 8, "gcp-usw4-a": 8})
    chat = make_deployment(acme, "chat", replicas=2)
    plan()

    problem = build_problem(Exclusions(providers=frozenset({"aws"})))

    chat_input = deployment_input(problem, chat)
    assert chat_input.spread == "capped"
    excluded = [cluster for cluster in problem.clusters if cluster.state == "excluded"]
    assert {cluster.name for cluster in excluded} == {"aws-use1-a", "aws-use1-b", "aws-euw1-a"}
    assert not any(cluster.schedulable or cluster.holds_current for cluster in excluded)
    assert not FailoverRequest.objects.exists()


def test_planning_reads_cluster_availability(acme):
    fleet = build_fleet({"aws-use1-a": 8, "aws-use1-b": 8})
    take_down(fleet.clusters["aws-use1-a"])
    bring_back(fleet.clusters["aws-use1-b"])

    clusters = {cluster.name: cluster for cluster in build_problem().clusters}

    assert not clusters["aws-use1-a"].schedulable
    assert not clusters["aws-use1-a"].holds_current
    assert clusters["aws-use1-a"].state == "down"
    assert not clusters["aws-use1-b"].schedulable
    assert clusters["aws-use1-b"].holds_current
    assert clusters["aws-use1-b"].state == "recovering"
    assert clusters["gcp-use4-a"].schedulable


# Hard and soft spread.


def spread_setup(acme, mode):
    fleet = build_fleet({"aws-use1-a": 8, "gcp-use4-a": 8})
    api = make_deployment(acme, "api", replicas=2, spread_mode=mode, preference=["aws/us-east-1", "gcp/us-east4"])
    first = plan()
    assert placed_on(first, api) == {"aws-use1-a": 1, "gcp-use4-a": 1}
    return fleet, api


def test_hard_spread_stays_degraded(acme):
    fleet, api = spread_setup(acme, SpreadMode.HARD)

    take_down(fleet.clusters["gcp-use4-a"])
    after = plan()

    assert placed_on(after, api) == {"aws-use1-a": 1}
    api.refresh_from_db()
    assert api.condition == DeploymentCondition.DEGRADED
    assert "1 of 2 replicas placed" in api.condition_reason


def test_soft_spread_breaks_during_outage(acme):
    fleet, api = spread_setup(acme, SpreadMode.SOFT)

    take_down(fleet.clusters["gcp-use4-a"])
    after = plan()

    assert placed_on(after, api) == {"aws-use1-a": 2}
    api.refresh_from_db()
    assert api.condition == DeploymentCondition.NORMAL


def test_soft_spread_stays_off_until_cluster_is_back(acme):
    fleet, api = spread_setup(acme, SpreadMode.SOFT)
    take_down(fleet.clusters["gcp-use4-a"])
    plan()

    problem = build_problem()

    assert deployment_input(problem, api).spread == "off"


def test_soft_spread_restored_after_recovery(acme, settings):
    settings.MCM_FAILBACK_AFTER_S = 0
    fleet, api = spread_setup(acme, SpreadMode.SOFT)
    take_down(fleet.clusters["gcp-use4-a"])
    plan()

    bring_back(fleet.clusters["gcp-use4-a"])
    after = plan()

    assert placed_on(after, api) == {"aws-use1-a": 1, "gcp-use4-a": 1}


# Failback.


def failback_setup(acme, **policy):
    fleet = build_fleet({"aws-use1-a": 8, "gcp-use4-a": 8})
    chat = make_deployment(acme, "chat", replicas=1, preference=["aws/us-east-1", "gcp/us-east4"], **policy)
    first = plan()
    assert placed_on(first, chat) == {"aws-use1-a": 1}
    take_down(fleet.clusters["aws-use1-a"])
    moved = plan()
    assert placed_on(moved, chat) == {"gcp-use4-a": 1}
    return fleet, chat


def test_failback_waits_while_cluster_recovers(acme):
    fleet, chat = failback_setup(acme)

    bring_back(fleet.clusters["aws-use1-a"])
    after = plan()

    assert placed_on(after, chat) == {"gcp-use4-a": 1}
    assert FailoverRequest.objects.get(deployment=chat).failed_back_at is None


def test_automatic_failback_returns_to_preferred_region(acme, settings):
    settings.MCM_FAILBACK_AFTER_S = 0
    fleet, chat = failback_setup(acme)

    bring_back(fleet.clusters["aws-use1-a"])
    problem = build_problem()
    after = plan()

    assert deployment_input(problem, chat).churn_free
    assert placed_on(after, chat) == {"aws-use1-a": 1}
    failover = FailoverRequest.objects.get(deployment=chat)
    assert failover.failed_back_at is not None
    assert AuditEvent.objects.filter(action="failback.applied", subject_id=str(failover.pk)).count() == 1
    assert not deployment_input(build_problem(), chat).churn_free


def test_failback_by_approval_waits_for_staff(acme, settings):
    settings.MCM_FAILBACK_AFTER_S = 0
    fleet, chat = failback_setup(acme, failback_policy="approval")

    bring_back(fleet.clusters["aws-use1-a"])
    after = plan()

    assert placed_on(after, chat) == {"gcp-use4-a": 1}
    failback = FailoverRequest.objects.get(deployment=chat, kind=FailoverKind.FAILBACK)
    assert failback.status == FailoverStatus.PENDING
    assert list(failback.clusters.values_list("name", flat=True)) == ["aws-use1-a"]
    assert AuditEvent.objects.filter(action="failback.suggested", subject_id=str(failback.pk)).exists()
    assert Alert.objects.filter(kind="failback.awaiting_approval", resolved_at__isnull=True).exists()
    excluded = deployment_input(build_problem(), chat).excluded_clusters
    assert excluded == frozenset({fleet.clusters["aws-use1-a"].pk})


# Repeated losses.


def test_repeated_losses_deprioritise_cluster(acme, settings):
    settings.MCM_REPEATED_LOSS_COUNT = 3
    fleet = build_fleet({"aws-use1-a": 8})
    chat = make_deployment(acme, "chat")
    cluster = fleet.clusters["aws-use1-a"]
    start = timezone.now()

    for minute in range(2):
        avoidance = record_loss(chat.pk, cluster.pk, now=start + timedelta(minutes=minute))
        assert avoidance.avoid_until is None
    avoidance = record_loss(chat.pk, cluster.pk, now=start + timedelta(minutes=2))

    assert avoidance.losses == 3
    assert avoidance.avoid_until == start + timedelta(minutes=2, seconds=settings.MCM_REPEATED_LOSS_AVOID_S)
    assert AuditEvent.objects.filter(action="cluster.deprioritised").count() == 1
    assert deployment_input(build_problem(), chat).penalised_clusters == frozenset({cluster.pk})


def test_losses_outside_window_start_over(acme, settings):
    settings.MCM_REPEATED_LOSS_COUNT = 3
    settings.MCM_REPEATED_LOSS_WINDOW_S = 600
    fleet = build_fleet({"aws-use1-a": 8})
    chat = make_deployment(acme, "chat")
    cluster = fleet.clusters["aws-use1-a"]
    start = timezone.now()

    record_loss(chat.pk, cluster.pk, now=start)
    record_loss(chat.pk, cluster.pk, now=start + timedelta(seconds=300))
    avoidance = record_loss(chat.pk, cluster.pk, now=start + timedelta(seconds=900))

    assert avoidance.losses == 1
    assert avoidance.avoid_until is None
    assert deployment_input(build_problem(), chat).penalised_clusters == frozenset()


def test_each_failover_counts_one_loss(acme, settings):
    settings.MCM_FAILBACK_AFTER_S = 0
    settings.MCM_REPEATED_LOSS_COUNT = 3
    fleet, chat = failback_setup(acme)
    cluster = fleet.clusters["aws-use1-a"]

    for _ in range(2):
        bring_back(cluster)
        back = plan()
        assert placed_on(back, chat) == {"aws-use1-a": 1}
        take_down(cluster)
        plan()

    avoidance = ClusterAvoidance.objects.get(deployment=chat, cluster=cluster)
    assert avoidance.losses == 3
    assert avoidance.avoid_until is not None
    assert FailoverRequest.objects.filter(deployment=chat, kind=FailoverKind.FAILOVER).count() == 3


# A burst of deployments against small free capacity.


def test_burst_of_deployments_never_over_commits(db):
    build_fleet({"aws-use1-a": 6, "aws-use1-b": 3, "gcp-use4-a": 5, "gcp-usw4-a": 2, "aws-euw1-a": 4})
    customers = [Customer.objects.create(name=f"c{number}", tier=tier) for number, tier in enumerate(Tier.values)]
    for number in range(30):
        make_deployment(
            customers[number % len(customers)],
            f"burst-{number}",
            replicas=1 + number % 3,
            gpus=1 + number % 2,
            spread_mode=SpreadMode.SOFT,
        )

    burst = plan()

    used: dict[tuple[int, int], int] = defaultdict(int)
    for row in Assignment.objects.filter(plan=burst).select_related("deployment"):
        used[row.cluster_id, row.sku_id] += row.replicas * row.deployment.gpus_per_replica
    free = {(row.cluster_id, row.sku_id): row.free_gpus for row in ClusterCapacity.objects.all()}
    assert used
    for pair, gpus in used.items():
        assert gpus <= free[pair], f"cluster {pair[0]}: {gpus} GPUs planned, {free[pair]} free"
    assert sum(used.values()) <= sum(free.values())
    assert burst.summary["unmet_replicas"] > 0


# Cordoned and draining clusters.


def test_drain_beside_cordon_keeps_replicas_on_cordoned_cluster(acme):
    # Only aws/us-east-1 is allowed; its two clusters hold the deployment's replicas.
    fleet = build_fleet({"aws-use1-a": 16, "aws-use1-b": 16, "gcp-use4-a": 16})
    chat = make_deployment(acme, "chat", replicas=4)
    lock_to_regions(chat, fleet.regions["us-east-1"], reason="contract: Virginia only")
    before = placed_on(plan(), chat)
    assert set(before) == {"aws-use1-a", "aws-use1-b"}
    kept, drained = sorted(before, key=before.get, reverse=True)

    Cluster.objects.filter(name=kept).update(state=ClusterState.CORDONED)
    Cluster.objects.filter(name=drained).update(state=ClusterState.DRAINING)
    after = placed_on(plan(), chat)

    # Hard spread: the cordoned cluster keeps what it runs, at most R - 1 replicas, rather than
    # the deployment losing every replica because no second cluster is left.
    assert after == {kept: before[kept]}
    chat.refresh_from_db()
    assert chat.condition == DeploymentCondition.DEGRADED
