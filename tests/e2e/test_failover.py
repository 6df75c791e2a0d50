"""Failover end to end: clusters fail and recover, MCM's loop moves replicas and brings them back."""

import time

import pytest
from django.utils import timezone

from compliance.models import AuditEvent, PlacementLock
from fleet.health import evaluate_health
from fleet.models import Alert, Cluster, ClusterHealth, Outage, Region
from placements.execution import execute_plan
from placements.failover import FailoverDecisionError, approve, reject
from placements.models import (
    Assignment,
    ClusterAvoidance,
    Deployment,
    DeploymentCondition,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    PlanTrigger,
)
from placements.observation import kubernetes_name
from tests.conftest import token_client
from tests.e2e.conftest import DEFAULT_FLEET, LONDON, ClusterSpec, deploy

pytestmark = pytest.mark.django_db(transaction=True)

AWS = ("aws-use1-a", "aws-euw1-a")


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def refreshed(deployment: Deployment) -> Deployment:
    deployment.refresh_from_db()
    return deployment


def kubernetes_uid(site, deployment: Deployment) -> str:
    """The Kubernetes uid of the deployment's Deployment on a cluster: a new one means it was deleted and made again."""
    adapter = site.adapter()
    try:
        return adapter.apps.read_namespaced_deployment(kubernetes_name(deployment), "mcm").metadata.uid
    finally:
        adapter.close()


def last_heartbeats() -> dict:
    return dict(Cluster.objects.exclude(api_endpoint="").values_list("name", "last_heartbeat_at"))


def outside(counts: dict[str, int], names) -> dict[str, int]:
    return {name: replicas for name, replicas in counts.items() if name not in names}


def test_provider_outage_moves_replicas_within_locks(world, customers):
    acme, globex = customers["acme"], customers["globex"]
    chat = deploy(acme, "chat", replicas=4, region_preference=["aws/us-east-1"])
    eu_bot = deploy(acme, "eu-bot", replicas=2, region_preference=["aws/eu-west-1"], demand_origins=[LONDON])
    PlacementLock.objects.create(deployment=eu_bot, allowed_jurisdictions=["eu"], reason="EU data residency")
    search = deploy(globex, "search", replicas=3, region_preference=["aws/us-east-1"])
    deployments = [chat, eu_bot, search]
    world.start()
    on_aws = {
        deployment.name: total(world.placed(deployment)) - total(outside(world.placed(deployment), AWS))
        for deployment in deployments
    }
    assert all(on_aws.values()), f"every deployment should start with replicas on aws: {on_aws}"

    world.fail(*AWS)
    moved = world.run_until(
        lambda: all(total(world.ready(deployment)) == deployment.desired_replicas for deployment in deployments),
        timeout_s=40,
    )

    assert moved, world.describe()
    assert world.health()["aws-use1-a"] == ClusterHealth.DOWN
    assert world.health()["aws-euw1-a"] == ClusterHealth.DOWN
    assert Outage.objects.filter(scope="provider", provider__name="aws", cleared_at__isnull=True).exists()
    for deployment in deployments:
        assert set(world.placed(deployment)).isdisjoint(AWS), world.describe()
    eu_clusters = {"aws-euw1-a", "gcp-euw4-a", "azure-weu-a"}
    assert set(world.ready(eu_bot)) <= eu_clusters
    assert not Assignment.objects.filter(deployment=eu_bot).exclude(cluster__region__jurisdiction="eu").exists()
    for deployment in deployments:
        request = FailoverRequest.objects.get(deployment=deployment, kind="failover")
        assert request.status == FailoverStatus.APPROVED
        assert request.decided_by_label == "automatic"
    assert AuditEvent.objects.filter(action="failover.automatic").count() == 3


def provider_outage_fleet():
    return (
        ClusterSpec("aws-use1-a", "aws", "us-east-1", "us", 39.0, -77.5, {"H100": 16}, "2.00"),
        ClusterSpec("gcp-usc1-a", "gcp", "us-central1", "us", 41.3, -95.9, {"H100": 8}, "2.60"),
        ClusterSpec("azure-eus-a", "azure", "eastus", "us", 37.4, -79.0, {"H100": 4}, "2.90"),
    )


