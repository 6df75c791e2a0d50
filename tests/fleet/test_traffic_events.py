"""Traffic reaches TrafficSample rows through both doors: pushed events and the pull collector."""

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import Permission

from fleet.events import apply_events
from fleet.kube import ClusterAdapter, ClusterError
from fleet.models import ClusterEvent
from fleet.telemetry import collect_cluster, collect_many
from placements.models import Deployment, TrafficSample, TrafficSource
from placements.traffic import window_traffic
from tests.conftest import token_client
from tests.placements.execution_factories import H100_LABEL, start_site

pytestmark = pytest.mark.django_db

CLUSTER = "aws-use1-a"


@pytest.fixture
def agent_client(django_user_model, fleet):
    user = django_user_model.objects.create_user(username="agent-aws-use1-a")
    user.user_permissions.add(Permission.objects.get(codename="add_clusterevent"))
    return token_client(user)


def traffic_event(number: int, payload: dict, *, second: int = 0) -> dict:
    return {
        "event_id": f"{CLUSTER}-{number}",
        "cluster": CLUSTER,
        "sequence": number,
        "kind": "traffic",
        "occurred_at": f"2026-12-04T10:00:{second:02d}Z",
        "payload": payload,
    }


def push(client, *events: dict) -> dict:
    response = client.post("/api/v1/events", {"events": list(events)}, format="json")
    assert response.status_code == 200
    return response.json()


# Push


def test_pushed_traffic_is_stored_when_applied(agent_client, fleet, acme_chat):
    result = push(
        agent_client,
        traffic_event(1, {"deployment_id": acme_chat.pk, "requests_per_second": 12, "in_flight": 3, "origin": "US"}),
        traffic_event(2, {"deployment_id": acme_chat.pk, "requests_per_second": 4.5}, second=10),
    )
    assert result["accepted"] == 2
    assert TrafficSample.objects.count() == 0

    applied = apply_events(fleet.clusters[CLUSTER].pk)

    assert applied == 2
    east = fleet.clusters[CLUSTER].pk
    at_0, at_10 = datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC), datetime(2026, 12, 4, 10, 0, 10, tzinfo=UTC)
    samples = TrafficSample.objects.order_by("observed_at")
    assert [
        (s.deployment_id, s.cluster_id, s.origin, s.requests_per_second, s.in_flight, s.source, s.observed_at)
        for s in samples
    ] == [
        (acme_chat.pk, east, "US", 12.0, 3.0, TrafficSource.PUSH, at_0),
        (acme_chat.pk, east, "", 4.5, None, TrafficSource.PUSH, at_10),
    ]
    window = window_traffic([acme_chat.pk], window_s=60, now=datetime(2026, 12, 4, 10, 0, 30, tzinfo=UTC))
    assert window[acme_chat.pk].by_origin == {"US": 12.0, "": 4.5}


def test_reapplying_stores_nothing_twice(agent_client, fleet, acme_chat):
    push(agent_client, traffic_event(1, {"deployment_id": acme_chat.pk, "requests_per_second": 1}))
    apply_events(fleet.clusters[CLUSTER].pk)

    again = apply_events(fleet.clusters[CLUSTER].pk)

    assert again == 0
    assert TrafficSample.objects.count() == 1


def test_unknown_deployment_is_rejected_at_ingest(agent_client, acme_chat):
    missing = acme_chat.pk + 1000

    result = push(
        agent_client,
        traffic_event(1, {"deployment_id": missing, "requests_per_second": 1}),
        traffic_event(2, {"deployment_id": acme_chat.pk, "requests_per_second": 1}),
    )

    assert result["accepted"] == 1
    assert result["results"][0]["status"] == "rejected"
    assert result["results"][0]["errors"] == {"payload.deployment_id": f"no deployment has id {missing}"}
    assert result["results"][0]["waiting"].startswith("sequence 1 was not stored: later events of cluster")
    assert list(ClusterEvent.objects.values_list("sequence", flat=True)) == [2]


def test_deployment_deleted_before_apply_loses_its_traffic(agent_client, fleet, acme_chat, caplog):
    push(agent_client, traffic_event(1, {"deployment_id": acme_chat.pk, "requests_per_second": 1}))
    deployment_id = acme_chat.pk
    Deployment.objects.filter(pk=deployment_id).delete()

    applied = apply_events(fleet.clusters[CLUSTER].pk)

    assert applied == 1
    assert TrafficSample.objects.count() == 0
    assert f"unknown deployment ids [{deployment_id}]" in caplog.text


# Pull


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000


@pytest.fixture
def east(fleet):
    site = start_site(fleet.clusters[CLUSTER], [("h100-a", H100_LABEL, 8)])
    yield site
    site.emulated.stop()


@pytest.fixture
def west(fleet):
    site = start_site(fleet.clusters["aws-euw1-a"], [("h100-a", H100_LABEL, 8)])
    yield site
    site.emulated.stop()


def test_pulled_traffic_is_stored_per_origin(east, acme_chat):
    east.run_directly(acme_chat, 0, name="acme-chat")
    east.emulated.set_traffic("acme-chat", {"US": (12.5, 3.0), "GB": (2.0, None)})
    east.emulated.set_traffic("not-mcm", {"US": (100.0, None)})

    snapshot = collect_cluster(east.cluster.pk)

    assert snapshot.ok
    samples = TrafficSample.objects.order_by("origin")
    assert [(s.origin, s.requests_per_second, s.in_flight) for s in samples] == [("GB", 2.0, None), ("US", 12.5, 3.0)]
    assert {(s.deployment_id, s.cluster_id, s.source, s.observed_at) for s in samples} == {
        (acme_chat.pk, east.cluster.pk, TrafficSource.PULL, snapshot.taken_at)
    }


def test_collect_many_stores_every_cluster(east, west, acme_chat):
    for site, rate in ((east, 10.0), (west, 4.0)):
        site.run_directly(acme_chat, 0, name="acme-chat")
        site.emulated.set_traffic("acme-chat", {"US": (rate, None)})

    snapshots = collect_many([east.cluster.pk, west.cluster.pk])

    assert all(snapshot.ok for snapshot in snapshots)
    window = window_traffic([acme_chat.pk], window_s=60)[acme_chat.pk]
    assert window.by_cluster == {east.cluster.pk: 10.0, west.cluster.pk: 4.0}


def test_cluster_without_traffic_stores_none(east, acme_chat):
    east.run_directly(acme_chat, 1, name="acme-chat")

    snapshot = collect_cluster(east.cluster.pk)

    assert snapshot.ok
    assert TrafficSample.objects.count() == 0


def test_failed_traffic_read_keeps_the_read(east, acme_chat, monkeypatch, caplog):
    east.run_directly(acme_chat, 1, name="acme-chat")

    def fail(self, deployments=None):
        raise ClusterError(self.name, "read metric mcm_requests_per_second", "HTTP 500", retryable=True, status=500)

    monkeypatch.setattr(ClusterAdapter, "read_traffic", fail)

    snapshot = collect_cluster(east.cluster.pk)

    assert snapshot.ok
    assert snapshot.deployments[str(acme_chat.pk)]["replicas"] == 1
    assert TrafficSample.objects.count() == 0
    assert f"traffic of cluster {CLUSTER} not read" in caplog.text


def test_unreachable_cluster_stores_no_traffic(east, acme_chat):
    east.emulated.set_traffic("acme-chat", {"US": (1.0, None)})
    east.emulated.set_unreachable()

    snapshot = collect_cluster(east.cluster.pk)

    assert not snapshot.ok
    assert TrafficSample.objects.count() == 0
