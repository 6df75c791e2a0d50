"""Traffic samples: window summaries, storing, retention pruning and GET /api/v1/deployments/{id}/traffic/."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from placements.models import TrafficSample, TrafficSource
from placements.traffic import prune_traffic, record_traffic, window_traffic

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def sample(deployment, rps: float, *, cluster=None, origin: str = "", in_flight=None, age_s: float = 10, **fields):
    return TrafficSample.objects.create(
        deployment=deployment,
        cluster=cluster,
        origin=origin,
        requests_per_second=rps,
        in_flight=in_flight,
        observed_at=NOW - timedelta(seconds=age_s),
        source=fields.get("source", TrafficSource.PUSH),
    )


def row(deployment, rps: float, **fields) -> dict:
    return {
        "deployment_id": deployment.pk,
        "cluster_id": None,
        "origin": "",
        "requests_per_second": rps,
        "in_flight": None,
        "observed_at": NOW,
        **fields,
    }


# window_traffic


def test_window_sums_series_means(fleet, acme_chat):
    east, west = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    sample(acme_chat, 10, cluster=east, origin="US", in_flight=2, age_s=50)
    sample(acme_chat, 20, cluster=east, origin="US", in_flight=4, age_s=20)
    sample(acme_chat, 6, cluster=east, origin="GB", age_s=30)
    sample(acme_chat, 8, cluster=west, origin="GB", in_flight=1, age_s=5)

    window = window_traffic([acme_chat.pk], window_s=60, now=NOW)[acme_chat.pk]

    assert window.requests_per_second == 15 + 6 + 8
    assert window.in_flight == 3 + 1
    assert window.by_cluster == {east.pk: 21, west.pk: 8}
    assert window.in_flight_by_cluster == {east.pk: 3, west.pk: 1}
    assert window.by_origin == {"US": 15, "GB": 14}
    assert window.samples == 4
    assert window.newest_at == NOW - timedelta(seconds=5)


def test_window_excludes_samples_outside_it(acme_chat):
    sample(acme_chat, 100, age_s=61)
    sample(acme_chat, 100, age_s=-1)
    sample(acme_chat, 4, age_s=60 - 0.001)
    sample(acme_chat, 2, age_s=0)

    window = window_traffic(None, window_s=60, now=NOW)[acme_chat.pk]

    assert window.requests_per_second == 3
    assert window.samples == 2


def test_whole_deployment_samples_yield_to_per_cluster(fleet, acme_chat):
    sample(acme_chat, 50, origin="US")
    sample(acme_chat, 7, cluster=fleet.clusters["aws-use1-a"], origin="US")

    window = window_traffic([acme_chat.pk], window_s=60, now=NOW)[acme_chat.pk]

    assert window.requests_per_second == 7
    assert window.samples == 1


def test_whole_deployment_samples_count_alone(acme_chat):
    sample(acme_chat, 50, origin="US", in_flight=9)
    sample(acme_chat, 30, origin="US", age_s=40)

    window = window_traffic([acme_chat.pk], window_s=60, now=NOW)[acme_chat.pk]

    assert window.requests_per_second == 40
    assert window.in_flight == 9
    assert window.by_cluster == {}
    assert window.by_origin == {"US": 40}


def test_in_flight_is_none_when_never_reported(acme_chat):
    sample(acme_chat, 5)

    window = window_traffic([acme_chat.pk], window_s=60, now=NOW)[acme_chat.pk]

    assert window.in_flight is None


def test_window_lists_only_deployments_with_samples(acme_chat, globex_search):
    sample(globex_search, 3)

    every = window_traffic(None, window_s=60, now=NOW)
    chosen = window_traffic([acme_chat.pk], window_s=60, now=NOW)

    assert list(every) == [globex_search.pk]
    assert chosen == {}


def test_window_of_many_deployments_is_one_query(fleet, acme_chat, globex_search):
    for deployment in (acme_chat, globex_search):
        for cluster in fleet.clusters.values():
            sample(deployment, 1, cluster=cluster, origin="US")

    with CaptureQueriesContext(connection) as queries:
        windows = window_traffic(None, window_s=60, now=NOW)

    assert len(queries) == 1
    assert windows[acme_chat.pk].requests_per_second == 4


def test_window_rejects_non_positive_length(acme_chat):
    with pytest.raises(ValueError, match="window_s must be greater than 0, got 0"):
        window_traffic(None, window_s=0)


# record_traffic


def test_record_stores_rows(fleet, acme_chat):
    east = fleet.clusters["aws-use1-a"]

    stored = record_traffic([row(acme_chat, 3.5, cluster_id=east.pk, origin="US", in_flight=1.0)], source="pull")

    assert stored == 1
    saved = TrafficSample.objects.get()
    assert (saved.cluster_id, saved.origin, saved.requests_per_second, saved.in_flight) == (east.pk, "US", 3.5, 1.0)
    assert saved.source == TrafficSource.PULL
    assert saved.observed_at == NOW


def test_record_skips_unknown_deployments(acme_chat, caplog):
    rows = [row(acme_chat, 1), {**row(acme_chat, 2), "deployment_id": acme_chat.pk + 1000}]

    stored = record_traffic(rows, source="push")

    assert stored == 1
    assert list(TrafficSample.objects.values_list("requests_per_second", flat=True)) == [1]
    assert f"unknown deployment ids [{acme_chat.pk + 1000}]" in caplog.text


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"requests_per_second": -1.0}, "requests_per_second -1.0 is not a finite number >= 0"),
        ({"requests_per_second": float("nan")}, "requests_per_second nan"),
        ({"in_flight": float("inf")}, "in_flight inf is not a finite number >= 0"),
        ({"origin": "x" * 65}, "is longer than 64 characters"),
    ],
)
def test_record_skips_invalid_rows(acme_chat, caplog, fields, problem):
    stored = record_traffic([row(acme_chat, 1), row(acme_chat, 2, **fields)], source="pull")

    assert stored == 1
    assert TrafficSample.objects.count() == 1
    assert problem in caplog.text


def test_record_rejects_unknown_source(acme_chat):
    with pytest.raises(ValueError, match="source must be one of pull, push, got 'agent'"):
        record_traffic([row(acme_chat, 1)], source="agent")

    assert TrafficSample.objects.count() == 0


# prune_traffic


def test_prune_deletes_samples_past_retention(acme_chat, settings):
    settings.MCM_TRAFFIC_RETENTION_S = 3600
    sample(acme_chat, 1, age_s=3601)
    sample(acme_chat, 2, age_s=7200)
    kept = sample(acme_chat, 3, age_s=3599)

    deleted = prune_traffic(now=NOW)

    assert deleted == 2
    assert list(TrafficSample.objects.values_list("pk", flat=True)) == [kept.pk]


def test_prune_works_in_batches(acme_chat, settings, monkeypatch):
    monkeypatch.setattr("placements.traffic.PRUNE_BATCH", 2)
    settings.MCM_TRAFFIC_RETENTION_S = 60
    for age in range(100, 105):
        sample(acme_chat, 1, age_s=age)

    deleted = prune_traffic(now=NOW)

    assert deleted == 5
    assert TrafficSample.objects.count() == 0


# GET /api/v1/deployments/{id}/traffic/


def url(deployment) -> str:
    return f"/api/v1/deployments/{deployment.pk}/traffic/"


def recent(deployment, rps: float, **fields):
    """A sample observed a few seconds before the real now, inside the API's default window."""
    return TrafficSample.objects.create(
        deployment=deployment,
        requests_per_second=rps,
        observed_at=datetime.now(UTC) - timedelta(seconds=fields.pop("age_s", 5)),
        source=fields.pop("source", TrafficSource.PULL),
        **fields,
    )


