"""Routes of a deployment: which clusters are listed, their order and weights, and the table in Redis."""

import json
import math
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from compliance.models import PlacementLock
from fleet.models import Cluster, ClusterHealth, Outage, OutageScope, OutageSource, TelemetrySnapshot
from placements import execution, routing
from placements.execution import execute_plan
from placements.models import AutoscalingPolicy, ExecutionStep, StepPhase, TrafficSample
from placements.routing import ClientLocation, ready_changes, refresh_routes, resolve_location, routes_for
from tests.placements.execution_factories import H100_LABEL, apply_plan, poll, start_site

pytestmark = pytest.mark.django_db

NEW_YORK = ClientLocation(40.7, -74.0, "New York", "coordinates")
LONDON = ClientLocation(51.5, -0.1, "London", "coordinates")


@pytest.fixture(autouse=True)
def route_table():
    """An empty route table of this test database, and a fresh Redis back-off state."""
    client = redis.Redis.from_url(settings.MCM_ROUTES_REDIS_URL)
    keys = list(client.scan_iter(match=f"{routing.key_prefix()}*"))
    if keys:
        client.delete(*keys)
    routing.TABLE.skip_until = 0.0
    routing.TABLE.stale = False
    yield client
    routing.TABLE.skip_until = 0.0
    routing.TABLE.stale = False


def report_ready(cluster: Cluster, ready: dict) -> TelemetrySnapshot:
    """Store a successful snapshot of ``cluster`` reporting ``ready`` replicas per deployment."""
    return TelemetrySnapshot.objects.create(
        cluster=cluster,
        source="pull",
        ok=True,
        deployments={str(d.pk): {"name": d.name, "replicas": n, "ready": n} for d, n in ready.items()},
    )


@pytest.fixture
def chat_running(fleet, acme_chat):
    """acme/chat planned on aws-use1-a (2 replicas) and aws-euw1-a (1), all ready; 8 req/s per replica."""
    AutoscalingPolicy.objects.create(deployment=acme_chat, target_concurrency=4, seconds_per_request=0.5)
    apply_plan([(acme_chat, fleet.clusters["aws-use1-a"], 2), (acme_chat, fleet.clusters["aws-euw1-a"], 1)])
    report_ready(fleet.clusters["aws-use1-a"], {acme_chat: 2})
    report_ready(fleet.clusters["aws-euw1-a"], {acme_chat: 1})
    return acme_chat


def names(answer: dict) -> list[str]:
    return [route["cluster"] for route in answer["routes"]]


def weights(answer: dict) -> dict[str, float]:
    return {route["cluster"]: route["weight"] for route in answer["routes"]}


def serve(deployment, cluster: Cluster, rps: float) -> None:
    TrafficSample.objects.create(
        deployment=deployment,
        cluster=cluster,
        origin="",
        requests_per_second=rps,
        observed_at=timezone.now() - timedelta(seconds=5),
        source="push",
    )


# Which clusters are listed.


def test_routes_nearest_first(chat_running):
    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-use1-a", "aws-euw1-a"]
    assert answer["routes"][0]["ready_replicas"] == 2
    assert answer["routes"][0]["distance_km"] < answer["routes"][1]["distance_km"]
    assert answer["routes"][0]["rtt_ms"] < answer["routes"][1]["rtt_ms"]
    assert answer["client"] == {"latitude": 40.7, "longitude": -74.0, "label": "New York", "source": "coordinates"}


def test_routes_nearest_first_from_london(chat_running):
    assert names(routes_for(chat_running.pk, LONDON)) == ["aws-euw1-a", "aws-use1-a"]


def test_routes_weights_sum_to_one(chat_running):
    answer = routes_for(chat_running.pk, NEW_YORK)

    assert math.isclose(sum(weights(answer).values()), 1.0, abs_tol=1e-3)
    assert weights(answer)["aws-use1-a"] > 0.9


def test_routes_skip_cluster_without_ready_replica(fleet, chat_running):
    report_ready(fleet.clusters["aws-euw1-a"], {chat_running: 0})

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-use1-a"]
    assert {"cluster": "aws-euw1-a", "reason": "no ready replica (active)"} in answer["excluded"]


def test_routes_skip_down_cluster(fleet, chat_running):
    Cluster.objects.filter(name="aws-use1-a").update(health=ClusterHealth.DOWN)

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-euw1-a"]
    assert {"cluster": "aws-use1-a", "reason": "lost (down)"} in answer["excluded"]


