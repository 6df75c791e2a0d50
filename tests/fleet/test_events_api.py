"""POST /api/v1/events: who may push, the result returned for each event, and what is stored."""

import pytest
from django.contrib.auth.models import Permission

from compliance.models import AuditEvent
from fleet.api_events import MAX_BATCH_EVENTS
from fleet.events import apply_events
from fleet.models import Cluster, ClusterCapacity, ClusterEvent
from tests.conftest import token_client

URL = "/api/v1/events"


def event(number: int, *, cluster: str = "aws-use1-a", event_id: str | None = None, **fields) -> dict:
    """A valid capacity event with sequence ``number``; keyword arguments replace its fields."""
    body = {
        "event_id": f"{cluster}-{number}" if event_id is None else event_id,
        "cluster": cluster,
        "sequence": number,
        "kind": "capacity",
        "occurred_at": f"2026-12-04T10:00:{number % 60:02d}Z",
        "payload": {"gpus": {"H100": {"allocatable": 10 + number}}},
    }
    body.update(fields)
    return body


@pytest.fixture
def agent(django_user_model, fleet):
    user = django_user_model.objects.create_user(username="agent-aws-use1-a")
    user.user_permissions.add(Permission.objects.get(codename="add_clusterevent"))
    return user


@pytest.fixture
def agent_client(agent):
    return token_client(agent)


def capacity_state() -> list[tuple]:
    return list(
        ClusterCapacity.objects.order_by("cluster__name", "sku__name").values_list(
            "cluster__name", "sku__name", "total_gpus", "allocatable_gpus", "in_use_gpus"
        )
    )


@pytest.mark.django_db
def test_valid_batch_is_accepted(agent_client):
    response = agent_client.post(URL, {"events": [event(1), event(2)]}, format="json")

    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    assert response.json()["results"] == [
        {"index": 0, "status": "accepted", "errors": {}},
        {"index": 1, "status": "accepted", "errors": {}},
    ]
    assert ClusterEvent.objects.count() == 2


@pytest.mark.django_db
def test_stored_event_keeps_its_fields(agent_client, fleet):
    agent_client.post(URL, {"events": [event(1)]}, format="json")

    stored = ClusterEvent.objects.get()
    assert stored.cluster == fleet.clusters["aws-use1-a"]
    assert stored.event_id == "aws-use1-a-1"
    assert stored.sequence == 1
    assert stored.kind == "capacity"
    assert stored.payload == {"gpus": {"H100": {"allocatable": 11}}}
    assert stored.applied_at is None


@pytest.mark.django_db
def test_url_with_trailing_slash_is_served(agent_client):
    response = agent_client.post(URL + "/", {"events": [event(1)]}, format="json")

    assert response.status_code == 200
    assert response.json()["accepted"] == 1


@pytest.mark.django_db
def test_resent_batch_is_reported_as_duplicates(agent_client):
    batch = {"events": [event(1), event(2)]}
    agent_client.post(URL, batch, format="json")

    response = agent_client.post(URL, batch, format="json")

    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert response.json()["duplicates"] == 2
    assert [result["status"] for result in response.json()["results"]] == ["duplicate", "duplicate"]


@pytest.mark.django_db
def test_resent_batch_changes_nothing(agent_client, fleet):
    batch = {"events": [event(1), event(2), event(3, kind="health", payload={"status": "ok"})]}
    agent_client.post(URL, batch, format="json")
    apply_events(fleet.clusters["aws-use1-a"].pk)
    events_before = list(ClusterEvent.objects.values_list("pk", "event_id", "sequence", "applied_at"))
    capacity_before = capacity_state()
    audit_before = AuditEvent.objects.count()
    heartbeat_before = Cluster.objects.get(name="aws-use1-a").last_heartbeat_at

    agent_client.post(URL, batch, format="json")
    apply_events(fleet.clusters["aws-use1-a"].pk)

    assert list(ClusterEvent.objects.values_list("pk", "event_id", "sequence", "applied_at")) == events_before
    assert capacity_state() == capacity_before
    assert AuditEvent.objects.count() == audit_before
    assert Cluster.objects.get(name="aws-use1-a").last_heartbeat_at == heartbeat_before


@pytest.mark.django_db
def test_repeated_event_in_batch_stored_once(agent_client):
    response = agent_client.post(URL, {"events": [event(1), event(1)]}, format="json")

    assert [result["status"] for result in response.json()["results"]] == ["accepted", "duplicate"]
    assert ClusterEvent.objects.count() == 1


@pytest.mark.django_db
def test_reused_sequence_is_rejected(agent_client):
    agent_client.post(URL, {"events": [event(1, event_id="first")]}, format="json")

    response = agent_client.post(URL, {"events": [event(1, event_id="second")]}, format="json")

    result = response.json()["results"][0]
    assert result["status"] == "rejected"
    assert result["errors"] == {"sequence": "sequence 1 is already used by event 'first' of this cluster"}
    assert "waiting" not in result
    assert list(ClusterEvent.objects.values_list("event_id", flat=True)) == ["first"]


