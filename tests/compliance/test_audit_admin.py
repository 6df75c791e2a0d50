"""The audit trail in the admin: read-only for everyone, filterable, and exportable as CSV."""

import csv
import io

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from compliance.models import AuditEvent
from compliance.services import record_event

CHANGELIST = "admin:compliance_auditevent_changelist"


@pytest.fixture
def events(ops):
    return [
        record_event(actor=ops, action="cluster.cordoned", subject=("fleet.cluster", 1), reason="Maintenance."),
        record_event(actor="scheduler", action="plan.applied", subject=("placements.placementplan", 9)),
    ]


@pytest.fixture
def event_admin():
    return admin.site._registry[AuditEvent]


def superuser_request(superuser):
    request = RequestFactory().get("/")
    request.user = superuser
    return request


def test_superuser_has_no_write_permission(event_admin, events, superuser):
    request = superuser_request(superuser)

    assert event_admin.has_add_permission(request) is False
    assert event_admin.has_change_permission(request, events[0]) is False
    assert event_admin.has_delete_permission(request, events[0]) is False
    assert event_admin.has_view_permission(request, events[0]) is True


def test_admin_offers_no_delete_action(event_admin, superuser):
    actions = event_admin.get_actions(superuser_request(superuser))

    assert "delete_selected" not in actions
    assert "export_csv" in actions


def test_add_and_delete_views_forbidden(superuser_client, events):
    add = superuser_client.get(reverse("admin:compliance_auditevent_add"))
    delete = superuser_client.post(reverse("admin:compliance_auditevent_delete", args=[events[0].pk]), {"post": "yes"})

    assert add.status_code == 403
    assert delete.status_code == 403
    assert AuditEvent.objects.count() == 2


def test_change_view_read_only(superuser_client, events):
    url = reverse("admin:compliance_auditevent_change", args=[events[0].pk])

    response = superuser_client.post(url, {"reason": "Rewritten."})

    assert response.status_code == 403
    assert AuditEvent.objects.get(pk=events[0].pk).reason == "Maintenance."
    assert b"Maintenance." in superuser_client.get(url).content


def test_changelist_filters_by_action(superuser_client, events):
    response = superuser_client.get(reverse(CHANGELIST), {"action": "plan.applied"})

    assert response.status_code == 200
    assert [event.pk for event in response.context["cl"].result_list] == [events[1].pk]


def test_changelist_filters_by_actor(superuser_client, events, ops):
    response = superuser_client.get(reverse(CHANGELIST), {"actor__id__exact": ops.pk})

    assert [event.pk for event in response.context["cl"].result_list] == [events[0].pk]


def test_changelist_search_by_subject_id(superuser_client, events):
    response = superuser_client.get(reverse(CHANGELIST), {"q": "9"})

    assert [event.pk for event in response.context["cl"].result_list] == [events[1].pk]


def test_changelist_date_hierarchy(superuser_client, events):
    created = events[0].created_at

    response = superuser_client.get(reverse(CHANGELIST), {"created_at__year": created.year})

    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 2


def test_export_action_streams_csv(superuser_client, events):
    response = superuser_client.post(
        reverse(CHANGELIST),
        {"action": "export_csv", "_selected_action": [events[0].pk], "index": 0},
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 1
    assert rows[0]["action"] == "cluster.cordoned"
    assert rows[0]["actor_label"] == "ops"
    assert rows[0]["reason"] == "Maintenance."
