"""The admin console: every page renders, and deployment and lock edits validate and audit like the API."""

import pytest
from django.contrib import admin
from django.contrib.admin import helpers
from django.test import RequestFactory
from django.urls import reverse

from compliance.models import AuditEvent, PlacementLock
from fleet import operations
from fleet.alerts import raise_alert
from fleet.models import Alert, Cluster, ClusterState, Outage
from placements.models import (
    Deployment,
    DeploymentCondition,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    PlanStatus,
    PlanTrigger,
)
from placements.tasks import execute_plan
from tasks.tasks import plan_placements

REGISTERED = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def populated(applied_plan, acme, ops):
    """Rows in every MCM table, so that changelists render their columns and filters."""
    lock = PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu"], reason="Contract clause 7.")
    AuditEvent.objects.create(actor=ops, actor_label="ops", action="lock.created", subject_type="x", subject_id="1")
    outage = Outage.objects.create(
        scope="cluster",
        cluster=applied_plan.assignments.first().cluster,
        source="declared",
        reason="x",
        declared_by="ops",
    )
    raise_alert("outage.open", "critical", outage, "Declared outage.")
    request = FailoverRequest.objects.create(
        deployment=applied_plan.assignments.first().deployment, kind="failover", replicas=1, reason="lost"
    )
    request.clusters.set([outage.cluster])
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
        "/admin/fleet/cluster/?health__exact=down",
        "/admin/fleet/outage/?open=yes",
        "/admin/fleet/outage/?open=no&scope__exact=region",
        "/admin/fleet/alert/?open=yes",
        "/admin/fleet/alert/?open=no",
        "/admin/placements/failoverrequest/?status__exact=pending",
        "/admin/placements/deployment/?condition__exact=failover_blocked",
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
        "spread_mode": "hard",
        "failover_policy": "automatic",
        "approval_timeout_s": 900,
        "failback_policy": "automatic",
        "region_preferences-TOTAL_FORMS": 0,
        "region_preferences-INITIAL_FORMS": 0,
        "demand_origins-TOTAL_FORMS": 0,
        "demand_origins-INITIAL_FORMS": 0,
        "autoscaling-TOTAL_FORMS": 0,
        "autoscaling-INITIAL_FORMS": 0,
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
    form = lock_form(acme, reason="GDPR data residency.", change_reason="Signed the EU contract.")
    response = superuser_client.post(admin_url(PlacementLock, "add"), form)
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="lock.created")
    assert event.reason == "Signed the EU contract."
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


# Operator controls: every action requests a reason on a confirmation page and goes through fleet.operations.


@pytest.fixture
def replans(monkeypatch) -> list[dict]:
    """Record each re-plan the controls enqueue, with its arguments, instead of sending it to the broker."""
    requested: list[dict] = []
    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: requested.append(kwargs))
    return requested


def run_action(client, model, action: str, rows, **extra):
    """Post an admin action for ``rows`` from the changelist; ``extra`` adds the confirmation page's fields."""
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [row.pk for row in rows], **extra}
    if not extra:
        data["index"] = 0
    return client.post(admin_url(model, "changelist"), data)


@pytest.mark.django_db
def test_cluster_changelist_shows_health(superuser_client, fleet):
    Cluster.objects.filter(name="gcp-usw4-a").update(health="down")

    response = superuser_client.get(admin_url(Cluster, "changelist"), {"health__exact": "down"})

    assert response.status_code == 200
    assert [cluster.name for cluster in response.context["cl"].result_list] == ["gcp-usw4-a"]
    assert "Down" in response.content.decode()


@pytest.mark.django_db
def test_cluster_state_is_read_only_on_change_page(superuser_client, fleet):
    cluster = fleet.clusters["aws-use1-a"]

    response = superuser_client.get(admin_url(Cluster, "change", cluster.pk))

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "state" not in form.fields
    assert "health" not in form.fields


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["cordon_clusters", "uncordon_clusters", "drain_clusters"])
def test_cluster_action_asks_for_reason(superuser_client, fleet, action):
    cluster = fleet.clusters["aws-use1-a"]

    response = run_action(superuser_client, Cluster, action, [cluster])

    assert response.status_code == 200
    assert "reason" in response.context["form"].fields
    assert "aws-use1-a" in response.content.decode()
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE


@pytest.mark.django_db
def test_cluster_action_without_reason_rejected(superuser_client, fleet):
    cluster = fleet.clusters["aws-use1-a"]

    response = run_action(superuser_client, Cluster, "drain_clusters", [cluster], confirm="yes", reason=" ")

    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert 'id="reason-missing"' in response.content.decode()
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    # The page's dry-run preview of the drain is the only audited event.
    assert not AuditEvent.objects.exclude(action="plan.dry_run").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("action", "name", "expected", "audit"),
    [
        ("cordon_clusters", "aws-use1-a", ClusterState.CORDONED, "cluster.cordoned"),
        ("uncordon_clusters", "aws-use1-b", ClusterState.ACTIVE, "cluster.uncordoned"),
        ("drain_clusters", "aws-use1-a", ClusterState.DRAINING, "cluster.draining"),
    ],
)
def test_cluster_action_with_reason_changes_state(
    superuser_client, superuser, fleet, replans, django_capture_on_commit_callbacks, action, name, expected, audit
):
    cluster = fleet.clusters[name]

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(superuser_client, Cluster, action, [cluster], confirm="yes", reason="Maintenance.")

    assert response.status_code == 302
    cluster.refresh_from_db()
    assert cluster.state == expected
    event = AuditEvent.objects.get(action=audit)
    assert event.actor == superuser
    assert event.reason == "Maintenance."
    assert replans == [{"trigger": "operator"}]


@pytest.mark.django_db
def test_cluster_action_reports_invalid_transition(superuser_client, fleet, replans):
    cordoned, active = fleet.clusters["aws-use1-b"], fleet.clusters["aws-use1-a"]

    response = run_action(
        superuser_client, Cluster, "cordon_clusters", [cordoned, active], confirm="yes", reason="Maintenance."
    )

    assert response.status_code == 302
    page = superuser_client.get(response.url)
    text = page.content.decode()
    assert "aws-use1-b is cordoned" in text
    assert "Cordoned: 1 of 2." in text
    active.refresh_from_db()
    assert active.state == ClusterState.CORDONED
    assert AuditEvent.objects.filter(action="cluster.cordoned").count() == 1


def outage_form(**overrides) -> dict:
    return {"scope": "provider", "cluster": "", "region": "", "provider": "", "reason": "", **overrides}


@pytest.mark.django_db
def test_admin_declares_outage(superuser_client, superuser, fleet, replans, django_capture_on_commit_callbacks):
    form = outage_form(
        provider=fleet.aws.pk, reason="AWS status page: us-east-1 and eu-west-1 down.", confirm="Declare the outage"
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = superuser_client.post(admin_url(Outage, "add"), form)

    assert response.status_code == 302
    outage = Outage.objects.get()
    assert outage.provider == fleet.aws
    assert outage.source == "declared"
    assert outage.declared_by == superuser.username
    assert AuditEvent.objects.get(action="outage.declared").actor == superuser
    assert Alert.objects.get(kind="outage.open").resolved_at is None
    assert replans == [{"trigger": "operator"}]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"reason": ""}, "reason", "required"),
        ({"scope": "cluster", "reason": "x"}, "cluster", "cluster is missing"),
        ({"scope": "region", "reason": "x"}, "region", "region is missing"),
    ],
)
def test_admin_outage_without_reason_or_target_rejected(superuser_client, fleet, overrides, field, message):
    form = outage_form(provider=fleet.aws.pk, **overrides)

    response = superuser_client.post(admin_url(Outage, "add"), form)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in str(errors[field])
    assert not Outage.objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_admin_outage_with_target_of_other_scope_rejected(superuser_client, fleet):
    form = outage_form(provider=fleet.aws.pk, cluster=fleet.clusters["aws-use1-a"].pk, reason="x")

    response = superuser_client.post(admin_url(Outage, "add"), form)

    assert response.status_code == 200
    assert "does not apply to a provider outage" in str(response.context["adminform"].form.errors["cluster"])
    assert not Outage.objects.exists()


@pytest.mark.django_db
def test_admin_second_open_outage_rejected(superuser_client, ops, fleet, replans):
    operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="first")

    response = superuser_client.post(admin_url(Outage, "add"), outage_form(provider=fleet.aws.pk, reason="second"))

    assert response.status_code == 200
    assert "already has an open declared outage" in str(response.context["adminform"].form.errors["provider"])
    assert Outage.objects.count() == 1


@pytest.mark.django_db
def test_admin_outage_cannot_be_edited(superuser_client, ops, fleet, replans):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="first")

    response = superuser_client.post(admin_url(Outage, "change", outage.pk), {"reason": "rewritten"})

    assert response.status_code == 403
    assert Outage.objects.get(pk=outage.pk).reason == "first"