def test_short_capacity_places_higher_tier_first(world_factory, customers, ops):
    world = world_factory(provider_outage_fleet())
    preference = {"region_preference": ["aws/us-east-1"], "spread_mode": "soft"}
    premium = deploy(customers["acme"], "chat", replicas=4, **preference)
    standard = deploy(customers["globex"], "search", replicas=4, **preference)
    best_effort = deploy(customers["initech"], "batch", replicas=2, **preference)
    world.start()
    assert all(world.placed(deployment).get("aws-use1-a") for deployment in (premium, standard, best_effort))

    world.fail("aws-use1-a")
    moved = world.run_until(lambda: total(world.ready(premium)) == 4 and world.converged(), timeout_s=40)

    assert moved, world.describe()
    assert world.health()["aws-use1-a"] == ClusterHealth.DOWN
    outcomes = {deployment.name: world.outcome(deployment) for deployment in (premium, standard, best_effort)}
    # 12 GPUs are left: the premium deployment's 8, then the standard one's, before any best-effort one.
    assert outcomes["chat"].unmet_replicas == 0
    assert outcomes["search"].placed_replicas == 2
    assert outcomes["search"].unmet_replicas == 2
    assert outcomes["batch"].placed_replicas == 0
    assert outcomes["batch"].unmet_replicas == 2
    assert total(world.ready(standard)) == 2
    for deployment in (standard, best_effort):
        deployment.refresh_from_db()
        assert deployment.condition == DeploymentCondition.DEGRADED
        assert "short of capacity" in deployment.condition_reason
    api = token_client(ops)
    response = api.get(f"/api/v1/deployments/{standard.pk}/")
    assert response.status_code == 200
    assert response.json()["unmet_replicas"] == 2
    assert response.json()["condition"] == DeploymentCondition.DEGRADED
    requested = world.gpus_requested()
    assert requested["gcp-usc1-a"] <= 8
    assert requested["azure-eus-a"] <= 4


def region_lock_fleet():
    return (
        *DEFAULT_FLEET,
        ClusterSpec("aws-euw1-b", "aws", "eu-west-1", "eu", 53.3, -6.3, {"H100": 16}, "2.20"),
    )


def test_region_locked_deployment_blocked_then_restored(world_factory, customers):
    world = world_factory(region_lock_fleet())
    dublin = ("aws-euw1-a", "aws-euw1-b")
    locked = deploy(customers["acme"], "dublin-only", replicas=2, demand_origins=[LONDON])
    lock = PlacementLock.objects.create(deployment=locked, reason="data must stay in Dublin")
    lock.allowed_regions.set(Region.objects.filter(code="eu-west-1"))
    free = deploy(customers["globex"], "search", replicas=2)
    world.start()
    before = world.placed(locked)
    assert set(before) == set(dublin), world.describe()
    uids = {name: kubernetes_uid(world.sites[name], locked) for name in dublin}

    world.fail(*dublin)
    blocked = world.run_until(lambda: refreshed(locked).condition == DeploymentCondition.FAILOVER_BLOCKED, 20)

    assert blocked, world.describe()
    locked.refresh_from_db()
    assert "lock" in locked.condition_reason
    assert Outage.objects.filter(scope="region", region__code="eu-west-1", cleared_at__isnull=True).exists()
    assert Alert.objects.filter(kind="failover.blocked", subject_id=str(locked.pk), resolved_at=None).exists()
    assert AuditEvent.objects.filter(action="failover.blocked", subject_id=str(locked.pk)).exists()
    world.run_for(2)
    assert world.placed(locked) == before
    assert world.replicas(locked) == {}
    assert not Assignment.objects.filter(deployment=locked).exclude(cluster__name__in=dublin).exists()
    assert total(world.ready(free)) == 2

    world.restore(*dublin)
    restored = world.run_until(
        lambda: refreshed(locked).condition == DeploymentCondition.NORMAL and world.ready(locked) == before, 30
    )

    assert restored, world.describe()
    assert not Alert.objects.filter(kind="failover.blocked", subject_id=str(locked.pk), resolved_at=None).exists()
    assert AuditEvent.objects.filter(action="failover.unblocked", subject_id=str(locked.pk)).exists()
    assert {name: kubernetes_uid(world.sites[name], locked) for name in dublin} == uids
    assert not Assignment.objects.filter(deployment=locked).exclude(cluster__name__in=dublin).exists()


