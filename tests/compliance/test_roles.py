"""Staff roles: ops runs the fleet, compliance changes locks, auditors read everything and change nothing."""

import getpass
import socket

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.urls import reverse

from compliance.models import AuditEvent, PlacementLock
from compliance.roles import AUDITOR, COMPLIANCE, OPS, ROLE_NAMES, ensure_roles, grant_role, revoke_role
from fleet.models import ClusterState, Outage
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

AUDIT = "/api/v1/audit-events/"
CLUSTERS = "/api/v1/clusters/"
OUTAGES = "/api/v1/outages/"
DEPLOYMENTS = "/api/v1/deployments/"
PREVIEW = "/api/v1/plans/preview/"
LOCKS = "/api/v1/locks/"


def staff_with_role(django_user_model, username: str, role: str | None):
    user = django_user_model.objects.create_user(username=username, is_staff=True)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def plain_staff(django_user_model):
    return staff_with_role(django_user_model, "sam", None)


@pytest.fixture
def lock(acme):
    return PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu"], reason="Contract clause 7.")


@pytest.fixture
def replans(monkeypatch):
    from tasks.tasks import plan_placements

    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: None)


def group_permissions(role: str) -> set[str]:
    group = Group.objects.get(name=role)
    return {
        f"{app}.{codename}" for app, codename in group.permissions.values_list("content_type__app_label", "codename")
    }


# The groups.


def test_roles_exist_after_migrate():
    assert set(Group.objects.filter(name__in=ROLE_NAMES).values_list("name", flat=True)) == set(ROLE_NAMES)


def test_ops_role_permissions():
    permissions = group_permissions(OPS)

    for name in ("fleet.change_cluster", "fleet.add_outage", "fleet.change_outage", "placements.add_placementplan"):
        assert name in permissions
    assert "placements.change_failoverrequest" in permissions
    assert "compliance.view_auditevent" in permissions
    assert not {"compliance.add_placementlock", "compliance.change_placementlock"} & permissions
    assert "compliance.delete_placementlock" not in permissions


def test_compliance_role_permissions():
    permissions = group_permissions(COMPLIANCE)

    for name in ("add", "change", "delete", "view"):
        assert f"compliance.{name}_placementlock" in permissions
    assert "fleet.change_cluster" not in permissions
    assert "placements.change_failoverrequest" not in permissions


def test_auditor_role_only_views():
    permissions = group_permissions(AUDITOR)

    assert "compliance.view_auditevent" in permissions
    assert "fleet.view_cluster" in permissions
    assert "placements.view_deployment" in permissions
    assert all(name.split(".")[1].startswith("view_") for name in permissions)
    assert not any(name.startswith("authtoken.") for name in permissions)


def test_ensure_roles_idempotent_and_resets_drift():
    ops_group = Group.objects.get(name=OPS)
    before = group_permissions(OPS)
    ops_group.permissions.add(*Group.objects.get(name=COMPLIANCE).permissions.filter(codename="change_placementlock"))

    ensure_roles()
    ensure_roles()

    assert Group.objects.filter(name__in=ROLE_NAMES).count() == 3
    assert group_permissions(OPS) == before


# Ops actions in the API.


def test_non_ops_staff_cannot_cordon(plain_staff, fleet):
    cluster = fleet.clusters["aws-use1-a"]

    response = token_client(plain_staff).post(f"{CLUSTERS}{cluster.pk}/cordon/", {"reason": "Test."}, format="json")

    assert response.status_code == 403
    assert "ops role" in str(response.data["detail"])
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    assert not AuditEvent.objects.filter(action__startswith="cluster.").exists()


def test_ops_can_cordon(ops_client, fleet, replans):
    cluster = fleet.clusters["aws-use1-a"]

    response = ops_client.post(f"{CLUSTERS}{cluster.pk}/cordon/", {"reason": "Kernel upgrade."}, format="json")

    assert response.status_code == 200, response.data
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.CORDONED


def test_non_ops_staff_cannot_declare_outage(plain_staff, fleet):
    body = {"scope": "cluster", "cluster": "aws-use1-a", "reason": "Test."}

    response = token_client(plain_staff).post(OUTAGES, body, format="json")

    assert response.status_code == 403
    assert not Outage.objects.exists()


def test_non_ops_staff_reads_outages(plain_staff, fleet):
    assert token_client(plain_staff).get(OUTAGES).status_code == 200


def test_non_ops_staff_cannot_preview_or_decide(plain_staff, fleet):
    client = token_client(plain_staff)

    assert client.post(PREVIEW, {}, format="json").status_code == 403
    assert client.post("/api/v1/failover-requests/999/approve/", {"reason": "x"}, format="json").status_code == 403
    assert client.post("/api/v1/failover-requests/999/reject/", {"reason": "x"}, format="json").status_code == 403


def test_ops_reaches_failover_decision(ops_client, fleet):
    # Past the permission check, the missing request gives 404 instead of 403.
    response = ops_client.post("/api/v1/failover-requests/999/approve/", {"reason": "x"}, format="json")

    assert response.status_code == 404