@pytest.mark.django_db
def test_admin_clears_outage_with_reason(superuser_client, superuser, ops, fleet, replans):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    rejected = run_action(superuser_client, Outage, "clear_outages", [outage], confirm="yes", reason="")
    assert rejected.status_code == 200
    assert Outage.objects.get(pk=outage.pk).is_open

    response = run_action(superuser_client, Outage, "clear_outages", [outage], confirm="yes", reason="Recovered.")

    assert response.status_code == 302
    outage.refresh_from_db()
    assert not outage.is_open
    assert outage.cleared_by == superuser.username
    assert AuditEvent.objects.get(action="outage.cleared").reason == "Recovered."
    assert Alert.objects.get(kind="outage.open").resolved_at is not None


@pytest.mark.django_db
def test_alert_admin_is_read_only(superuser_client, fleet):
    alert = raise_alert("cluster.down", "critical", fleet.clusters["gcp-usw4-a"], "No heartbeat.")

    response = superuser_client.post(admin_url(Alert, "change", alert.pk), {"message": "forged"})

    assert response.status_code == 403
    assert Alert.objects.get(pk=alert.pk).message == "No heartbeat."


# Failover requests.


@pytest.fixture
def failover_requests(fleet, acme_chat, globex_search):
    lost = [fleet.clusters["aws-use1-a"]]
    done = FailoverRequest.objects.create(
        deployment=globex_search, kind=FailoverKind.FAILOVER, status=FailoverStatus.APPROVED, replicas=1, reason="lost"
    )
    pending = FailoverRequest.objects.create(
        deployment=acme_chat, kind=FailoverKind.FAILOVER, replicas=2, reason="aws-use1-a lost"
    )
    for request in (done, pending):
        request.clusters.set(lost)
    return pending, done


@pytest.mark.django_db
def test_failover_requests_list_pending_first(superuser_client, failover_requests):
    pending, done = failover_requests

    response = superuser_client.get(admin_url(FailoverRequest, "changelist"))

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [pending, done]


@pytest.mark.django_db
@pytest.mark.parametrize(("action", "status"), [("approve_requests", "approved"), ("reject_requests", "rejected")])
def test_admin_decides_failover_with_reason(
    superuser_client, superuser, failover_requests, replans, django_capture_on_commit_callbacks, action, status
):
    pending, _done = failover_requests

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(
            superuser_client, FailoverRequest, action, [pending], confirm="yes", reason="Checked with acme."
        )

    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == status
    assert pending.decided_by == superuser
    assert pending.decision_reason == "Checked with acme."
    assert AuditEvent.objects.get(action=f"failover.{status}").actor == superuser
    assert replans == [{"trigger": "approval"}]


@pytest.mark.django_db
def test_admin_failover_decision_without_reason_rejected(superuser_client, failover_requests):
    pending, _done = failover_requests

    response = run_action(superuser_client, FailoverRequest, "approve_requests", [pending], confirm="yes", reason="")

    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    pending.refresh_from_db()
    assert pending.status == FailoverStatus.PENDING


@pytest.mark.django_db
def test_admin_reports_decided_request(superuser_client, failover_requests):
    _pending, done = failover_requests

    response = run_action(superuser_client, FailoverRequest, "reject_requests", [done], confirm="yes", reason="No.")

    page = superuser_client.get(response.url)
    assert f"request {done.pk} is approved" in page.content.decode()
    done.refresh_from_db()
    assert done.status == FailoverStatus.APPROVED


@pytest.mark.django_db
def test_failover_request_cannot_be_edited(superuser_client, failover_requests):
    pending, _done = failover_requests

    response = superuser_client.post(admin_url(FailoverRequest, "change", pending.pk), {"status": "approved"})

    assert response.status_code == 403
    pending.refresh_from_db()
    assert pending.status == FailoverStatus.PENDING


# Deployments: condition, shortfall and failover policy.


@pytest.mark.django_db
def test_deployment_page_shows_condition_and_policy(superuser_client, applied_plan, acme_chat):
    Deployment.objects.filter(pk=acme_chat.pk).update(
        condition=DeploymentCondition.FAILOVER_BLOCKED, condition_reason="No cluster in the locked region is up."
    )

    response = superuser_client.get(admin_url(Deployment, "change", acme_chat.pk))

    text = response.content.decode()
    assert "No cluster in the locked region is up." in text
    assert "failover_policy" in response.context["adminform"].form.fields
    assert "approval_timeout_s" in response.context["adminform"].form.fields


