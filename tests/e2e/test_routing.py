"""Routes end to end: emulated clusters, MCM's loop, and the route table in Redis following a failure."""

import json

import pytest
import redis
from django.conf import settings

from compliance.models import PlacementLock
from fleet.models import ClusterHealth
from placements import routing
from tests.conftest import token_client
from tests.e2e.conftest import LONDON, ClusterSpec, deploy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FLEET = (
    ClusterSpec("aws-use1-a", "aws", "us-east-1", "us", 39.0, -77.5, {"H100": 16}, "2.00"),
    ClusterSpec("aws-euw1-a", "aws", "eu-west-1", "eu", 53.3, -6.3, {"H100": 16}, "2.20"),
    ClusterSpec("gcp-euw4-a", "gcp", "europe-west4", "eu", 53.4, 6.8, {"H100": 16}, "2.70"),
)


@pytest.fixture(autouse=True)
def route_table():
    client = redis.Redis.from_url(settings.MCM_ROUTES_REDIS_URL)
    routing.TABLE.skip_until = 0.0
    routing.TABLE.stale = False
    yield client
    keys = list(client.scan_iter(match=f"{routing.key_prefix()}*"))
    if keys:
        client.delete(*keys)


def cached_clusters(client: redis.Redis, deployment) -> list[str] | None:
    """The cluster names the Redis table lists for ``deployment``; None when it has no entry."""
    value = client.get(routing.route_key(deployment.pk))
    return None if value is None else [cluster["name"] for cluster in json.loads(value)["clusters"]]


def test_route_drops_failed_cluster(world_factory, customers, ops, route_table):
    world = world_factory(FLEET)
    acme = customers["acme"]
    bot = deploy(acme, "bot", replicas=4, min_providers=2, region_preference=["aws/eu-west-1"], demand_origins=[LONDON])
    PlacementLock.objects.create(deployment=bot, allowed_jurisdictions=["eu"], reason="EU data residency")
    world.start()
    # Routes follow what MCM observed: the next heartbeat reads the replicas that became ready.
    observed = world.run_until(lambda: len(cached_clusters(route_table, bot) or []) == 2, timeout_s=10)
    assert observed, world.describe()
    api = token_client(ops)

    before = api.get(f"/api/v1/deployments/{bot.pk}/route/", {"latitude": 51.5, "longitude": -0.1}).json()
    serving = {route["cluster"] for route in before["routes"]}
    assert before["source"] == "cache", before
    assert serving == {"aws-euw1-a", "gcp-euw4-a"}, before
    assert {"aws-use1-a"}.isdisjoint(serving)

    world.fail("aws-euw1-a")
    down = world.run_until(lambda: world.health()["aws-euw1-a"] == ClusterHealth.DOWN, timeout_s=20)

    assert down, world.describe()
    # The health change refreshed the table: the entry no longer lists the lost cluster.
    assert cached_clusters(route_table, bot) == ["gcp-euw4-a"]
    after = api.get(f"/api/v1/deployments/{bot.pk}/route/", {"country": "GB", "latitude": ""}).json()
    assert after["source"] == "cache", after
    assert [route["cluster"] for route in after["routes"]] == ["gcp-euw4-a"]
    assert after["routes"][0]["weight"] == 1.0

    # The hard spread rule over two providers leaves the deployment degraded on gcp alone.
    placed = world.placed(bot)
    assert set(placed) == {"gcp-euw4-a"}, world.describe()
    moved = world.run_until(
        lambda: (
            (cached_clusters(route_table, bot) == ["gcp-euw4-a"])
            and json.loads(route_table.get(routing.route_key(bot.pk)))["clusters"][0]["ready_replicas"]
            == placed["gcp-euw4-a"]
        ),
        timeout_s=20,
    )
    assert moved, world.describe()
    final = api.get(f"/api/v1/deployments/{bot.pk}/route/", {"region": "gcp/europe-west4"}).json()
    assert [route["cluster"] for route in final["routes"]] == ["gcp-euw4-a"]
    assert final["routes"][0]["ready_replicas"] == placed["gcp-euw4-a"]