# The auditor.


def test_auditor_reads_audit_trail(auditor, ops, fleet):
    AuditEvent.objects.create(actor=ops, actor_label="ops", action="cluster.cordoned", subject_type="x", subject_id="1")
    client = token_client(auditor)

    listing = client.get(AUDIT)
    export = client.get(f"{AUDIT}export/")

    assert listing.status_code == 200
    assert [row["action"] for row in listing.data["results"]] == ["cluster.cordoned"]
    assert export.status_code == 200
    assert b"cluster.cordoned" in b"".join(export.streaming_content)


def test_staff_without_role_cannot_read_trail(plain_staff):
    response = token_client(plain_staff).get(AUDIT)

    assert response.status_code == 403


def test_auditor_changes_nothing_in_api(auditor, acme, fleet):
    client = token_client(auditor)
    cluster = fleet.clusters["aws-use1-a"]
    deployment = {"name": "audited", "customer": "acme", "sku": "H100", "desired_replicas": 1}

    assert client.get(DEPLOYMENTS).status_code == 200
    assert client.get(CLUSTERS).status_code == 200
    assert client.post(f"{CLUSTERS}{cluster.pk}/cordon/", {"reason": "x"}, format="json").status_code == 403
    assert client.post(DEPLOYMENTS, deployment, format="json").status_code == 403
    assert client.post("/api/v1/events", {"events": []}, format="json").status_code == 403
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    assert not acme.deployments.exists()
    assert not AuditEvent.objects.exists()


def test_roleless_staff_cannot_write_deployments(plain_staff, acme, acme_chat):
    client = token_client(plain_staff)
    created = {"name": "by-staff", "customer": "acme", "sku": "H100", "desired_replicas": 1}

    post = client.post(DEPLOYMENTS, created, format="json")
    patch = client.patch(f"{DEPLOYMENTS}{acme_chat.pk}/", {"desired_replicas": 7}, format="json")
    delete = client.delete(f"{DEPLOYMENTS}{acme_chat.pk}/")

    assert [post.status_code, patch.status_code, delete.status_code] == [403, 403, 403]
    assert "ops role (permission placements.add_deployment)" in post.json()["detail"]
    assert "placements.change_deployment" in patch.json()["detail"]
    acme_chat.refresh_from_db()
    assert acme_chat.desired_replicas != 7
    assert list(acme.deployments.values_list("name", flat=True)) == [acme_chat.name]
    assert client.get(f"{DEPLOYMENTS}{acme_chat.pk}/").status_code == 200


def test_ops_writes_customer_deployments(ops_client, acme, acme_chat):
    created = {"name": "by-ops", "customer": "acme", "sku": "H100", "desired_replicas": 1}

    assert ops_client.post(DEPLOYMENTS, created, format="json").status_code == 201
    response = ops_client.patch(f"{DEPLOYMENTS}{acme_chat.pk}/", {"desired_replicas": 3}, format="json")
    assert response.status_code == 200
    acme_chat.refresh_from_db()
    assert acme_chat.desired_replicas == 3


def test_auditor_cannot_delete_deployment(auditor, acme_chat):
    deployment = acme_chat
    response = token_client(auditor).delete(f"{DEPLOYMENTS}{deployment.pk}/")

    assert response.status_code == 403
    assert type(deployment).objects.filter(pk=deployment.pk).exists()


# Locks in the API.


def test_ops_cannot_change_lock_in_api(ops_client, lock):
    patch = ops_client.patch(f"{LOCKS}{lock.pk}/", {"reason": "Widened.", "change_reason": "x"}, format="json")
    delete = ops_client.delete(f"{LOCKS}{lock.pk}/?change_reason=Cleanup")

    assert patch.status_code == 403
    assert delete.status_code == 403
    assert ops_client.get(f"{LOCKS}{lock.pk}/").status_code == 200
    lock.refresh_from_db()
    assert lock.reason == "Contract clause 7."


def test_auditor_cannot_delete_lock_in_api(auditor, lock):
    response = token_client(auditor).delete(f"{LOCKS}{lock.pk}/?change_reason=Cleanup")

    assert response.status_code == 403
    assert PlacementLock.objects.filter(pk=lock.pk).exists()


def test_compliance_role_deletes_lock_in_api(django_user_model, lock):
    officer = staff_with_role(django_user_model, "cora", COMPLIANCE)

    response = token_client(officer).delete(f"{LOCKS}{lock.pk}/?change_reason=Contract ended.")

    assert response.status_code == 204
    assert not PlacementLock.objects.filter(pk=lock.pk).exists()


# The admin.


