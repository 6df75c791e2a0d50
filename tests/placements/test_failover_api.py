"""Failover in the API: requests and staff decisions, deployments' failover policy, condition and shortfall."""

from datetime import timedelta

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from placements import failover
from placements.api import decision_error_detail
from placements.models import (
    Deployment,
    DeploymentCondition,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
)
from tasks.tasks import plan_placements

pytestmark = pytest.mark.django_db

REQUESTS = "/api/v1/failover-requests/"
DEPLOYMENTS = "/api/v1/deployments/"


@pytest.fixture
def replans(monkeypatch) -> list[dict]:
    """Record each re-plan a decision enqueues, with its arguments, instead of sending it to the broker."""
    requested: list[dict] = []
    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: requested.append(kwargs))
    return requested


def make_request(deployment, *, clusters, kind=FailoverKind.FAILOVER, status=FailoverStatus.PENDING, replicas=2):
    request = FailoverRequest.objects.create(
        deployment=deployment,
        kind=kind,
        status=status,
        replicas=replicas,
        reason=f"{', '.join(cluster.name for cluster in clusters)} lost",
        deadline=timezone.now() + timedelta(seconds=deployment.approval_timeout_s),
    )
    request.clusters.set(clusters)
    return request


@pytest.fixture
def requests(fleet, acme_chat, globex_search):
    """A pending failover of acme/chat, an approved one of globex/search and an old rejected one of acme/chat."""
    lost = [fleet.clusters["aws-use1-a"]]
    pending = make_request(acme_chat, clusters=lost)
    approved = make_request(globex_search, clusters=[fleet.clusters["gcp-usw4-a"]], status=FailoverStatus.APPROVED)
    rejected = make_request(acme_chat, clusters=lost, kind=FailoverKind.FAILBACK, status=FailoverStatus.REJECTED)
    return pending, approved, rejected


def ids(response) -> list[int]:
    assert response.status_code == 200
    return sorted(row["id"] for row in response.data["results"])


# Reading requests.


def test_staff_sees_every_request(ops_client, requests):
    assert ids(ops_client.get(REQUESTS)) == sorted(request.pk for request in requests)


def test_customer_sees_own_requests_only(acme_client, globex_client, requests):
    pending, approved, rejected = requests

    assert ids(acme_client.get(REQUESTS)) == sorted([pending.pk, rejected.pk])
    assert ids(globex_client.get(REQUESTS)) == [approved.pk]
    assert globex_client.get(f"{REQUESTS}{pending.pk}/").status_code == 404


def test_request_fields(acme_client, requests):
    pending, _approved, _rejected = requests

    response = acme_client.get(f"{REQUESTS}{pending.pk}/")

    assert response.status_code == 200
    assert response.data["deployment_name"] == "acme/chat"
    assert response.data["kind"] == "failover"
    assert response.data["status"] == "pending"
    assert response.data["clusters"] == ["aws-use1-a"]
    assert response.data["replicas"] == 2
    assert response.data["deadline"] is not None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "pending"}, ["pending"]),
        ({"kind": "failback"}, ["rejected"]),
        ({"status": "approved", "kind": "failover"}, ["approved"]),
    ],
)
def test_requests_filter(ops_client, requests, params, expected):
    by_name = dict(zip(["pending", "approved", "rejected"], requests, strict=True))

    assert ids(ops_client.get(REQUESTS, params)) == sorted(by_name[name].pk for name in expected)


def test_requests_filter_by_deployment(ops_client, requests, globex_search):
    _pending, approved, _rejected = requests

    assert ids(ops_client.get(REQUESTS, {"deployment": globex_search.pk})) == [approved.pk]


def test_bad_status_filter_returns_400(ops_client, requests):
    response = ops_client.get(REQUESTS, {"status": "maybe"})

    assert response.status_code == 400
    assert "maybe" in str(response.data["status"])


# Decisions.


