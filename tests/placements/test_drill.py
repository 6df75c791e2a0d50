"""Outage drills against the conftest fleet, each cluster emulated, with fast heartbeats."""

from collections import defaultdict

import pytest
from django.core.management import CommandError, call_command

from fleet.kube import ClusterAdapter, Credentials
from fleet.models import Cluster, ClusterHealth
from placements import demo_loop
from placements.drill import OUTAGE, RECOVERY, DrillError, resolve_scope, run_drill
from placements.models import Assignment, Deployment, PlanTrigger, SpreadMode
from placements.observation import kubernetes_name
from placements.planning import run_plan

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

HEARTBEAT_S = 0.4


@pytest.fixture
def fast_health(settings):
    settings.MCM_HEARTBEAT_INTERVAL_S = HEARTBEAT_S
    settings.MCM_HEALTH_SUSPECT_AFTER_FAILURES = 1
    settings.MCM_HEALTH_DOWN_AFTER_FAILURES = 2
    settings.MCM_HEALTH_SUSPECT_AFTER_S = 5.0
    settings.MCM_HEALTH_DOWN_AFTER_S = 10.0
    settings.MCM_HEALTH_RECOVER_AFTER_SUCCESSES = 2
    settings.MCM_EXECUTION_POLL_S = 0.2
    settings.MCM_CLUSTER_API_TIMEOUT_S = 2.0
    return settings


@pytest.fixture
def converged(fast_health, acme_chat, globex_search):
    """The conftest fleet planned, each cluster emulated and running the plan.

    globex/search has a soft spread rule, so that with one cluster lost both deployments can
    place every replica on what is left. Under a hard rule a deployment stays degraded instead.
    """
    Deployment.objects.filter(pk=globex_search.pk).update(spread_mode=SpreadMode.SOFT)
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL)
    emulated = demo_loop.start_emulated_fleet(ready_delay_s=0.1)
    try:
        state = demo_loop.run_loop(plan, timeout_s=30, progress=lambda line: None)
        assert state.done, f"the fleet did not converge: {state}"
        yield plan, emulated
    finally:
        demo_loop.stop_emulated_fleet(emulated)


def busiest_cluster(plan) -> Cluster:
    replicas: dict[int, int] = defaultdict(int)
    for row in Assignment.objects.filter(plan=plan):
        replicas[row.cluster_id] += row.replicas
    return Cluster.objects.get(pk=max(replicas, key=replicas.get))


def ready_by_cluster(emulated, deployment) -> dict[str, int]:
    """Ready replicas of ``deployment`` on each reachable emulated cluster, read through its API."""
    result = {}
    for cluster in emulated:
        if cluster.is_unreachable:
            continue
        adapter = ClusterAdapter(cluster.name, cluster.url, Credentials(token=cluster.token), timeout_s=2.0)
        try:
            found = {item.name: item for item in adapter.list_managed_deployments()}
        finally:
            adapter.close()
        current = found.get(kubernetes_name(deployment))
        result[cluster.name] = current.ready_replicas if current else 0
    return result


def test_cluster_outage_timeline_in_order(converged, acme_chat, globex_search):
    plan, emulated = converged
    down = busiest_cluster(plan)
    affected = {row.deployment_id: row.replicas for row in Assignment.objects.filter(plan=plan, cluster=down)}

    timeline = run_drill(scope="cluster", target=down.name, emulated=emulated, heartbeat_s=HEARTBEAT_S, timeout_s=30)

    assert timeline.kind == OUTAGE
    assert not timeline.timed_out
    assert timeline.first_heartbeat_s is not None
    assert timeline.declared_s is not None
    assert timeline.plan is not None
    assert timeline.ready_s is not None
    assert 0 <= timeline.first_heartbeat_s <= timeline.declared_s
    assert timeline.declared_s <= timeline.plan.offset_s
    assert timeline.plan.offset_s <= timeline.ready_s
    assert timeline.plan.version > plan.version
    assert timeline.affected == sum(affected.values())
    assert timeline.moved == timeline.affected
    assert timeline.unmet == 0
    # The test runs inside a transaction whose on-commit refreshes never run, so the routes come
    # from the database here; tests/e2e/test_routing.py covers the table in Redis.
    assert timeline.routes_source in ("database", "cache and database")
    for tier in timeline.tiers.values():
        if tier.affected:
            assert tier.routes_after_s is not None, tier
            assert timeline.first_heartbeat_s <= tier.routes_after_s, tier
    assert "routes of" in timeline.format()
    assert Cluster.objects.get(pk=down.pk).health == ClusterHealth.DOWN

    # Checked again here, independently of the drill: each affected deployment runs its desired
    # replicas, all ready, on the clusters that stayed up.
    for deployment in (acme_chat, globex_search):
        if deployment.pk not in affected:
            continue
        ready = ready_by_cluster(emulated, deployment)
        assert down.name not in ready
        assert sum(ready.values()) == deployment.desired_replicas, ready


def test_recovery_timeline_in_order(converged, acme_chat, globex_search):
    plan, emulated = converged
    down = busiest_cluster(plan)
    outage = run_drill(scope="cluster", target=down.name, emulated=emulated, heartbeat_s=HEARTBEAT_S, timeout_s=30)
    assert outage.ready_s is not None

    recovery = run_drill(
        scope="cluster",
        target=down.name,
        emulated=emulated,
        recover=True,
        heartbeat_s=HEARTBEAT_S,
        timeout_s=30,
        failback_after_s=0,
        baseline_version=outage.baseline_version,
    )

    assert recovery.kind == RECOVERY
    assert not recovery.timed_out
    assert recovery.first_heartbeat_s is not None
    assert recovery.declared_s is not None
    assert recovery.plan is not None
    assert recovery.ready_s is not None
    assert 0 <= recovery.first_heartbeat_s <= recovery.declared_s
    assert recovery.declared_s <= recovery.plan.offset_s <= recovery.ready_s
    for tier in recovery.tiers.values():
        if tier.affected:
            assert tier.routes_after_s is not None, tier
    assert Cluster.objects.get(pk=down.pk).health == ClusterHealth.HEALTHY
    # What the failback plan put back on the recovered cluster is ready there.
    back = Assignment.objects.filter(plan__version=recovery.plan.version, cluster=down)
    for row in back:
        assert ready_by_cluster(emulated, row.deployment)[down.name] >= row.replicas


def test_unknown_names_rejected(fleet):
    with pytest.raises(DrillError, match="no provider named 'azure'; valid names include aws, gcp"):
        resolve_scope("provider", "azure")
    with pytest.raises(
        DrillError,
        match="no region 'us-east-2' with clusters; valid names include aws/eu-west-1, aws/us-east-1, gcp/us-west4$",
    ):
        resolve_scope("region", "us-east-2")
    with pytest.raises(DrillError, match="no cluster named 'aws-use1-z'"):
        resolve_scope("cluster", "aws-use1-z")


def test_region_scope_takes_its_clusters(fleet):
    names = [cluster.name for cluster in resolve_scope("region", "us-east-1")]

    assert names == ["aws-use1-a", "aws-use1-b"]
    assert [cluster.name for cluster in resolve_scope("region", "gcp/us-west4")] == ["gcp-usw4-a"]


def test_command_names_bad_option(fleet):
    with pytest.raises(CommandError, match="--provider nope is invalid: no provider named 'nope'"):
        call_command("outage_drill", "--provider", "nope")