def test_ops_cannot_change_lock_in_admin(client, ops, lock):
    client.force_login(ops)
    url = reverse("admin:compliance_placementlock_change", args=[lock.pk])

    reason = {"change_reason": "Widened by ops."}
    response = client.post(url, {"allowed_jurisdictions": '["us"]', "reason": "Widened.", **reason})
    delete_url = reverse("admin:compliance_placementlock_delete", args=[lock.pk])
    delete = client.post(delete_url, {"post": "yes", **reason})
    add = client.get(reverse("admin:compliance_placementlock_add"))

    assert response.status_code == 403
    assert delete.status_code == 403
    assert add.status_code == 403
    lock.refresh_from_db()
    assert lock.allowed_jurisdictions == ["eu"]
    assert lock.reason == "Contract clause 7."
    assert not AuditEvent.objects.exists()


def test_compliance_role_may_change_lock_in_admin(rf, django_user_model, lock):
    from django.contrib import admin

    officer = staff_with_role(django_user_model, "cora", COMPLIANCE)
    request = rf.get("/")
    request.user = officer
    lock_admin = admin.site._registry[PlacementLock]

    assert lock_admin.has_change_permission(request, lock)
    assert lock_admin.has_add_permission(request)
    assert lock_admin.has_delete_permission(request, lock)


def test_auditor_reads_admin_but_changes_nothing(client, auditor, lock, fleet):
    client.force_login(auditor)
    cluster = fleet.clusters["aws-use1-a"]
    changelist = reverse("admin:fleet_cluster_changelist")

    assert client.get(reverse("admin:compliance_auditevent_changelist")).status_code == 200
    assert client.get(reverse("admin:compliance_placementlock_change", args=[lock.pk])).status_code == 200
    page = client.get(changelist)
    assert page.status_code == 200
    assert b"cordon_clusters" not in page.content
    action = client.post(
        changelist, {"action": "cordon_clusters", "_selected_action": [cluster.pk], "confirm": "1", "reason": "x"}
    )
    edit_url = reverse("admin:compliance_placementlock_change", args=[lock.pk])
    edit = client.post(edit_url, {"reason": "Edited.", "change_reason": "Audit test."})
    preview = client.post(reverse("admin:placements_placementplan_preview"), {})

    assert action.status_code in (200, 302)
    assert edit.status_code == 403
    assert preview.status_code == 403
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    lock.refresh_from_db()
    assert lock.reason == "Contract clause 7."


def test_ops_sees_cluster_actions_in_admin(client, ops, fleet):
    client.force_login(ops)

    page = client.get(reverse("admin:fleet_cluster_changelist"))

    assert b"cordon_clusters" in page.content


# Granting roles.


def test_grant_role_command(django_user_model, capsys):
    user = django_user_model.objects.create_user(username="nina")

    call_command("grant_role", "nina", "auditor", "--reason", "Quarterly review.")

    user.refresh_from_db()
    assert user.is_staff
    assert user.groups.filter(name=AUDITOR).exists()
    assert user.has_perm("compliance.view_auditevent")
    assert "nina now has the auditor role" in capsys.readouterr().out
    event = AuditEvent.objects.get(action="user.role_granted")
    assert event.actor_label == f"{getpass.getuser()}@{socket.gethostname()} (manage.py grant_role)"
    assert event.subject_id == str(user.pk)
    assert event.reason == "Quarterly review."
    assert event.before == {"roles": [], "is_staff": False}
    assert event.after == {"roles": ["auditor"], "is_staff": True}


def test_grant_role_twice_records_once(django_user_model):
    user = django_user_model.objects.create_user(username="nina")

    assert grant_role(user, OPS, actor="test", reason="On call.")
    assert not grant_role(user, OPS, actor="test", reason="On call.")

    assert AuditEvent.objects.filter(action="user.role_granted").count() == 1


def test_revoke_role_command(django_user_model):
    user = staff_with_role(django_user_model, "olga", OPS)

    call_command("grant_role", "olga", "ops", "--revoke")

    assert not user.groups.filter(name=OPS).exists()
    assert AuditEvent.objects.get(action="user.role_revoked").after == {"roles": [], "is_staff": True}


def test_grant_role_unknown_user():
    with pytest.raises(CommandError, match="'ghost' not found"):
        call_command("grant_role", "ghost", "ops")


def test_grant_role_unknown_role(django_user_model):
    user = django_user_model.objects.create_user(username="nina")

    with pytest.raises(ValueError, match="Unknown role 'root'"):
        grant_role(user, "root", actor="test", reason="x")
    assert not user.groups.exists()


def test_revoking_last_role_unstaffs_customer_member(acme_member):
    grant_role(acme_member, OPS, actor="test", reason="Helps on call.")
    revoke_role(acme_member, OPS, actor="test", reason="Back to customer work.")

    acme_member.refresh_from_db()
    assert acme_member.is_staff is False
    event = AuditEvent.objects.get(action="user.role_revoked")
    assert event.after == {"roles": [], "is_staff": False}


def test_revoking_last_role_keeps_staff_of_employee(django_user_model):
    user = staff_with_role(django_user_model, "emma", OPS)

    revoke_role(user, OPS, actor="test", reason="Moved teams.")

    user.refresh_from_db()
    assert user.is_staff is True
