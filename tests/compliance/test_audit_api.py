"""GET /api/v1/audit-events/: staff read, filter and export the trail as CSV, and the API accepts no writes."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from compliance.services import record_event

URL = "/api/v1/audit-events/"
EXPORT_URL = "/api/v1/audit-events/export.csv"


@pytest.fixture
def events(ops, compliance_officer):
    cordoned = record_event(actor=ops, action="cluster.cordoned", subject=("fleet.cluster", 1), reason="Maintenance.")
    approved = record_event(
        actor=compliance_officer,
        action="failover.approved",
        subject=("placements.failoverrequest", 5),
        reason="Region down.",
        before={"status": "pending"},
        after={"status": "approved"},
    )
    applied = record_event(actor="scheduler", action="plan.applied", subject=("placements.placementplan", 9))
    return {"cordoned": cordoned, "approved": approved, "applied": applied}


def ids(response) -> list[int]:
    return [row["id"] for row in response.data["results"]]


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_staff_lists_newest_first(ops_client, events):
    response = ops_client.get(URL)

    assert response.status_code == 200
    assert response.data["count"] == 3
    assert ids(response) == [events["applied"].pk, events["approved"].pk, events["cordoned"].pk]


def test_event_fields_include_before_after(ops_client, events, compliance_officer):
    row = ops_client.get(URL, {"action": "failover.approved"}).data["results"][0]

    assert row["actor_id"] == compliance_officer.pk
    assert row["actor_label"] == "compliance"
    assert row["subject_type"] == "placements.failoverrequest"
    assert row["subject_id"] == "5"
    assert row["reason"] == "Region down."
    assert row["before"] == {"status": "pending"}
    assert row["after"] == {"status": "approved"}


def test_paginated(ops_client, events):
    response = ops_client.get(URL, {"limit": 2})

    assert response.data["count"] == 3
    assert len(response.data["results"]) == 2
    assert response.data["next"] is not None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"subject_type": "fleet.cluster", "subject_id": "1"}, ["cordoned"]),
        ({"subject_type": "placements.placementplan"}, ["applied"]),
        ({"actor": "scheduler"}, ["applied"]),
        ({"action": "failover.approved"}, ["approved"]),
        ({"action_prefix": "cluster."}, ["cordoned"]),
        ({"q": "region down"}, ["approved"]),
    ],
)
def test_filters(ops_client, events, params, expected):
    response = ops_client.get(URL, params)

    assert response.status_code == 200
    assert ids(response) == [events[name].pk for name in expected]


def test_filter_by_actor_id(ops_client, events, ops):
    response = ops_client.get(URL, {"actor_id": ops.pk})

    assert ids(response) == [events["cordoned"].pk]


def test_filter_by_time_range(ops_client, events):
    now = timezone.now()
    inside = {"since": (now - timedelta(minutes=1)).isoformat(), "until": (now + timedelta(minutes=1)).isoformat()}
    later = {"since": (now + timedelta(minutes=1)).isoformat()}
    earlier = {"until": (now - timedelta(minutes=1)).isoformat()}

    assert ops_client.get(URL, inside).data["count"] == 3
    assert ops_client.get(URL, later).data["count"] == 0
    assert ops_client.get(URL, earlier).data["count"] == 0


def test_invalid_time_names_field(ops_client, events):
    response = ops_client.get(URL, {"since": "yesterday"})

    assert response.status_code == 400
    assert "since" in response.data


def test_customer_refused(acme_client, events):
    assert acme_client.get(URL).status_code == 403
    assert acme_client.get(f"{URL}{events['cordoned'].pk}/").status_code == 403
    assert acme_client.get(EXPORT_URL).status_code == 403
    assert acme_client.get(URL, {"format": "csv"}).status_code == 403


def test_anonymous_refused(anonymous_client, events):
    assert anonymous_client.get(URL).status_code == 401
    assert anonymous_client.get(EXPORT_URL).status_code == 401


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_writes_not_allowed(ops_client, events, method):
    target = URL if method == "post" else f"{URL}{events['cordoned'].pk}/"

    response = getattr(ops_client, method)(target, {"reason": "Rewritten."}, format="json")

    assert response.status_code == 405
    assert AuditEvent.objects.get(pk=events["cordoned"].pk).reason == "Maintenance."
    assert AuditEvent.objects.count() == 3


def test_export_csv_content(ops_client, events, compliance_officer):
    response = ops_client.get(EXPORT_URL, {"action": "failover.approved"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="audit-events.csv"' in response["Content-Disposition"]
    rows = csv_rows(response)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == str(events["approved"].pk)
    assert row["actor_id"] == str(compliance_officer.pk)
    assert row["actor_label"] == "compliance"
    assert row["subject_type"] == "placements.failoverrequest"
    assert row["subject_id"] == "5"
    assert row["reason"] == "Region down."
    assert row["before"] == '{"status": "pending"}'
    assert row["after"] == '{"status": "approved"}'
    assert row["created_at"].endswith("+00:00")


def test_export_without_filters_has_every_event(ops_client, events):
    rows = csv_rows(ops_client.get(EXPORT_URL))

    assert [row["action"] for row in rows] == ["plan.applied", "failover.approved", "cluster.cordoned"]


def test_list_format_csv_same_filters(ops_client, events):
    response = ops_client.get(URL, {"format": "csv", "actor": "ops"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert [row["action"] for row in csv_rows(response)] == ["cluster.cordoned"]


def test_export_ignores_accept_header(ops_client, events):
    response = ops_client.get(EXPORT_URL, HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    assert len(csv_rows(response)) == 3


def test_export_neutralises_formulas(ops_client, ops):
    record_event(actor=ops, action="lock.updated", subject=("compliance.placementlock", 1), reason="=HYPERLINK(1)")

    rows = csv_rows(ops_client.get(EXPORT_URL))

    assert rows[0]["reason"] == "'=HYPERLINK(1)"


def test_audit_events_in_schema(ops_client):
    response = ops_client.get("/api/v1/schema/", {"format": "json"})

    paths = response.json()["paths"]
    assert "/api/v1/audit-events/" in paths
    assert "/api/v1/audit-events/export/" in paths
    assert "text/csv" in paths["/api/v1/audit-events/export/"]["get"]["responses"]["200"]["content"]


def test_export_bad_filter_names_field(ops_client, events):
    response = ops_client.get(EXPORT_URL, {"since": "bad"})

    assert response.status_code == 400
    assert response.content.decode().splitlines() == ["field,message", "since,Enter a valid date/time."]