@pytest.mark.django_db
def test_reused_sequence_in_batch_is_rejected(agent_client):
    response = agent_client.post(URL, {"events": [event(1, event_id="a"), event(1, event_id="b")]}, format="json")

    result = response.json()["results"][1]
    assert result["status"] == "rejected"
    assert result["errors"] == {"sequence": "sequence 1 is already used by event 'a' in this batch"}
    assert "waiting" not in result


@pytest.mark.django_db
def test_rejected_event_leaving_gap_gets_waiting_note(agent_client, settings):
    settings.MCM_EVENT_GAP_TIMEOUT_S = 300
    batch = [event(1), event(2, payload={"gpus": {"H100": {"allocatable": -1}}}), event(3)]

    response = agent_client.post(URL, {"events": batch}, format="json")

    results = response.json()["results"]
    assert response.status_code == 200
    assert results[1]["status"] == "rejected"
    assert results[1]["waiting"] == (
        "sequence 2 was not stored: later events of cluster 'aws-use1-a' wait until an event with sequence 2 "
        "arrives (resend this event corrected) or until MCM_EVENT_GAP_TIMEOUT_S (300 s) passes, after which "
        "the gap is skipped"
    )
    assert "waiting" not in results[0]
    assert "waiting" not in results[2]


@pytest.mark.django_db
def test_rejected_applied_sequence_has_no_note(agent_client, fleet):
    Cluster.objects.filter(pk=fleet.clusters["aws-use1-a"].pk).update(last_applied_sequence=5)

    response = agent_client.post(URL, {"events": [event(4, kind="health", payload={})]}, format="json")

    result = response.json()["results"][0]
    assert result["status"] == "rejected"
    assert "waiting" not in result


@pytest.mark.django_db
def test_corrected_resend_fills_the_gap(agent_client, fleet):
    rejected = event(2, payload={"gpus": {"H100": {"allocatable": -1}}})
    agent_client.post(URL, {"events": [event(1), rejected, event(3)]}, format="json")
    cluster_id = fleet.clusters["aws-use1-a"].pk
    assert apply_events(cluster_id) == 1

    response = agent_client.post(URL, {"events": [event(2)]}, format="json")

    assert response.json()["results"] == [{"index": 0, "status": "accepted", "errors": {}}]
    assert apply_events(cluster_id) == 2
    assert Cluster.objects.get(pk=cluster_id).last_applied_sequence == 3
    assert ("aws-use1-a", "H100", 16, 13, 4) in capacity_state()


@pytest.mark.django_db
def test_bad_events_rejected_valid_kept(agent_client):
    batch = [
        event(1),
        event(2, cluster="no-such-cluster"),
        event(3, sequence=0),
        event(4, occurred_at="2026-12-04T10:00:00"),
        event(5, payload={"gpus": {"H100": {"allocatable": -1}}}),
        event(6),
    ]

    response = agent_client.post(URL, {"events": batch}, format="json")

    body = response.json()
    assert response.status_code == 200
    assert body["accepted"] == 2
    assert body["rejected"] == 4
    assert body["results"][1]["errors"] == {"cluster": "no cluster is named 'no-such-cluster'"}
    assert body["results"][2]["errors"] == {"sequence": "must be an integer from 1 to 9223372036854775807, got 0"}
    assert body["results"][3]["errors"] == {
        "occurred_at": "has no time zone: '2026-12-04T10:00:00'; add 'Z' or an offset such as '+00:00'"
    }
    assert body["results"][4]["errors"] == {
        "payload.gpus.H100.allocatable": "must be an integer from 0 to 2147483647, got -1"
    }
    assert sorted(ClusterEvent.objects.values_list("sequence", flat=True)) == [1, 6]
    assert [("waiting" in result) for result in body["results"]] == [False, False, False, True, True, False]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"event_id": ""}, "event_id", "must be a string of 1 to 64 characters, got ''"),
        ({"event_id": "x" * 65}, "event_id", "must be a string of 1 to 64 characters"),
        ({"sequence": "7"}, "sequence", "must be an integer"),
        ({"sequence": True}, "sequence", "must be an integer"),
        ({"kind": "weather"}, "kind", "must be one of capacity, utilization, health, traffic, got 'weather'"),
        ({"occurred_at": "yesterday"}, "occurred_at", "is not an ISO 8601 timestamp: 'yesterday'"),
        ({"payload": []}, "payload", "must be a JSON object, got list"),
        ({"payload": {"gpus": {"Z999": {"allocatable": 1}}}}, "payload.gpus.Z999", "unknown GPU SKU 'Z999'"),
        ({"payload": {"gpus": {"H100": {}}}}, "payload.gpus.H100.allocatable", "is required"),
        ({"payload": {"gpus": {"H100": {"allocatable": 1, "in_use": 1.5}}}}, "payload.gpus.H100.in_use", "integer"),
        ({"kind": "health", "payload": {"status": "fine"}}, "payload.status", "must be one of ok, degraded, failing"),
        ({"kind": "traffic", "payload": {"requests_per_second": 1}}, "payload.deployment_id", "positive integer"),
        (
            {"kind": "traffic", "payload": {"deployment_id": 1, "requests_per_second": -2}},
            "payload.requests_per_second",
            "must be a finite number >= 0",
        ),
        ({"kind": "utilization", "payload": {}}, "payload", "needs gpus_in_use"),
        ({"kind": "utilization", "payload": {"deployments": {"x": {}}}}, "payload.deployments.x", "not a deployment"),
    ],
)
def test_invalid_field_is_named_with_reason(agent_client, fields, field, reason):
    response = agent_client.post(URL, {"events": [event(1, **fields)]}, format="json")

    result = response.json()["results"][0]
    assert result["status"] == "rejected"
    assert reason in result["errors"][field]
    assert ClusterEvent.objects.count() == 0


