"""/api/v1/locks/ and the lock admin: who may change locks, the reasons they need, and the effective lock."""

import pytest
from django.urls import reverse

from compliance.lock_services import create_lock
from compliance.models import LockChange, PlacementLock
from fleet.models import Region
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

LOCKS = "/api/v1/locks/"
DEPLOYMENTS = "/api/v1/deployments/"


@pytest.fixture
def officer_client(compliance_officer):
    return token_client(compliance_officer)


@pytest.fixture
def eu_only(fleet, acme, compliance_officer):
    return create_lock(
        actor=compliance_officer,
        data={"customer": acme, "allowed_jurisdictions": ["eu"], "reason": "Acme contract: EU data only."},
    )


@pytest.fixture
def globex_lock(fleet, globex, compliance_officer):
    return create_lock(actor=compliance_officer, data={"customer": globex, "allowed_providers": ["aws"], "reason": "g"})


def test_officer_creates_updates_and_deletes_with_history(officer_client, fleet, acme_chat):
    created = officer_client.post(
        LOCKS,
        {"deployment": acme_chat.pk, "allowed_regions": ["aws/eu-west-1"], "reason": "Data residency."},
        format="json",
    )
    assert created.status_code == 201, created.data
    assert created.data["level"] == "deployment"
    assert created.data["allowed_regions"] == ["aws/eu-west-1"]
    url = f"{LOCKS}{created.data['id']}/"

    no_reason = officer_client.patch(url, {"allowed_jurisdictions": ["eu"]}, format="json")
    assert no_reason.status_code == 400
    assert "change_reason" in no_reason.data

    patched = officer_client.patch(
        url, {"allowed_jurisdictions": ["EU"], "change_reason": "Add jurisdiction."}, format="json"
    )
    assert patched.status_code == 200, patched.data
    assert patched.data["allowed_jurisdictions"] == ["eu"]

    assert officer_client.delete(url).status_code == 400
    assert officer_client.delete(f"{url}?change_reason=Model retired.").status_code == 204
    assert not PlacementLock.objects.filter(pk=created.data["id"]).exists()
    assert list(
        LockChange.objects.filter(lock_pk=created.data["id"]).order_by("pk").values_list("action", "reason")
    ) == [
        ("created", "Data residency."),
        ("updated", "Add jurisdiction."),
        ("deleted", "Model retired."),
    ]


def test_widening_lock_is_rejected_naming_the_higher_lock(officer_client, acme_chat, eu_only):
    response = officer_client.post(
        LOCKS, {"deployment": acme_chat.pk, "allowed_regions": ["aws/us-east-1"], "reason": "Latency."}, format="json"
    )
    assert response.status_code == 400
    text = " ".join(response.data["allowed_regions"])
    assert f"customer lock {eu_only.pk} on customer acme" in text
    assert "Acme contract: EU data only." in text


def test_bad_values_are_named(officer_client, fleet):
    response = officer_client.post(
        LOCKS, {"customer": "nobody", "allowed_regions": ["mars/base-1"], "reason": "x"}, format="json"
    )
    assert response.status_code == 400
    assert "'nobody'" in response.data["customer"][0]
    assert "'mars/base-1'" in response.data["allowed_regions"][0]


def test_staff_without_lock_permissions_cannot_change_locks(ops_client, eu_only):
    url = f"{LOCKS}{eu_only.pk}/"
    assert ops_client.get(url).status_code == 200
    assert ops_client.patch(url, {"reason": "x", "change_reason": "x"}, format="json").status_code == 403
    assert ops_client.delete(f"{url}?change_reason=x").status_code == 403
    refused = ops_client.post(LOCKS, {"reason": "x"}, format="json")
    assert refused.status_code == 403
    assert "compliance role" in refused.data["detail"]
    eu_only.refresh_from_db()
    assert eu_only.reason == "Acme contract: EU data only."


def test_customer_reads_only_own_locks_and_changes_none(acme_client, eu_only, globex_lock):
    listed = acme_client.get(LOCKS)
    assert listed.status_code == 200
    assert [row["id"] for row in listed.data["results"]] == [eu_only.pk]
    assert acme_client.get(f"{LOCKS}{globex_lock.pk}/").status_code == 404
    assert (
        acme_client.patch(f"{LOCKS}{eu_only.pk}/", {"reason": "x", "change_reason": "x"}, format="json").status_code
        == 403
    )
    assert acme_client.post(LOCKS, {"customer": "acme", "reason": "x"}, format="json").status_code == 403


def test_anonymous_reads_nothing(anonymous_client, eu_only):
    assert anonymous_client.get(LOCKS).status_code in (401, 403)


