"""The admin console: every page renders, and deployment and lock edits validate and audit like the API."""

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from compliance.models import AuditEvent, PlacementLock
from placements.models import Deployment

REGISTERED = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def populated(applied_plan, acme, ops):
    """Rows in every MCM table, so that changelists render their columns and filters."""
    lock = PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu"], reason="Contract clause 7.")
    AuditEvent.objects.create(actor=ops, actor_label="ops", action="lock.created", subject_type="x", subject_id="1")
    return lock


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "model_admin"), REGISTERED, ids=[m._meta.label for m, _ in REGISTERED])
def test_changelist_renders(superuser_client, populated, model, model_admin):
    response = superuser_client.get(admin_url(model, "changelist"))
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "model_admin"), REGISTERED, ids=[m._meta.label for m, _ in REGISTERED])
def test_add_page_renders(superuser_client, superuser, model, model_admin):
    request = RequestFactory().get("/")
    request.user = superuser
    response = superuser_client.get(admin_url(model, "add"))
    expected = 200 if model_admin.has_add_permission(request) else 403
    assert response.status_code == expected


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/admin/fleet/cluster/?free=none",
        "/admin/fleet/cluster/?free=some",
        "/admin/fleet/cluster/?free=no_capacity",
        "/admin/fleet/cluster/?state__exact=cordoned",
        "/admin/fleet/clustercapacity/?free=none",
        "/admin/placements/deployment/?placement=short",
        "/admin/placements/deployment/?placement=placed",
        "/admin/placements/deployment/?placement=unplanned",
        "/admin/placements/deploymentoutcome/?short=yes",
        "/admin/compliance/auditevent/?action=lock.created",
    ],
)
def test_filtered_changelist_renders(superuser_client, populated, path):
    response = superuser_client.get(path)
    assert response.status_code == 200


@pytest.mark.django_db
def test_cluster_changelist_shows_free_gpus_by_sku(superuser_client, fleet):
    response = superuser_client.get(admin_url(fleet.clusters["aws-use1-a"], "changelist"))
    assert "H100: 12/16" in response.content.decode()


@pytest.mark.django_db
def test_deployment_change_page_shows_explanation(superuser_client, applied_plan, acme_chat):
    response = superuser_client.get(admin_url(Deployment, "change", acme_chat.pk))
    assert response.status_code == 200
    assert "wrong SKU" in response.content.decode()


@pytest.mark.django_db
def test_plan_change_page_links_assignments_by_region(superuser_client, applied_plan, fleet):
    response = superuser_client.get(admin_url(applied_plan, "change", applied_plan.pk))
    assert response.status_code == 200
    assert f"cluster__region__id__exact={fleet.eu_west.pk}" in response.content.decode()


@pytest.mark.django_db
def test_assignments_filter_by_plan_and_region(superuser_client, applied_plan, fleet):
    url = admin_url(applied_plan.assignments.model, "changelist")
    response = superuser_client.get(url, {"plan": applied_plan.pk, "cluster__region__id__exact": fleet.eu_west.pk})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list.values_list("cluster__name", flat=True)) == ["aws-euw1-a"]


# Deployment forms run the services' validation and write audit events.


def deployment_form(customer, sku, **overrides) -> dict:
    form = {
        "customer": customer.pk,
        "name": "batch",
        "sku": sku.pk,
        "gpus_per_replica": 1,
        "min_replicas": 1,
        "desired_replicas": 2,
        "max_replicas": 3,
        "min_providers": 1,
        "min_regions": 1,
        "region_preferences-TOTAL_FORMS": 0,
        "region_preferences-INITIAL_FORMS": 0,
        "demand_origins-TOTAL_FORMS": 0,
        "demand_origins-INITIAL_FORMS": 0,
    }
    return {**form, **overrides}


@pytest.mark.django_db
def test_admin_creates_audited_deployment(superuser_client, superuser, acme, fleet):
    form = deployment_form(
        acme,
        fleet.h100,
        **{
            "region_preferences-TOTAL_FORMS": 1,
            "region_preferences-0-rank": 0,
            "region_preferences-0-region": fleet.us_west.pk,
            "demand_origins-TOTAL_FORMS": 1,
            "demand_origins-0-name": "Tokyo",
            "demand_origins-0-latitude": 35.7,
            "demand_origins-0-longitude": 139.7,
            "demand_origins-0-share": 1,
        },
    )
    response = superuser_client.post(admin_url(Deployment, "add"), form)
    assert response.status_code == 302
    deployment = Deployment.objects.get(name="batch")
    assert deployment.region_preferences.get().region == fleet.us_west
    assert deployment.demand_origins.get().name == "Tokyo"
    event = AuditEvent.objects.get(action="deployment.created")
    assert event.actor == superuser


