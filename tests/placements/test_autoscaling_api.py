"""The deployments API's autoscaling policy: validation, desired replicas, cold start and decisions."""

from datetime import timedelta

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from placements.models import AutoscalingPolicy, Deployment, ScalingDecision
from tests.placements.test_api_deployments import DEPLOYMENTS, detail_url, new_deployment

pytestmark = pytest.mark.django_db

POLICY = {"target_concurrency": 4.0, "target_utilization": 0.5, "window_s": 30, "scale_down_delay_s": 120}


def test_create_with_policy_stores_it_and_audits(acme_client, fleet):
    body = new_deployment(autoscaling=POLICY)
    body.pop("desired_replicas")

    response = acme_client.post(DEPLOYMENTS, body, format="json")

    assert response.status_code == 201, response.data
    policy = AutoscalingPolicy.objects.get(deployment_id=response.data["id"])
    assert (policy.target_concurrency, policy.target_utilization, policy.window_s) == (4.0, 0.5, 30)
    assert policy.enabled is True
    assert response.data["autoscaling"]["scale_down_delay_s"] == 120
    assert response.data["desired_replicas"] == 1
    assert response.data["cold_start"] is None
    event = AuditEvent.objects.get(action="deployment.autoscaling_updated", subject_id=str(response.data["id"]))
    assert event.before is None
    assert event.after["target_concurrency"] == 4.0


def test_get_without_policy_shows_null(acme_client, acme_chat):
    response = acme_client.get(detail_url(acme_chat))

    assert response.status_code == 200
    assert response.data["autoscaling"] is None
    assert response.data["cold_start"] is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("target_utilization", 1.5, "1.5 is out of range"),
        ("target_concurrency", 0.0, "0.0 is out of range"),
        ("max_scale_down_fraction", 0.0, "0.0 is out of range"),
        ("window_s", 0, "0 is out of range"),
        ("scale_down_delay_s", 100000, "100000 is out of range"),
        ("seconds_per_request", -1.0, "-1.0 is out of range"),
        ("target_utilization", "many", "A valid number is required"),
        ("target_concurrency", True, "true is not a number"),
        ("target_utilization", False, "false is not a number"),
        ("bogus", 1, "'bogus' is not a policy field"),
    ],
)
def test_create_rejects_policy_value(acme_client, fleet, field, value, expected):
    body = new_deployment(autoscaling={field: value})
    body.pop("desired_replicas")

    response = acme_client.post(DEPLOYMENTS, body, format="json")

    assert response.status_code == 400
    # One shape for range, type and unknown-key errors: nested under autoscaling, keyed by field.
    assert list(response.data["autoscaling"]) == [field], response.data
    assert response.data["autoscaling"][field][0].startswith(expected), response.data
    assert not Deployment.objects.exists()


def test_patch_unknown_policy_key_changes_nothing(acme_client, acme_chat):
    acme_client.patch(detail_url(acme_chat), {"autoscaling": POLICY}, format="json")

    response = acme_client.patch(
        detail_url(acme_chat), {"autoscaling": {"window_s": 90, "bogus": 1, "target_utilization": 2.0}}, format="json"
    )

    assert response.status_code == 400
    assert set(response.data["autoscaling"]) == {"bogus", "target_utilization"}, response.data
    assert AutoscalingPolicy.objects.get(deployment=acme_chat).window_s == 30


def test_patch_min_above_max_names_both_bounds(acme_client, acme_chat):
    acme_client.patch(detail_url(acme_chat), {"max_replicas": 4, "autoscaling": POLICY}, format="json")

    response = acme_client.patch(detail_url(acme_chat), {"min_replicas": 6, "max_replicas": 3}, format="json")

    assert response.status_code == 400
    assert set(response.data) == {"min_replicas", "max_replicas"}, response.data
    assert response.data["min_replicas"] == ["6 is above max_replicas 3: min_replicas must not exceed max_replicas."]
    assert response.data["max_replicas"] == ["3 is below min_replicas 6: min_replicas must not exceed max_replicas."]
    assert Deployment.objects.get(pk=acme_chat.pk).max_replicas == 4


def test_scale_to_zero_needs_min_zero(acme_client, fleet):
    body = new_deployment(min_replicas=1, autoscaling={**POLICY, "scale_to_zero": True})
    body.pop("desired_replicas")

    response = acme_client.post(DEPLOYMENTS, body, format="json")

    assert response.status_code == 400
    message = response.data["autoscaling"]["scale_to_zero"][0]
    assert message.startswith("true needs min_replicas 0, but min_replicas is 1"), response.data
    assert not Deployment.objects.exists()


def test_create_rejects_desired_replicas_while_enabled(acme_client, fleet):
    response = acme_client.post(DEPLOYMENTS, new_deployment(autoscaling=POLICY), format="json")

    assert response.status_code == 400
    assert "autoscaler sets desired replicas" in response.data["desired_replicas"][0]
    assert not Deployment.objects.exists()