def test_api_returns_window_and_samples(acme_client, fleet, acme_chat):
    east, west = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    recent(acme_chat, 10, cluster=east, origin="US", in_flight=2)
    recent(acme_chat, 4, cluster=west, origin="GB", age_s=10)
    recent(acme_chat, 99, cluster=east, origin="US", age_s=400)

    response = acme_client.get(url(acme_chat))

    body = response.json()
    assert response.status_code == 200
    assert body["deployment"] == acme_chat.pk
    assert body["window_s"] == 300
    assert body["window"]["requests_per_second"] == 14
    assert body["window"]["in_flight"] == 2
    assert body["window"]["by_cluster"] == {"aws-use1-a": 10, "aws-euw1-a": 4}
    assert body["window"]["in_flight_by_cluster"] == {"aws-use1-a": 2}
    assert body["window"]["by_origin"] == {"US": 10, "GB": 4}
    assert body["window"]["samples"] == 2
    assert body["count"] == 3
    assert [sample["requests_per_second"] for sample in body["results"]] == [10, 4, 99]
    assert body["results"][0]["cluster"] == "aws-use1-a"
    assert body["results"][0]["source"] == "pull"


def test_api_window_s_widens_window(acme_client, acme_chat):
    recent(acme_chat, 10)
    recent(acme_chat, 20, age_s=400)

    default = acme_client.get(url(acme_chat)).json()
    wide = acme_client.get(url(acme_chat), {"window_s": 600}).json()

    assert default["window"]["requests_per_second"] == 10
    assert wide["window_s"] == 600
    assert wide["window"]["requests_per_second"] == 15
    assert wide["window"]["samples"] == 2