@pytest.mark.parametrize(("action", "status"), [("approve", "approved"), ("reject", "rejected")])
def test_staff_decides_pending_request(
    ops_client, ops, requests, replans, django_capture_on_commit_callbacks, action, status
):
    pending, _approved, _rejected = requests

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(
            f"{REQUESTS}{pending.pk}/{action}/", {"reason": "Confirmed with acme."}, format="json"
        )

    assert response.status_code == 200
    assert response.data["status"] == status
    assert response.data["decided_by_label"] == "ops"
    assert response.data["decision_reason"] == "Confirmed with acme."
    pending.refresh_from_db()
    assert pending.status == status
    assert pending.decided_by == ops
    event = AuditEvent.objects.get(subject_type="placements.failoverrequest", subject_id=str(pending.pk))
    assert event.action == f"failover.{status}"
    assert event.actor == ops
    assert replans == [{"trigger": "approval"}]


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_customer_cannot_decide(acme_client, requests, action):
    pending, _approved, _rejected = requests

    response = acme_client.post(f"{REQUESTS}{pending.pk}/{action}/", {"reason": "we agree"}, format="json")

    assert response.status_code == 403
    pending.refresh_from_db()
    assert pending.status == FailoverStatus.PENDING
    assert not AuditEvent.objects.filter(subject_type="placements.failoverrequest").exists()


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "  "}])
def test_decision_needs_reason(ops_client, requests, body):
    pending, _approved, _rejected = requests

    response = ops_client.post(f"{REQUESTS}{pending.pk}/approve/", body, format="json")

    assert response.status_code == 400
    assert list(response.data) == ["reason"]
    pending.refresh_from_db()
    assert pending.status == FailoverStatus.PENDING


def test_deciding_decided_request_returns_400(ops_client, requests):
    _pending, approved, _rejected = requests

    response = ops_client.post(f"{REQUESTS}{approved.pk}/reject/", {"reason": "changed my mind"}, format="json")

    assert response.status_code == 400
    assert f"request {approved.pk} is approved" in response.data["status"][0]
    approved.refresh_from_db()
    assert approved.status == FailoverStatus.APPROVED


def test_decision_error_detail_keys_by_field():
    assert decision_error_detail(failover.FailoverDecisionError("status: request 3 is approved")) == {
        "status": ["status: request 3 is approved"]
    }
    assert decision_error_detail(ValueError("something else")) == {"non_field_errors": ["something else"]}


# Deployments: failover policy, condition and shortfall.


def test_deployment_shows_policy_condition_and_shortfall(globex_client, applied_plan, globex_search):
    Deployment.objects.filter(pk=globex_search.pk).update(
        condition=DeploymentCondition.DEGRADED,
        condition_reason="1 of 2 replicas placed",
        condition_since=timezone.now(),
    )

    response = globex_client.get(f"{DEPLOYMENTS}{globex_search.pk}/")

    assert response.status_code == 200
    assert response.data["spread_mode"] == "hard"
    assert response.data["failover_policy"] == "automatic"
    assert response.data["approval_timeout_s"] == 900
    assert response.data["failback_policy"] == "automatic"
    assert response.data["condition"] == "degraded"
    assert response.data["condition_reason"] == "1 of 2 replicas placed"
    assert response.data["condition_since"] is not None
    assert response.data["placed_replicas"] == 1
    assert response.data["unmet_replicas"] == 1


def test_deployment_without_plan_has_null_shortfall(acme_client, acme_chat):
    response = acme_client.get(f"{DEPLOYMENTS}{acme_chat.pk}/")

    assert response.data["placed_replicas"] == 0
    assert response.data["unmet_replicas"] is None