def spread_fleet():
    return (
        ClusterSpec("aws-use1-a", "aws", "us-east-1", "us", 39.0, -77.5, {"H100": 16}, "2.00"),
        ClusterSpec("aws-usw2-a", "aws", "us-west-2", "us", 45.6, -121.2, {"H100": 16}, "2.10"),
        ClusterSpec("gcp-usc1-a", "gcp", "us-central1", "us", 41.3, -95.9, {"H100": 16}, "2.60"),
    )


@pytest.mark.slow
def test_hard_spread_degrades_and_soft_spread_bends(world_factory, customers):
    world = world_factory(spread_fleet())
    hard = deploy(customers["acme"], "hard", replicas=2, min_providers=2, spread_mode="hard")
    soft = deploy(customers["acme"], "soft", replicas=2, min_providers=2, spread_mode="soft")
    world.start()
    for deployment in (hard, soft):
        assert world.placed(deployment).get("gcp-usc1-a") == 1, world.describe()

    world.fail("gcp-usc1-a")
    failed_over = world.run_until(lambda: total(world.ready(soft)) == 2 and world.converged(), 30)

    assert failed_over, world.describe()
    # Hard: no provider may hold more than 1 of the 2 replicas, so one stays unplaced.
    assert total(world.placed(hard)) == 1
    assert world.outcome(hard).unmet_replicas == 1
    assert total(world.ready(hard)) == 1
    assert refreshed(hard).condition == DeploymentCondition.DEGRADED
    # Soft: both replicas run on aws for the time of the outage.
    assert set(world.ready(soft)) <= {"aws-use1-a", "aws-usw2-a"}
    assert world.outcome(soft).unmet_replicas == 0

    world.restore("gcp-usc1-a")
    restored = world.run_until(
        lambda: (
            all(world.placed(deployment).get("gcp-usc1-a") == 1 for deployment in (hard, soft)) and world.converged()
        ),
        30,
    )

    assert restored, world.describe()
    for deployment in (hard, soft):
        assert total(world.ready(deployment)) == 2
        assert world.ready(deployment).get("gcp-usc1-a") == 1
        assert refreshed(deployment).condition == DeploymentCondition.NORMAL


def test_short_telemetry_gap_moves_nothing(world, customers):
    chat = deploy(customers["acme"], "chat", replicas=4, region_preference=["aws/us-east-1"])
    world.start()
    before = world.placed(chat)
    assert before.get("aws-use1-a")

    world.fail("aws-use1-a")
    world.tick()
    assert world.health()["aws-use1-a"] == ClusterHealth.SUSPECT
    newcomer = deploy(customers["globex"], "newcomer", replicas=2, region_preference=["aws/us-east-1"])
    world.replan()
    assert "aws-use1-a" not in world.placed(newcomer)
    assert world.placed(chat) == before
    world.restore("aws-use1-a")
    healthy = world.run_until(lambda: world.health()["aws-use1-a"] == ClusterHealth.HEALTHY, 15)

    assert healthy, world.describe()
    assert not AuditEvent.objects.filter(action="cluster.health_changed", after__health="down").exists()
    assert all(not tick.health.replan_needed for tick in world.ticks)
    assert not PlacementPlan.objects.filter(trigger=PlanTrigger.HEALTH).exists()
    assert world.placed(chat) == before
    assert world.ready(chat) == before
    assert not FailoverRequest.objects.exists()


@pytest.mark.slow
def test_stopped_loop_declares_no_cluster_down(settings, world, customers):
    chat = deploy(customers["acme"], "chat", replicas=4)
    world.start()
    before = world.placed(chat)
    stopped_s = settings.MCM_HEALTH_DOWN_AFTER_S + 2

    time.sleep(stopped_s)
    stale = {name: (timezone.now() - at).total_seconds() for name, at in last_heartbeats().items()}
    first = evaluate_health()
    world.run_for(3)

    assert min(stale.values()) > settings.MCM_HEALTH_DOWN_AFTER_S
    assert first.monitor_resumed
    assert first.changes == []
    assert all(tick.health.changes == [] for tick in world.ticks[-3:])
    assert set(world.health().values()) == {ClusterHealth.HEALTHY}
    assert not PlacementPlan.objects.filter(trigger=PlanTrigger.HEALTH).exists()
    assert world.placed(chat) == before
    assert world.ready(chat) == before