@pytest.mark.django_db
def test_admin_sets_failover_policy(superuser_client, superuser, acme_chat, fleet):
    form = deployment_form(
        acme_chat.customer,
        fleet.h100,
        name="chat",
        desired_replicas=3,
        max_replicas=6,
        failover_policy="approval",
        approval_timeout_s=600,
        spread_mode="soft",
    )

    response = superuser_client.post(admin_url(Deployment, "change", acme_chat.pk), form)

    assert response.status_code == 302
    acme_chat.refresh_from_db()
    assert acme_chat.failover_policy == "approval"
    assert acme_chat.approval_timeout_s == 600
    assert acme_chat.spread_mode == "soft"
    event = AuditEvent.objects.get(action="deployment.policy_updated")
    assert event.actor == superuser
    assert event.after["approval_timeout_s"] == 600


@pytest.mark.django_db
def test_admin_rejects_bad_approval_timeout(superuser_client, acme_chat, fleet):
    form = deployment_form(acme_chat.customer, fleet.h100, name="chat", max_replicas=6, approval_timeout_s=999999)

    response = superuser_client.post(admin_url(Deployment, "change", acme_chat.pk), form)

    assert response.status_code == 200
    assert "999999 is out of range" in response.content.decode()
    acme_chat.refresh_from_db()
    assert acme_chat.approval_timeout_s == 900


# Re-plan preview.


PREVIEW_URL = "/admin/placements/placementplan/preview/"
APPLY_URL = "/admin/placements/placementplan/apply-replan/"


@pytest.mark.django_db
def test_plan_changelist_links_preview(superuser_client, applied_plan):
    response = superuser_client.get(admin_url(PlacementPlan, "changelist"))

    assert PREVIEW_URL in response.content.decode()


@pytest.mark.django_db
def test_preview_page_renders(superuser_client, fleet):
    response = superuser_client.get(PREVIEW_URL)

    assert response.status_code == 200
    assert "exclude_provider" in response.context["form"].fields
    assert response.context["preview"] is None


@pytest.mark.django_db
def test_preview_shows_diff_without_applying(superuser_client, fleet, applied_plan):
    response = superuser_client.post(PREVIEW_URL, {"exclude_provider": "aws"})

    assert response.status_code == 200
    preview = response.context["preview"]
    assert preview["by_provider"]["aws"] == -3
    dry_run = PlacementPlan.objects.get(pk=preview["plan_id"])
    assert dry_run.status == PlanStatus.DRY_RUN
    text = response.content.decode()
    assert 'id="preview-unmet-by-tier"' in text
    assert "<td>aws</td><td>-3</td>" in text
    assert PlacementPlan.objects.get(status=PlanStatus.APPLIED) == applied_plan


@pytest.mark.django_db
def test_preview_rejects_unknown_provider(superuser_client, fleet):
    response = superuser_client.post(PREVIEW_URL, {"exclude_provider": "azure"})

    assert response.status_code == 200
    assert response.context["form"].errors["exclude_provider"]
    assert not PlacementPlan.objects.exists()


@pytest.mark.django_db
def test_apply_replan_button(
    monkeypatch, superuser_client, superuser, fleet, applied_plan, django_capture_on_commit_callbacks
):
    executions: list[tuple] = []
    monkeypatch.setattr(execute_plan, "apply_async", lambda *args, **kwargs: executions.append(args))

    with django_capture_on_commit_callbacks(execute=True):
        response = superuser_client.post(APPLY_URL, {"confirm": "Apply the re-plan"})

    plan = PlacementPlan.objects.get(status=PlanStatus.APPLIED)
    assert response.status_code == 302
    assert response.url == admin_url(PlacementPlan, "change", plan.pk)
    assert plan.trigger == PlanTrigger.OPERATOR
    assert plan.pk != applied_plan.pk
    assert executions == [((plan.pk,),)]
    assert AuditEvent.objects.get(action="plan.applied").actor == superuser


@pytest.mark.django_db
def test_apply_replan_needs_post(superuser_client, applied_plan):
    response = superuser_client.get(APPLY_URL)

    assert response.status_code == 302
    assert PlacementPlan.objects.get(status=PlanStatus.APPLIED) == applied_plan


@pytest.mark.django_db
def test_customer_cannot_open_preview(client, acme_member):
    client.force_login(acme_member)

    response = client.get(PREVIEW_URL)

    assert response.status_code == 302
    assert "/admin/login/" in response.url


@pytest.mark.django_db
def test_plan_list_rounds_solver_figures(superuser_client, applied_plan):
    PlacementPlan.objects.filter(pk=applied_plan.pk).update(
        objective=46559.55742408179, solve_seconds=0.18931781700030115
    )

    html = superuser_client.get("/admin/placements/placementplan/").content.decode()

    assert "46,559.56" in html
    assert "0.19" in html
    assert "46559.557" not in html