def test_deployments_filter_short_and_condition(ops_client, applied_plan, acme_chat, globex_search):
    Deployment.objects.filter(pk=acme_chat.pk).update(condition=DeploymentCondition.FAILOVER_BLOCKED)

    short = ops_client.get(DEPLOYMENTS, {"short": "true"})
    blocked = ops_client.get(DEPLOYMENTS, {"condition": "failover_blocked"})

    assert ids(short) == [globex_search.pk]
    assert ids(blocked) == [acme_chat.pk]


def test_customer_sets_failover_policy(acme_client, acme_member, acme_chat):
    body = {
        "spread_mode": "soft",
        "failover_policy": "approval",
        "approval_timeout_s": 300,
        "failback_policy": "approval",
    }

    response = acme_client.patch(f"{DEPLOYMENTS}{acme_chat.pk}/", body, format="json")

    assert response.status_code == 200
    for field, value in body.items():
        assert response.data[field] == value
    acme_chat.refresh_from_db()
    assert acme_chat.spread_mode == "soft"
    assert acme_chat.failover_policy == "approval"
    assert acme_chat.approval_timeout_s == 300
    assert acme_chat.failback_policy == "approval"
    event = AuditEvent.objects.get(action="deployment.policy_updated", subject_id=str(acme_chat.pk))
    assert event.actor == acme_member
    assert event.before["failover_policy"] == "automatic"
    assert event.after["failover_policy"] == "approval"


def test_new_deployment_with_policy(acme_client, fleet, acme):
    body = {"name": "batch", "sku": "H100", "failover_policy": "approval", "approval_timeout_s": 120}

    response = acme_client.post(DEPLOYMENTS, body, format="json")

    assert response.status_code == 201
    deployment = Deployment.objects.get(name="batch")
    assert deployment.failover_policy == "approval"
    assert deployment.approval_timeout_s == 120
    assert response.data["condition"] == "normal"


def test_unchanged_policy_writes_no_policy_event(acme_client, acme_chat):
    response = acme_client.patch(f"{DEPLOYMENTS}{acme_chat.pk}/", {"failover_policy": "automatic"}, format="json")

    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="deployment.policy_updated").exists()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"spread_mode": "strict"}, "spread_mode", "'strict' is not valid: use one of hard, soft."),
        ({"failover_policy": "never"}, "failover_policy", "'never' is not valid"),
        ({"failback_policy": ""}, "failback_policy", "'' is not valid"),
        ({"approval_timeout_s": 0}, "approval_timeout_s", "0 is out of range"),
        ({"approval_timeout_s": 90000}, "approval_timeout_s", "90000 is out of range"),
        ({"approval_timeout_s": "soon"}, "approval_timeout_s", "integer"),
    ],
)
def test_bad_policy_returns_400(acme_client, acme_chat, body, field, message):
    response = acme_client.patch(f"{DEPLOYMENTS}{acme_chat.pk}/", body, format="json")

    assert response.status_code == 400
    assert message in str(response.data[field])
    acme_chat.refresh_from_db()
    assert acme_chat.spread_mode == "hard"
    assert acme_chat.failover_policy == "automatic"
    assert acme_chat.approval_timeout_s == 900
    assert (
        not AuditEvent.objects.filter(action__startswith="deployment.", subject_id=str(acme_chat.pk))
        .exclude(action="deployment.created")
        .exists()
    )


@pytest.mark.parametrize("field", ["condition", "condition_reason", "condition_since"])
def test_condition_is_read_only(acme_client, acme_chat, field):
    value = {"condition": "normal", "condition_reason": "fine", "condition_since": "2020-01-01T00:00:00Z"}
    Deployment.objects.filter(pk=acme_chat.pk).update(condition=DeploymentCondition.DEGRADED)

    response = acme_client.patch(f"{DEPLOYMENTS}{acme_chat.pk}/", {field: value[field]}, format="json")

    assert response.status_code == 200
    acme_chat.refresh_from_db()
    assert acme_chat.condition == DeploymentCondition.DEGRADED
    assert acme_chat.condition_reason == ""
    assert acme_chat.condition_since is None