def test_routes_skip_cluster_under_outage(fleet, chat_running):
    Outage.objects.create(
        scope=OutageScope.REGION,
        region=fleet.eu_west,
        source=OutageSource.DECLARED,
        reason="region maintenance",
        declared_by="test",
    )

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-use1-a"]
    assert {"cluster": "aws-euw1-a", "reason": "lost (region outage)"} in answer["excluded"]


def test_routes_keep_cordoned_cluster_with_ready_replicas(fleet, chat_running):
    Cluster.objects.filter(name="aws-use1-a").update(state="cordoned")

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-use1-a", "aws-euw1-a"]


def test_routes_skip_cordoned_empty_cluster(fleet, acme_chat):
    cordoned = fleet.clusters["aws-use1-b"]
    apply_plan([(acme_chat, cordoned, 1), (acme_chat, fleet.clusters["aws-euw1-a"], 1)])
    report_ready(fleet.clusters["aws-euw1-a"], {acme_chat: 1})

    answer = routes_for(acme_chat.pk, NEW_YORK)

    assert names(answer) == ["aws-euw1-a"]
    assert {"cluster": "aws-use1-b", "reason": "no ready replica (cordoned)"} in answer["excluded"]


def test_routes_keep_replicas_a_new_plan_moves(fleet, chat_running):
    apply_plan([(chat_running, fleet.clusters["aws-euw1-a"], 3)])

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-use1-a", "aws-euw1-a"]


def test_routes_respect_deployment_lock(fleet, chat_running):
    PlacementLock.objects.create(deployment=chat_running, allowed_jurisdictions=["eu"], reason="GDPR")

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-euw1-a"]
    (excluded,) = [row for row in answer["excluded"] if row["cluster"] == "aws-use1-a"]
    assert excluded["reason"].startswith("outside the locks: jurisdiction us is not allowed")


def test_routes_respect_customer_lock(fleet, acme, chat_running):
    lock = PlacementLock.objects.create(customer=acme, reason="contract names AWS Ireland only")
    lock.allowed_regions.set([fleet.eu_west])

    assert names(routes_for(chat_running.pk, NEW_YORK)) == ["aws-euw1-a"]


def test_suspect_cluster_hidden_when_healthy_serves(fleet, chat_running):
    Cluster.objects.filter(name="aws-use1-a").update(health=ClusterHealth.SUSPECT)

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-euw1-a"]
    assert {"cluster": "aws-use1-a", "reason": "suspect; a healthy cluster serves"} in answer["excluded"]


def test_suspect_clusters_listed_when_alone(fleet, chat_running):
    Cluster.objects.filter(name__in=["aws-use1-a", "aws-euw1-a"]).update(health=ClusterHealth.SUSPECT)

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-use1-a", "aws-euw1-a"]
    assert {route["health"] for route in answer["routes"]} == {"suspect"}


def test_routes_empty_without_plan(acme_chat):
    answer = routes_for(acme_chat.pk, NEW_YORK)

    assert answer["routes"] == []
    assert answer["excluded"] == []


def test_execution_step_newer_than_snapshot_wins(fleet, chat_running):
    plan = apply_plan(
        [(chat_running, fleet.clusters["aws-use1-a"], 2), (chat_running, fleet.clusters["aws-euw1-a"], 1)]
    )
    ExecutionStep.objects.create(
        plan=plan,
        deployment=chat_running,
        cluster=fleet.clusters["aws-euw1-a"],
        sku=fleet.h100,
        phase=StepPhase.SCALE_UP,
        desired_replicas=1,
        observed_replicas=1,
        observed_ready=0,
        updated_at=timezone.now() + timedelta(seconds=1),
    )
    ExecutionStep.objects.filter(plan=plan).update(updated_at=timezone.now() + timedelta(seconds=1))

    assert names(routes_for(chat_running.pk, NEW_YORK)) == ["aws-use1-a"]


# Capacity and weights.


def test_spare_capacity_from_policy_and_traffic(fleet, chat_running):
    serve(chat_running, fleet.clusters["aws-use1-a"], 10.0)

    answer = routes_for(chat_running.pk, NEW_YORK)

    spare = {route["cluster"]: route["spare_requests_per_second"] for route in answer["routes"]}
    # 8 requests per second per replica: 2 x 8 - 10 and 1 x 8 - 0.
    assert spare == {"aws-use1-a": 6.0, "aws-euw1-a": 8.0}