def test_api_window_without_samples_is_null(acme_client, acme_chat):
    body = acme_client.get(url(acme_chat)).json()

    assert body["window"] is None
    assert body["count"] == 0
    assert body["results"] == []


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ({"window_s": "soon"}, "window_s", "A valid integer is required."),
        ({"window_s": 0}, "window_s", "Ensure this value is greater than or equal to 1."),
        ({"window_s": 86401}, "window_s", "Ensure this value is less than or equal to 86400."),
        ({"since": "yesterday"}, "since", "Enter a valid date/time."),
        ({"source": "agent"}, "source", "Select a valid choice. agent is not one of the available choices."),
    ],
)
def test_api_rejects_bad_query(acme_client, acme_chat, query, field, message):
    response = acme_client.get(url(acme_chat), query)

    assert response.status_code == 400
    assert response.json() == {field: [message]}


def test_api_filters_samples(acme_client, fleet, acme_chat):
    east, west = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    recent(acme_chat, 1, cluster=east, origin="US", age_s=100)
    recent(acme_chat, 2, cluster=west, origin="US", age_s=50)
    recent(acme_chat, 3, cluster=west, origin="GB", age_s=20, source=TrafficSource.PUSH)
    since = (datetime.now(UTC) - timedelta(seconds=60)).isoformat()

    def values(query: dict) -> list[float]:
        return [sample["requests_per_second"] for sample in acme_client.get(url(acme_chat), query).json()["results"]]

    assert values({"cluster": "aws-euw1-a"}) == [3, 2]
    assert values({"cluster_id": east.pk}) == [1]
    assert values({"origin": "US"}) == [2, 1]
    assert values({"source": "push"}) == [3]
    assert values({"since": since}) == [3, 2]
    assert values({"limit": 1, "offset": 1}) == [2]


def test_api_hides_other_customers_deployment(globex_client, acme_chat):
    recent(acme_chat, 10)

    response = globex_client.get(url(acme_chat))

    assert response.status_code == 404


def test_api_lets_staff_read_any_deployment(ops_client, acme_chat):
    recent(acme_chat, 10)

    response = ops_client.get(url(acme_chat))

    assert response.status_code == 200
    assert response.json()["window"]["requests_per_second"] == 10


def test_api_needs_authentication(anonymous_client, acme_chat):
    response = anonymous_client.get(url(acme_chat))

    assert response.status_code == 401


def test_api_is_in_the_schema(ops_client):
    response = ops_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    operation = response.json()["paths"]["/api/v1/deployments/{id}/traffic/"]["get"]
    assert {parameter["name"] for parameter in operation["parameters"]} >= {"window_s", "cluster", "origin", "since"}


# Admin


def test_admin_lists_samples_read_only(superuser_client, fleet, acme_chat):
    recent(acme_chat, 12.5, cluster=fleet.clusters["aws-use1-a"], origin="US")
    changelist = "/admin/placements/trafficsample/"

    response = superuser_client.get(changelist, {"source": "pull"})
    add = superuser_client.get(f"{changelist}add/")

    assert response.status_code == 200
    assert "acme/chat" in response.content.decode()
    assert "aws-use1-a" in response.content.decode()
    assert add.status_code == 403


def test_pulled_series_counts_zero_when_missing(fleet, acme_chat):
    """Traffic that moved from one cluster to another within the window is counted once."""
    from fleet.models import TelemetrySnapshot, TelemetrySource

    east, west = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    for age_s in (50, 30, 10):
        for cluster in (east, west):
            snapshot = TelemetrySnapshot.objects.create(cluster=cluster, source=TelemetrySource.PULL, ok=True)
            TelemetrySnapshot.objects.filter(pk=snapshot.pk).update(taken_at=NOW - timedelta(seconds=age_s))
    sample(acme_chat, 12, cluster=east, origin="US", in_flight=6, age_s=50, source=TrafficSource.PULL)
    sample(acme_chat, 12, cluster=west, origin="US", in_flight=6, age_s=30, source=TrafficSource.PULL)
    sample(acme_chat, 12, cluster=west, origin="US", in_flight=6, age_s=10, source=TrafficSource.PULL)

    window = window_traffic([acme_chat.pk], window_s=60, now=NOW)[acme_chat.pk]

    assert window.by_cluster == {east.pk: 4, west.pk: 8}
    assert window.requests_per_second == 12
    assert window.in_flight == 6