def test_deployment_shows_effective_lock(acme_client, acme_chat, eu_only):
    response = acme_client.get(f"{DEPLOYMENTS}{acme_chat.pk}/")
    assert response.status_code == 200
    effective = response.data["effective_lock"]
    assert effective["allowed_jurisdictions"] == {"values": ["eu"], "from": [eu_only.pk]}
    assert effective["locks"] == [
        {"id": eu_only.pk, "level": "customer", "subject": "customer acme", "reason": "Acme contract: EU data only."}
    ]


def test_creating_deployment_outside_the_lock_is_rejected(acme_client, fleet, eu_only):
    response = acme_client.post(
        DEPLOYMENTS, {"name": "us-chat", "sku": "H100", "region_preference": ["aws/us-east-1"]}, format="json"
    )
    assert response.status_code == 400
    assert f"customer lock {eu_only.pk} on customer acme" in response.data["region_preference"][0]


def test_lock_history_endpoint(officer_client, eu_only):
    response = officer_client.get(f"{LOCKS}{eu_only.pk}/changes/")
    assert response.status_code == 200
    assert [row["action"] for row in response.data["results"]] == ["created"]


# The admin uses the same service.


def test_admin_save_needs_reason_and_rejects_widening(client, compliance_officer, acme_chat, eu_only):
    client.force_login(compliance_officer)
    add_url = reverse("admin:compliance_placementlock_add")
    form = {
        "deployment": acme_chat.pk,
        "allowed_regions": [region_pk("us-east-1")],
        "allowed_jurisdictions": "[]",
        "required_capabilities": "[]",
        "reason": "Latency.",
        "change_reason": "Requested by the customer.",
    }
    response = client.post(add_url, form)
    assert response.status_code == 200
    assert f"customer lock {eu_only.pk} on customer acme" in response.content.decode()
    assert not PlacementLock.objects.filter(deployment=acme_chat).exists()

    form["allowed_regions"] = [region_pk("eu-west-1")]
    response = client.post(add_url, {**form, "change_reason": ""})
    assert response.status_code == 200
    assert not PlacementLock.objects.filter(deployment=acme_chat).exists()
    response = client.post(add_url, form)
    assert response.status_code == 302
    lock = PlacementLock.objects.get(deployment=acme_chat)
    assert LockChange.objects.get(lock_pk=lock.pk).reason == "Requested by the customer."

    change_page = client.get(reverse("admin:compliance_placementlock_change", args=[lock.pk]))
    assert "aws/eu-west-1 (from lock" in change_page.content.decode()

    delete_url = reverse("admin:compliance_placementlock_delete", args=[lock.pk])
    assert 'name="change_reason"' in client.get(delete_url).content.decode()
    assert client.post(delete_url, {"post": "yes"}).status_code == 302
    assert PlacementLock.objects.filter(pk=lock.pk).exists()
    assert client.post(delete_url, {"post": "yes", "change_reason": "No longer needed."}).status_code == 302
    assert not PlacementLock.objects.filter(pk=lock.pk).exists()
    assert LockChange.objects.filter(lock_pk=lock.pk, action="deleted", reason="No longer needed.").exists()


def test_ops_cannot_change_lock_in_admin(client, ops, eu_only):
    client.force_login(ops)
    url = reverse("admin:compliance_placementlock_change", args=[eu_only.pk])
    response = client.post(url, {"customer": eu_only.customer_id, "reason": "Widened.", "change_reason": "x"})
    assert response.status_code == 403
    eu_only.refresh_from_db()
    assert eu_only.reason == "Acme contract: EU data only."


def region_pk(code: str) -> int:
    return Region.objects.get(code=code).pk


def test_platform_lock_through_the_api(officer_client, acme_client, fleet, acme_chat):
    created = officer_client.post(LOCKS, {"excluded_providers": ["gcp"], "reason": "No GCP contract."}, format="json")
    assert created.status_code == 201, created.data
    assert created.data["level"] == "platform"
    assert created.data["customer"] is None
    assert created.data["deployment"] is None
    # Customers read their own locks only, yet see the platform lock's part in their deployment's effective lock.
    assert acme_client.get(LOCKS).data["results"] == []
    effective = acme_client.get(f"{DEPLOYMENTS}{acme_chat.pk}/").data["effective_lock"]
    assert effective["excluded_providers"] == {"values": ["gcp"], "from": [created.data["id"]]}


def test_lock_change_requests_a_replan(officer_client, eu_only, monkeypatch, django_capture_on_commit_callbacks):
    """Replicas already running where a changed lock forbids move at a re-plan made right after the change."""
    from placements import reconcile

    requested = []
    monkeypatch.setattr(reconcile, "enqueue_replan", lambda: requested.append(True))
    url = f"{LOCKS}{eu_only.pk}/"

    with django_capture_on_commit_callbacks(execute=True):
        response = officer_client.patch(url, {"reason": "Narrower", "change_reason": "contract update"}, format="json")

    assert response.status_code == 200
    assert requested == [True]