@pytest.mark.django_db
def test_admin_rejects_desired_above_max(superuser_client, acme, fleet):
    response = superuser_client.post(
        admin_url(Deployment, "add"), deployment_form(acme, fleet.h100, desired_replicas=9)
    )
    assert response.status_code == 200
    assert "9 is above max_replicas 3" in response.content.decode()
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_admin_rejects_alternative_equal_to_primary(superuser_client, acme, fleet):
    form = deployment_form(acme, fleet.h100, alternative_skus=[fleet.h100.pk])
    response = superuser_client.post(admin_url(Deployment, "add"), form)
    assert response.status_code == 200
    assert "is the primary SKU" in response.content.decode()
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_admin_rejects_shares_above_one(superuser_client, acme, fleet):
    origins = {"demand_origins-TOTAL_FORMS": 2}
    for index, share in enumerate([0.7, 0.6]):
        origins |= {
            f"demand_origins-{index}-name": f"city{index}",
            f"demand_origins-{index}-latitude": 0,
            f"demand_origins-{index}-longitude": 0,
            f"demand_origins-{index}-share": share,
        }
    response = superuser_client.post(admin_url(Deployment, "add"), deployment_form(acme, fleet.h100, **origins))
    assert response.status_code == 200
    assert "Shares sum to 1.3" in response.content.decode()
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_admin_update_writes_audit_event(superuser_client, acme_chat, fleet):
    form = deployment_form(acme_chat.customer, fleet.h100, name="chat", desired_replicas=3, max_replicas=4)
    form["alternative_skus"] = [fleet.l4.pk]
    response = superuser_client.post(admin_url(Deployment, "change", acme_chat.pk), form)
    assert response.status_code == 302
    acme_chat.refresh_from_db()
    assert acme_chat.max_replicas == 4
    assert acme_chat.region_preferences.count() == 0
    event = AuditEvent.objects.get(action="deployment.updated")
    assert event.before["max_replicas"] == 6


@pytest.mark.django_db
def test_admin_delete_writes_audit_event(superuser_client, acme_chat):
    response = superuser_client.post(admin_url(Deployment, "delete", acme_chat.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Deployment.objects.exists()
    assert AuditEvent.objects.filter(action="deployment.deleted").count() == 1


# Audit events are read-only. Locks need a reason, and their changes are audited.


@pytest.mark.django_db
def test_audit_event_cannot_be_changed(superuser_client, populated):
    event = AuditEvent.objects.get(action="lock.created")
    response = superuser_client.post(admin_url(AuditEvent, "change", event.pk), {"action": "forged"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.action == "lock.created"


@pytest.mark.django_db
def test_audit_event_cannot_be_deleted(superuser_client, populated):
    event = AuditEvent.objects.get(action="lock.created")
    response = superuser_client.post(admin_url(AuditEvent, "delete", event.pk), {"post": "yes"})
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def lock_form(customer, **overrides) -> dict:
    return {"customer": customer.pk, "allowed_jurisdictions": '["eu"]', "required_capabilities": "[]", **overrides}


@pytest.mark.django_db
def test_lock_without_reason_is_rejected(superuser_client, acme):
    response = superuser_client.post(admin_url(PlacementLock, "add"), lock_form(acme, reason=""))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["reason"]
    assert not PlacementLock.objects.exists()


@pytest.mark.django_db
def test_lock_creation_writes_audit_event(superuser_client, acme):
    response = superuser_client.post(admin_url(PlacementLock, "add"), lock_form(acme, reason="GDPR data residency."))
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="lock.created")
    assert event.reason == "GDPR data residency."
    assert event.after["allowed_jurisdictions"] == ["eu"]


@pytest.mark.django_db
def test_compliance_officer_can_open_lock_admin(client, compliance_officer):
    client.force_login(compliance_officer)
    response = client.get(admin_url(PlacementLock, "add"))
    assert response.status_code == 200


@pytest.mark.django_db
def test_ops_cannot_open_lock_admin(client, ops):
    client.force_login(ops)
    response = client.get(admin_url(PlacementLock, "add"))
    assert response.status_code == 403