def lost_cluster_of(world, deployment) -> str:
    placed = world.placed(deployment)
    return max(placed, key=lambda name: (placed[name], name))


def test_failover_waits_for_approval_then_moves(world, customers, ops):
    chat = deploy(customers["acme"], "chat", replicas=3, failover_policy="approval", approval_timeout_s=600)
    world.start()
    lost = lost_cluster_of(world, chat)
    held_replicas = world.placed(chat)[lost]

    world.fail(lost)
    waiting = world.run_until(lambda: refreshed(chat).condition == DeploymentCondition.AWAITING_APPROVAL, 20)

    assert waiting, world.describe()
    request = FailoverRequest.objects.get(deployment=chat, kind="failover")
    assert request.status == FailoverStatus.PENDING
    assert Alert.objects.filter(kind="failover.awaiting_approval", subject_id=str(chat.pk), resolved_at=None).exists()
    world.run_for(2)
    assert world.placed(chat)[lost] == held_replicas
    assert total(world.ready(chat)) == 3 - held_replicas

    approve(request, actor=ops, reason="the region will be out for hours")
    moved = world.run_until(lambda: total(world.ready(chat)) == 3, 20)

    assert moved, world.describe()
    request.refresh_from_db()
    assert request.status == FailoverStatus.APPROVED
    assert request.decided_by == ops
    assert lost not in world.placed(chat)
    event = AuditEvent.objects.get(action="failover.approved", subject_id=str(request.pk))
    assert event.actor_label == "ops"
    assert event.reason == "the region will be out for hours"
    assert not Alert.objects.filter(kind="failover.awaiting_approval", resolved_at=None).exists()


def test_rejected_failover_keeps_replicas_in_place(world, customers, ops):
    chat = deploy(customers["acme"], "chat", replicas=3, failover_policy="approval", approval_timeout_s=600)
    world.start()
    lost = lost_cluster_of(world, chat)
    held_replicas = world.placed(chat)[lost]
    world.fail(lost)
    assert world.run_until(lambda: FailoverRequest.objects.filter(deployment=chat).exists(), 20), world.describe()
    request = FailoverRequest.objects.get(deployment=chat, kind="failover")

    reject(request, actor=ops, reason="the provider says it is back in minutes")
    world.run_for(3)

    request.refresh_from_db()
    assert request.status == FailoverStatus.REJECTED
    assert world.placed(chat)[lost] == held_replicas
    assert total(world.ready(chat)) == 3 - held_replicas
    assert refreshed(chat).condition == DeploymentCondition.DEGRADED
    event = AuditEvent.objects.get(action="failover.rejected", subject_id=str(request.pk))
    assert event.actor_label == "ops"
    assert event.reason == "the provider says it is back in minutes"
    with pytest.raises(FailoverDecisionError):
        approve(request, actor=ops, reason="changed my mind")


def test_undecided_failover_proceeds_after_timeout(world, customers):
    chat = deploy(customers["acme"], "chat", replicas=3, failover_policy="approval", approval_timeout_s=3)
    world.start()
    lost = lost_cluster_of(world, chat)

    world.fail(lost)
    moved = world.run_until(lambda: total(world.ready(chat)) == 3, 30)

    assert moved, world.describe()
    request = FailoverRequest.objects.get(deployment=chat, kind="failover")
    assert request.status == FailoverStatus.TIMED_OUT
    assert request.decided_at >= request.deadline
    assert lost not in world.placed(chat)
    assert AuditEvent.objects.filter(action="failover.timed_out", subject_id=str(request.pk)).exists()
    assert any(tick.expired for tick in world.ticks) or PlacementPlan.objects.filter(trigger="health").exists()