@pytest.mark.django_db
def test_event_that_is_not_an_object_is_rejected(agent_client):
    response = agent_client.post(URL, {"events": ["capacity"]}, format="json")

    assert response.json()["results"][0]["errors"] == {"event": "must be a JSON object, got str"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "payload",
    [
        {"status": "degraded", "message": "2 GPU nodes not ready"},
    ],
)
def test_health_event_is_accepted(agent_client, payload):
    response = agent_client.post(URL, {"events": [event(1, kind="health", payload=payload)]}, format="json")

    assert response.json()["accepted"] == 1


@pytest.mark.django_db
def test_utilization_and_traffic_events_are_accepted(agent_client, acme_chat):
    batch = [
        event(1, kind="utilization", payload={"gpus_in_use": {"H100": 4}}),
        event(2, kind="utilization", payload={"deployments": {"12": {"gpus_in_use": 2, "ready_replicas": 1}}}),
        event(3, kind="traffic", payload={"deployment_id": acme_chat.pk, "requests_per_second": 35.5, "origin": "US"}),
    ]

    response = agent_client.post(URL, {"events": batch}, format="json")

    assert response.json()["accepted"] == 3


@pytest.mark.django_db
def test_batch_over_the_limit_is_rejected(agent_client):
    batch = [event(sequence) for sequence in range(1, MAX_BATCH_EVENTS + 2)]

    response = agent_client.post(URL, {"events": batch}, format="json")

    assert response.status_code == 400
    assert response.json() == {"events": ["At most 5000 events per batch; got 5001. Split the batch."]}
    assert ClusterEvent.objects.count() == 0


@pytest.mark.django_db
def test_batch_at_the_limit_is_accepted(agent_client):
    batch = [event(sequence) for sequence in range(1, MAX_BATCH_EVENTS + 1)]

    response = agent_client.post(URL, {"events": batch}, format="json")

    assert response.json()["accepted"] == MAX_BATCH_EVENTS
    assert ClusterEvent.objects.count() == MAX_BATCH_EVENTS


@pytest.mark.django_db
@pytest.mark.parametrize("body", [{}, {"events": {"event_id": "x"}}, [event(1)]])
def test_body_without_events_list_gets_400(agent_client, body):
    response = agent_client.post(URL, body, format="json")

    assert response.status_code == 400
    assert "events" in response.json()


@pytest.mark.django_db
def test_body_that_is_not_json_gets_400(agent_client):
    response = agent_client.post(URL, "{not json", content_type="application/json")

    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


@pytest.mark.django_db
def test_unauthenticated_request_gets_401(anonymous_client, fleet):
    response = anonymous_client.post(URL, {"events": [event(1)]}, format="json")

    assert response.status_code == 401
    assert ClusterEvent.objects.count() == 0


@pytest.mark.django_db
def test_customer_without_permission_gets_403(acme_client, fleet):
    response = acme_client.post(URL, {"events": [event(1)]}, format="json")

    assert response.status_code == 403
    assert "fleet.add_clusterevent" in response.json()["detail"]
    assert ClusterEvent.objects.count() == 0


@pytest.mark.django_db
def test_staff_may_push(ops_client, fleet):
    response = ops_client.post(URL, {"events": [event(1)]}, format="json")

    assert response.status_code == 200
    assert response.json()["accepted"] == 1


@pytest.mark.django_db
def test_one_enqueue_per_cluster(agent_client, django_capture_on_commit_callbacks):
    batch = [event(1), event(2), event(1, cluster="gcp-usw4-a", payload={"gpus": {"L4": {"allocatable": 30}}})]

    with django_capture_on_commit_callbacks() as callbacks:
        agent_client.post(URL, {"events": batch}, format="json")

    assert len(callbacks) == 2


@pytest.mark.django_db
def test_duplicate_batch_enqueues_nothing(agent_client, django_capture_on_commit_callbacks):
    agent_client.post(URL, {"events": [event(1)]}, format="json")

    with django_capture_on_commit_callbacks() as callbacks:
        agent_client.post(URL, {"events": [event(1)]}, format="json")

    assert callbacks == []