def test_create_accepts_desired_replicas_when_disabled(acme_client, fleet):
    response = acme_client.post(DEPLOYMENTS, new_deployment(autoscaling={"enabled": False}), format="json")

    assert response.status_code == 201, response.data
    assert response.data["desired_replicas"] == 2


def test_min_zero_needs_scale_to_zero(acme_client, fleet):
    body = new_deployment(min_replicas=0, autoscaling=POLICY)
    body.pop("desired_replicas")

    rejected = acme_client.post(DEPLOYMENTS, body, format="json")
    body["autoscaling"] = {**POLICY, "scale_to_zero": True}
    accepted = acme_client.post(DEPLOYMENTS, body, format="json")

    assert rejected.status_code == 400
    assert "scale_to_zero" in rejected.data["min_replicas"][0]
    assert accepted.status_code == 201, accepted.data


def test_patch_desired_rejected_while_enabled(acme_client, acme_chat):
    acme_client.patch(detail_url(acme_chat), {"max_replicas": 9, "autoscaling": POLICY}, format="json")
    before = Deployment.objects.get(pk=acme_chat.pk).desired_replicas

    response = acme_client.patch(detail_url(acme_chat), {"desired_replicas": before + 1}, format="json")

    assert response.status_code == 400
    assert "autoscaler sets desired replicas" in response.data["desired_replicas"][0]
    assert Deployment.objects.get(pk=acme_chat.pk).desired_replicas == before


def test_patch_policy_keeps_desired_within_new_bounds(acme_client, acme_chat):
    before = Deployment.objects.get(pk=acme_chat.pk).desired_replicas

    response = acme_client.patch(
        detail_url(acme_chat), {"max_replicas": before + 5, "autoscaling": POLICY}, format="json"
    )

    assert response.status_code == 200, response.data
    assert response.data["desired_replicas"] == before
    response = acme_client.patch(detail_url(acme_chat), {"min_replicas": before + 2}, format="json")
    assert response.status_code == 200, response.data
    assert response.data["desired_replicas"] == before + 2


def test_patch_policy_field_keeps_others(acme_client, acme_chat):
    acme_client.patch(detail_url(acme_chat), {"autoscaling": POLICY}, format="json")

    response = acme_client.patch(detail_url(acme_chat), {"autoscaling": {"window_s": 90}}, format="json")

    assert response.status_code == 200, response.data
    policy = AutoscalingPolicy.objects.get(deployment=acme_chat)
    assert (policy.window_s, policy.target_concurrency) == (90, 4.0)
    assert AuditEvent.objects.filter(action="deployment.autoscaling_updated").count() == 2


def test_patch_null_removes_policy(acme_client, acme_chat):
    acme_client.patch(detail_url(acme_chat), {"autoscaling": POLICY}, format="json")

    response = acme_client.patch(detail_url(acme_chat), {"autoscaling": None}, format="json")

    assert response.status_code == 200, response.data
    assert response.data["autoscaling"] is None
    assert not AutoscalingPolicy.objects.filter(deployment=acme_chat).exists()


def test_put_with_policy_keeps_stored_desired(acme_client, acme_chat):
    stored = Deployment.objects.get(pk=acme_chat.pk).desired_replicas
    body = new_deployment(name=acme_chat.name, max_replicas=10, autoscaling=POLICY)
    body.pop("desired_replicas")

    response = acme_client.put(detail_url(acme_chat), body, format="json")

    assert response.status_code == 200, response.data
    assert response.data["desired_replicas"] == stored


def test_cold_start_note_at_zero_replicas(acme_client, acme_chat):
    Deployment.objects.filter(pk=acme_chat.pk).update(min_replicas=0, desired_replicas=0)

    response = acme_client.get(detail_url(acme_chat))

    assert response.data["cold_start"]["message"].startswith("No replica runs")
    assert response.data["cold_start"]["last_start_s"] is None


def test_scaling_lists_decisions_newest_first(acme_client, acme_chat, globex_search):
    now = timezone.now()
    for minutes, (before, after) in enumerate([(1, 3), (3, 2)]):
        ScalingDecision.objects.create(
            deployment=acme_chat,
            decided_at=now + timedelta(minutes=minutes),
            direction="up" if after > before else "down",
            from_replicas=before,
            to_replicas=after,
            reason="test",
            measurements={"requests_per_second": 1.0},
        )

    response = acme_client.get(f"{detail_url(acme_chat)}scaling/")

    assert response.status_code == 200
    assert response.data["count"] == 2
    assert [row["to_replicas"] for row in response.data["results"]] == [2, 3]
    assert response.data["results"][0]["measurements"] == {"requests_per_second": 1.0}


def test_scaling_of_foreign_deployment_is_404(acme_client, globex_search):
    response = acme_client.get(f"{detail_url(globex_search)}scaling/")

    assert response.status_code == 404


def test_schema_lists_scaling_and_autoscaling(acme_client):
    response = acme_client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json() if hasattr(response, "json") else response.data
    assert "/api/v1/deployments/{id}/scaling/" in schema["paths"]
    assert "autoscaling" in schema["components"]["schemas"]["Deployment"]["properties"]