@pytest.mark.slow
def test_failback_is_make_before_break(world, customers):
    chat = deploy(customers["acme"], "chat", replicas=4, region_preference=["aws/us-east-1"])
    # Only health reports trigger plans here: the end of the failback period must trigger one.
    world.plan_every_s = None
    world.start()
    preferred = world.placed(chat)
    assert preferred.get("aws-use1-a", 0) >= 2, world.describe()

    world.fail("aws-use1-a")
    failed_over = world.run_until(lambda: total(world.ready(chat)) == 4 and world.converged(), 30)
    assert failed_over, world.describe()
    fallback = world.placed(chat)
    assert "aws-use1-a" not in fallback
    # Pods on the recovered cluster come up slowly, so that removing fallback replicas before
    # they are ready would show as a drop in ready replicas after a tick.
    world.sites["aws-use1-a"].emulated.ready_delay_s = 1.5
    dips = []
    world.watchers.append(lambda w: total(w.ready(chat)) < 4 and dips.append(w.describe()))
    world.restore("aws-use1-a")
    back = world.run_until(lambda: world.placed(chat) == preferred and world.converged(), 40)

    assert back, world.describe()
    assert dips == []
    request = FailoverRequest.objects.get(deployment=chat, kind="failover")
    assert request.failed_back_at is not None
    assert AuditEvent.objects.filter(action="failback.applied", subject_id=str(request.pk)).exists()
    assert world.ready(chat) == preferred


@pytest.mark.slow
def test_repeated_losses_deprioritise_cluster(settings, world, customers):
    settings.MCM_REPEATED_LOSS_COUNT = 2
    chat = deploy(customers["acme"], "chat", replicas=4, region_preference=["aws/us-east-1"])
    world.start()
    assert world.placed(chat).get("aws-use1-a"), world.describe()

    for episode in range(2):
        world.fail("aws-use1-a")
        moved = world.run_until(lambda: "aws-use1-a" not in world.placed(chat) and world.converged(), 30)
        assert moved, f"episode {episode}: {world.describe()}"
        world.restore("aws-use1-a")
        if episode == 0:
            back = world.run_until(lambda: world.placed(chat).get("aws-use1-a") and world.converged(), 30)
            assert back, f"episode {episode}: {world.describe()}"

    world.run_until(lambda: world.health()["aws-use1-a"] == ClusterHealth.HEALTHY, 15)
    world.run_for(settings.MCM_FAILBACK_AFTER_S + 3)

    avoidance = ClusterAvoidance.objects.get(deployment=chat, cluster__name="aws-use1-a")
    assert avoidance.losses == 2
    assert avoidance.avoid_until > timezone.now()
    assert AuditEvent.objects.filter(action="cluster.deprioritised").exists()
    assert "aws-use1-a" not in world.placed(chat), world.describe()
    assert total(world.ready(chat)) == 4
    newcomer = deploy(customers["globex"], "newcomer", replicas=2, region_preference=["aws/us-east-1"])
    world.replan()
    assert world.placed(newcomer).get("aws-use1-a"), world.describe()


def burst_fleet():
    return (
        ClusterSpec("aws-use1-a", "aws", "us-east-1", "us", 39.0, -77.5, {"H100": 8}, "2.00"),
        ClusterSpec("gcp-usc1-a", "gcp", "us-central1", "us", 41.3, -95.9, {"H100": 8}, "2.60"),
    )


def test_burst_of_deployments_never_overcommits(world_factory, customers):
    world = world_factory(burst_fleet())
    gpus = {"aws-use1-a": 8, "gcp-usc1-a": 8}
    overcommitted = []

    def check(w):
        for name, requested in w.gpus_requested().items():
            if requested > gpus[name]:
                overcommitted.append((name, requested, w.describe()))

    world.watchers.append(check)
    world.tick()
    deployments = []
    for index in range(10):
        customer = customers["acme"] if index % 2 else customers["globex"]
        deployments.append(deploy(customer, f"burst-{index}", replicas=1, gpus_per_replica=2))
        plan = world.replan()
        execute_plan(plan.pk)
        check(world)
    settled = world.run_until(lambda: world.converged(), 30)

    assert settled, world.describe()
    assert overcommitted == []
    placed = sum(total(world.placed(deployment)) for deployment in deployments)
    assert placed == 8
    assert sum(world.outcome(deployment).unmet_replicas for deployment in deployments) == 2
    assert sum(total(world.ready(deployment)) for deployment in deployments) == 8