def test_spare_capacity_default_without_policy(fleet, acme_chat):
    apply_plan([(acme_chat, fleet.clusters["aws-use1-a"], 2)])
    report_ready(fleet.clusters["aws-use1-a"], {acme_chat: 2})
    default = AutoscalingPolicy()

    (route,) = routes_for(acme_chat.pk, NEW_YORK)["routes"]

    assert route["spare_requests_per_second"] == 2 * default.target_concurrency / default.seconds_per_request


def test_full_cluster_listed_last_with_zero_weight(fleet, chat_running):
    serve(chat_running, fleet.clusters["aws-use1-a"], 20.0)

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert names(answer) == ["aws-euw1-a", "aws-use1-a"]
    assert weights(answer) == {"aws-euw1-a": 1.0, "aws-use1-a": 0.0}


def test_nearer_cluster_with_less_room_still_gets_more(fleet, chat_running):
    serve(chat_running, fleet.clusters["aws-use1-a"], 14.0)

    answer = routes_for(chat_running.pk, NEW_YORK)

    # 2 spare near New York against 8 spare about 80 ms further: proximity outweighs the room.
    assert weights(answer)["aws-use1-a"] > weights(answer)["aws-euw1-a"] > 0


def test_every_cluster_full_weights_follow_capacity(fleet, chat_running):
    serve(chat_running, fleet.clusters["aws-use1-a"], 30.0)
    serve(chat_running, fleet.clusters["aws-euw1-a"], 30.0)

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert math.isclose(sum(weights(answer).values()), 1.0, abs_tol=1e-3)
    assert all(weight > 0 for weight in weights(answer).values())


# The table in Redis.


def test_refresh_writes_table_and_answers_from_cache(chat_running, route_table):
    written = refresh_routes([chat_running.pk], reason="test")

    stored = json.loads(route_table.get(routing.route_key(chat_running.pk)))
    answer = routes_for(chat_running.pk, NEW_YORK)
    assert written == 1
    assert {cluster["name"] for cluster in stored["clusters"]} == {"aws-euw1-a", "aws-use1-a"}
    assert 0 < route_table.ttl(routing.route_key(chat_running.pk)) <= routing.ROUTES_TTL_S
    assert answer["source"] == "cache"
    assert names(answer) == ["aws-use1-a", "aws-euw1-a"]


def test_table_key_names_database(chat_running):
    assert routing.route_key(chat_running.pk) == (
        f"mcm:routes:{settings.DATABASES['default']['NAME']}:{chat_running.pk}"
    )


def test_missing_entry_computed_and_stored(chat_running, route_table):
    first = routes_for(chat_running.pk, NEW_YORK)
    second = routes_for(chat_running.pk, NEW_YORK)

    assert first["source"] == "database"
    assert second["source"] == "cache"
    assert names(second) == names(first)


def test_cache_changes_after_refresh(fleet, chat_running):
    refresh_routes(reason="test")
    Cluster.objects.filter(name="aws-use1-a").update(health=ClusterHealth.DOWN)
    stale = routes_for(chat_running.pk, NEW_YORK)

    refresh_routes(reason="test")

    assert names(stale) == ["aws-use1-a", "aws-euw1-a"]
    assert names(routes_for(chat_running.pk, NEW_YORK)) == ["aws-euw1-a"]


def test_refresh_scheduled_on_commit(chat_running, route_table, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        routing.schedule_route_refresh([chat_running.pk], reason="test")
        assert route_table.get(routing.route_key(chat_running.pk)) is None

    assert len(callbacks) == 1
    assert route_table.get(routing.route_key(chat_running.pk)) is not None


def test_redis_down_answers_from_database(settings, fleet, chat_running):
    settings.MCM_ROUTES_REDIS_URL = "redis://127.0.0.1:1/0"
    Cluster.objects.filter(name="aws-euw1-a").update(health=ClusterHealth.DOWN)

    written = refresh_routes(reason="test")
    answer = routes_for(chat_running.pk, NEW_YORK)

    assert written == 0
    assert answer["source"] == "database"
    assert names(answer) == ["aws-use1-a"]
    assert routing.TABLE.stale


def test_redis_back_empties_stale_table(settings, fleet, chat_running, route_table):
    refresh_routes(reason="test")
    settings.MCM_ROUTES_REDIS_URL = "redis://127.0.0.1:1/0"
    Cluster.objects.filter(name="aws-euw1-a").update(health=ClusterHealth.DOWN)
    refresh_routes(reason="lost while Redis is down")
    settings.MCM_ROUTES_REDIS_URL = f"redis://127.0.0.1:6379/{route_table.connection_pool.connection_kwargs['db']}"
    routing.TABLE.skip_until = 0.0

    answer = routes_for(chat_running.pk, NEW_YORK)

    assert answer["source"] == "database"
    assert names(answer) == ["aws-use1-a"]


def test_embedded_mode_answers_from_database(settings, chat_running, route_table):
    settings.MCM_ROUTES_REDIS_URL = None

    assert refresh_routes(reason="test") == 0
    assert routes_for(chat_running.pk, NEW_YORK)["source"] == "database"
    assert route_table.get(routing.route_key(chat_running.pk)) is None


def test_ready_changes_compares_latest_snapshot(fleet, chat_running, globex_search):
    unchanged = TelemetrySnapshot(cluster=fleet.clusters["aws-use1-a"], source="pull", ok=True)
    unchanged.deployments = {str(chat_running.pk): {"name": "chat", "replicas": 2, "ready": 2}}
    changed = TelemetrySnapshot(cluster=fleet.clusters["aws-euw1-a"], source="pull", ok=True)
    changed.deployments = {str(chat_running.pk): {"name": "chat", "replicas": 1, "ready": 0}}
    first = TelemetrySnapshot(cluster=fleet.clusters["gcp-usw4-a"], source="pull", ok=True)
    first.deployments = {str(globex_search.pk): {"name": "search", "replicas": 1, "ready": 1}}
    failed = TelemetrySnapshot(cluster=fleet.clusters["aws-use1-a"], source="pull", ok=False)

    assert ready_changes([unchanged]) == set()
    assert ready_changes([changed, first, failed]) == {chat_running.pk, globex_search.pk}


def test_single_entry_matches_full_build(fleet, acme, chat_running, globex_search, django_assert_max_num_queries):
    """The entry of one deployment equals its entry in the all-deployments build, from fewer rows."""
    PlacementLock.objects.create(deployment=chat_running, allowed_jurisdictions=["eu", "us"], reason="contract")
    customer_lock = PlacementLock.objects.create(customer=acme, reason="AWS only")
    customer_lock.allowed_providers.set([fleet.clusters["aws-use1-a"].region.provider])
    PlacementLock.objects.create(deployment=globex_search, allowed_jurisdictions=["eu"], reason="GDPR")
    apply_plan(
        [
            (chat_running, fleet.clusters["aws-use1-a"], 2),
            (chat_running, fleet.clusters["aws-euw1-a"], 1),
            (globex_search, fleet.clusters["gcp-usw4-a"], 1),
        ]
    )
    # gcp-usw4-a reported chat before and no longer does; it reports globex/search now.
    report_ready(fleet.clusters["gcp-usw4-a"], {chat_running: 1})
    report_ready(fleet.clusters["gcp-usw4-a"], {globex_search: 1})
    serve(chat_running, fleet.clusters["aws-use1-a"], 3.0)
    serve(globex_search, fleet.clusters["gcp-usw4-a"], 1.0)
    now = timezone.now()

    every = routing.serving_entries(now=now)
    # Deployment, plan, assignments, steps, snapshots, clusters, 2 x outages, locks + 3 prefetches, traffic.
    with django_assert_max_num_queries(13):
        one = routing.serving_entries([chat_running.pk], now=now)

    assert one == {chat_running.pk: every[chat_running.pk]}
    assert {cluster["name"] for cluster in one[chat_running.pk]["clusters"]} == {"aws-euw1-a", "aws-use1-a"}
    assert one[chat_running.pk]["excluded"] == []
    assert routing.serving_entries([globex_search.pk], now=now) == {globex_search.pk: every[globex_search.pk]}
    assert every[globex_search.pk]["excluded"][0]["reason"].startswith("outside the locks: jurisdiction us")


def test_single_entry_loads_own_locks(fleet, acme, globex, chat_running, globex_search):
    PlacementLock.objects.create(deployment=chat_running, allowed_jurisdictions=["eu", "us"], reason="contract")
    acme_lock = PlacementLock.objects.create(customer=acme, reason="no GCP")
    PlacementLock.objects.create(deployment=globex_search, allowed_jurisdictions=["eu"], reason="GDPR")
    PlacementLock.objects.create(customer=globex, allowed_jurisdictions=["eu"], reason="GDPR")

    by_customer, by_deployment = routing.deployment_locks([chat_running], everyone=False)

    assert {pk: [lock.source for lock in locks] for pk, locks in by_customer.items()} == {
        acme.pk: [f"lock {acme_lock.pk} on customer {acme}"]
    }
    assert list(by_deployment) == [chat_running.pk]


def test_execution_refreshes_changed_ready_only(monkeypatch, settings, fleet, acme_chat):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    nodes = [("h100-a", H100_LABEL, 8)]
    east = start_site(fleet.clusters["aws-use1-a"], nodes)
    west = start_site(fleet.clusters["aws-euw1-a"], nodes)
    try:
        first = apply_plan([(acme_chat, east.cluster, 2)])
        poll(lambda: execute_plan(first.pk).done)
        west.emulated.set_never_ready(True)
        second = apply_plan([(acme_chat, west.cluster, 2)])
        refreshed: list[set[int]] = []
        monkeypatch.setattr(execution, "schedule_route_refresh", lambda ids, *, reason: refreshed.append(set(ids)))

        for _ in range(3):
            execute_plan(second.pk)
        # The first pass observed the steps; the next two saw the same ready counts.
        assert refreshed == [{acme_chat.pk}, set(), set()]

        west.emulated.set_never_ready(False)
        assert poll(lambda: execute_plan(second.pk).done)
        # The pass that removed the old replicas observed east's ready count fall to 0.
        assert refreshed[-1] == {acme_chat.pk}
    finally:
        east.emulated.stop()
        west.emulated.stop()


# Client locations.


def test_resolve_coordinates():
    assert resolve_location(latitude="52.52", longitude="13.4") == ClientLocation(
        52.52, 13.4, "52.5200, 13.4000", "coordinates"
    )


def test_resolve_region(fleet):
    location = resolve_location(region="aws/eu-west-1")

    assert (location.latitude, location.longitude) == (53.3, -6.3)
    assert location.source == "region aws/eu-west-1"
    assert location.label == "Dublin"


def test_resolve_bare_region_code(fleet):
    assert resolve_location(region="us-west4").source == "region gcp/us-west4"


def test_resolve_country_from_mcm_regions(settings, tmp_path, fleet):
    settings.MCM_DATA_DIR = tmp_path

    location = resolve_location(country="us")

    assert location.source == "country US: mean of 2 MCM regions"
    assert math.isclose(location.latitude, (39.0 + 36.2) / 2)


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({}, "location", "missing"),
        ({"latitude": "91", "longitude": "0"}, "latitude", "'91' is out of range"),
        ({"latitude": "0", "longitude": "-180.5"}, "longitude", "'-180.5' is out of range"),
        ({"latitude": "north", "longitude": "0"}, "latitude", "'north' is not a number"),
        ({"latitude": "nan", "longitude": "0"}, "latitude", "'nan' is out of range"),
        ({"latitude": "10"}, "longitude", "missing"),
        ({"country": "DEU"}, "country", "'DEU' is not an ISO 3166-1 alpha-2"),
        ({"country": "ZZ"}, "country", "'ZZ' is unknown"),
        ({"region": "aws/mars-1"}, "region", "No region 'aws/mars-1' exists"),
        ({"country": "DE", "region": "aws/eu-west-1"}, "location", "not country and region"),
    ],
)
def test_resolve_rejects(settings, tmp_path, fleet, params, field, text):
    settings.MCM_DATA_DIR = tmp_path

    with pytest.raises(ValidationError) as raised:
        resolve_location(**params)

    assert list(raised.value.message_dict) == [field]
    assert text in raised.value.message_dict[field][0]


def test_portable_ready_read_matches_postgresql(fleet, chat_running, monkeypatch):
    """The ORM read that the embedded mode (SQLite) uses gives the same ready replicas."""
    report_ready(fleet.clusters["aws-use1-a"], {chat_running: 1})
    expected = routing.ready_replicas([chat_running.pk], None)
    monkeypatch.setattr(routing.connection, "vendor", "sqlite")

    portable = routing.ready_replicas([chat_running.pk], None)

    assert portable == expected
    assert portable[chat_running.pk] == {fleet.clusters["aws-use1-a"].pk: 1, fleet.clusters["aws-euw1-a"].pk: 1}
