"""Operator controls in the API: cluster actions, outages, alerts and the re-plan preview."""

import pytest

from compliance.models import AuditEvent
from fleet import operations
from fleet.alerts import raise_alert
from fleet.models import Alert, Cluster, ClusterHealth, ClusterState, Outage, OutageScope, OutageSource
from placements.models import PlacementPlan, PlanStatus
from tasks.tasks import plan_placements

pytestmark = pytest.mark.django_db

CLUSTERS = "/api/v1/clusters/"
OUTAGES = "/api/v1/outages/"
ALERTS = "/api/v1/alerts/"
PREVIEW = "/api/v1/plans/preview/"


@pytest.fixture
def replans(monkeypatch) -> list[dict]:
    """Record each re-plan the controls enqueue, with its arguments, instead of sending it to the broker."""
    requested: list[dict] = []
    monkeypatch.setattr(plan_placements, "delay", lambda *args, **kwargs: requested.append(kwargs))
    return requested


def action_url(cluster, action: str) -> str:
    return f"{CLUSTERS}{cluster.pk}/{action}/"


# Cluster fields and actions.


def test_cluster_shows_health(acme_client, fleet):
    cluster = fleet.clusters["aws-use1-a"]
    Cluster.objects.filter(pk=cluster.pk).update(health=ClusterHealth.SUSPECT, health_reason="2 missed heartbeats")

    response = acme_client.get(f"{CLUSTERS}{cluster.pk}/")

    assert response.status_code == 200
    assert response.data["health"] == "suspect"
    assert response.data["health_reason"] == "2 missed heartbeats"
    for field in ("health_changed_at", "healthy_since", "first_missed_heartbeat_at"):
        assert field in response.data


def test_clusters_filter_by_health(ops_client, fleet):
    Cluster.objects.filter(name="gcp-usw4-a").update(health=ClusterHealth.DOWN)

    response = ops_client.get(CLUSTERS, {"health": "down"})

    assert [row["name"] for row in response.data["results"]] == ["gcp-usw4-a"]


def test_cluster_health_is_read_only(ops_client, fleet):
    cluster = fleet.clusters["aws-use1-a"]

    response = ops_client.patch(f"{CLUSTERS}{cluster.pk}/", {"health": "down", "state": "down"}, format="json")

    assert response.status_code == 405
    cluster.refresh_from_db()
    assert cluster.health == ClusterHealth.HEALTHY
    assert cluster.state == ClusterState.ACTIVE


@pytest.mark.parametrize(
    ("action", "name", "expected"),
    [
        ("cordon", "aws-use1-a", ClusterState.CORDONED),
        ("uncordon", "aws-use1-b", ClusterState.ACTIVE),
        ("drain", "aws-use1-a", ClusterState.DRAINING),
    ],
)
def test_staff_changes_cluster_state(
    ops_client, ops, fleet, replans, django_capture_on_commit_callbacks, action, name, expected
):
    cluster = fleet.clusters[name]

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(action_url(cluster, action), {"reason": "Planned maintenance."}, format="json")

    assert response.status_code == 200
    assert response.data["state"] == expected
    cluster.refresh_from_db()
    assert cluster.state == expected
    event = AuditEvent.objects.get(subject_type="fleet.cluster", subject_id=str(cluster.pk))
    assert event.actor == ops
    assert event.reason == "Planned maintenance."
    assert replans == [{"trigger": "operator"}]


@pytest.mark.parametrize("action", ["cordon", "uncordon", "drain"])
def test_customer_cannot_change_cluster_state(acme_client, fleet, action):
    cluster = fleet.clusters["aws-use1-b"]

    response = acme_client.post(action_url(cluster, action), {"reason": "mine now"}, format="json")

    assert response.status_code == 403
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.CORDONED
    assert not AuditEvent.objects.exists()


def test_anonymous_cannot_cordon(anonymous_client, fleet):
    response = anonymous_client.post(action_url(fleet.clusters["aws-use1-a"], "cordon"), {"reason": "x"})

    assert response.status_code in (401, 403)
    assert Cluster.objects.get(name="aws-use1-a").state == ClusterState.ACTIVE


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}])
def test_cluster_action_needs_reason(ops_client, fleet, body):
    cluster = fleet.clusters["aws-use1-a"]

    response = ops_client.post(action_url(cluster, "drain"), body, format="json")

    assert response.status_code == 400
    assert list(response.data) == ["reason"]
    cluster.refresh_from_db()
    assert cluster.state == ClusterState.ACTIVE
    assert not AuditEvent.objects.exists()


def test_invalid_transition_returns_400_naming_state(ops_client, fleet, django_capture_on_commit_callbacks):
    cluster = fleet.clusters["aws-use1-b"]

    with django_capture_on_commit_callbacks() as callbacks:
        response = ops_client.post(action_url(cluster, "cordon"), {"reason": "again"}, format="json")

    assert response.status_code == 400
    assert "aws-use1-b is cordoned" in response.data["state"][0]
    assert not AuditEvent.objects.exists()
    assert callbacks == []


def test_unknown_cluster_returns_404(ops_client, fleet):
    response = ops_client.post(f"{CLUSTERS}999999/cordon/", {"reason": "x"}, format="json")

    assert response.status_code == 404


# Outages.


def test_staff_declares_cluster_outage(ops_client, ops, fleet, replans, django_capture_on_commit_callbacks):
    body = {"scope": "cluster", "cluster": "gcp-usw4-a", "reason": "Nodes unreachable since 09:12."}

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(OUTAGES, body, format="json")

    assert response.status_code == 201
    outage = Outage.objects.get()
    assert response.data["id"] == outage.pk
    assert response.data["target"] == "gcp-usw4-a"
    assert response.data["source"] == "declared"
    assert response.data["declared_by"] == "ops"
    assert response.data["is_open"] is True
    assert outage.cluster == fleet.clusters["gcp-usw4-a"]
    assert AuditEvent.objects.get(action="outage.declared").actor == ops
    assert Alert.objects.get(kind="outage.open").resolved_at is None
    assert replans == [{"trigger": "operator"}]


def test_cluster_list_shows_outage_and_cordon_placement(ops_client, fleet, replans):
    assert ops_client.post(OUTAGES, {"scope": "provider", "provider": "gcp", "reason": "API down"}, format="json")

    rows = {row["name"]: row["placement"] for row in ops_client.get(CLUSTERS).data["results"]}

    assert rows["gcp-usw4-a"] == {"mode": "lost", "reason": "provider outage"}
    assert rows["aws-use1-b"] == {"mode": "holding", "reason": "cordoned"}
    assert rows["aws-use1-a"] == {"mode": "schedulable", "reason": "active"}


def test_admin_cluster_list_shows_placement(client, superuser, fleet, replans):
    operations.declare_outage(
        scope="cluster", target=fleet.clusters["gcp-usw4-a"], actor="test", reason="nodes unreachable"
    )
    client.force_login(superuser)

    page = client.get("/admin/fleet/cluster/").content.decode()

    assert "lost (cluster outage)" in page
    assert "holding (cordoned)" in page


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({"scope": "region", "region": "aws/eu-west-1"}, "aws/eu-west-1"),
        ({"scope": "provider", "provider": "gcp"}, "gcp"),
    ],
)
def test_staff_declares_region_or_provider_outage(ops_client, fleet, replans, body, target):
    response = ops_client.post(OUTAGES, {**body, "reason": "Status page reports an outage."}, format="json")

    assert response.status_code == 201
    assert response.data["target"] == target
    assert str(Outage.objects.get().target) == target


def test_outage_target_by_id(ops_client, fleet, replans):
    body = {"scope": "region", "region": str(fleet.us_west.pk), "reason": "power"}

    response = ops_client.post(OUTAGES, body, format="json")

    assert response.status_code == 201
    assert Outage.objects.get().region == fleet.us_west


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"scope": "zone", "cluster": "gcp-usw4-a", "reason": "x"}, "scope", "'zone' is not a valid scope"),
        ({"scope": "cluster", "reason": "x"}, "cluster", "A cluster outage needs cluster"),
        ({"scope": "cluster", "cluster": "nope", "reason": "x"}, "cluster", "Cluster 'nope' not found."),
        ({"scope": "region", "region": "us-east-1", "reason": "x"}, "region", "Region 'us-east-1' not found."),
        ({"scope": "provider", "provider": "azure", "reason": "x"}, "provider", "Provider 'azure' not found."),
        (
            {"scope": "provider", "provider": "aws", "cluster": "gcp-usw4-a", "reason": "x"},
            "cluster",
            "'gcp-usw4-a' does not apply to a provider outage",
        ),
        ({"scope": "provider", "provider": "aws", "reason": ""}, "reason", "reason '' is empty"),
        ({"scope": "provider", "provider": "aws"}, "reason", "required"),
    ],
)
def test_bad_outage_returns_400(ops_client, fleet, body, field, message):
    response = ops_client.post(OUTAGES, body, format="json")

    assert response.status_code == 400
    assert message in response.data[field][0]
    assert not Outage.objects.exists()
    assert not AuditEvent.objects.exists()


def test_second_open_outage_returns_400(ops_client, ops, fleet, replans):
    operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    response = ops_client.post(OUTAGES, {"scope": "provider", "provider": "aws", "reason": "again"}, format="json")

    assert response.status_code == 400
    assert "provider aws already has an open declared outage" in response.data["provider"][0]
    assert Outage.objects.count() == 1


def test_customer_cannot_declare_or_list_outages(acme_client, fleet):
    declared = acme_client.post(OUTAGES, {"scope": "provider", "provider": "aws", "reason": "x"}, format="json")
    listed = acme_client.get(OUTAGES)

    assert declared.status_code == 403
    assert listed.status_code == 403
    assert not Outage.objects.exists()


def test_outages_filter_by_scope_open_and_source(ops_client, ops, fleet, replans):
    cleared = operations.declare_outage(scope="provider", target=fleet.gcp, actor=ops, reason="old")
    operations.clear_outage(cleared, actor=ops, reason="over")
    open_region = operations.declare_outage(scope="region", target=fleet.us_east, actor=ops, reason="power")
    detected = Outage.objects.create(
        scope=OutageScope.PROVIDER,
        provider=fleet.aws,
        source=OutageSource.DETECTED,
        reason="down",
        declared_by="health",
    )

    def ids(params) -> list[int]:
        response = ops_client.get(OUTAGES, params)
        assert response.status_code == 200
        return sorted(row["id"] for row in response.data["results"])

    assert ids({"open": "true"}) == sorted([open_region.pk, detected.pk])
    assert ids({"open": "false"}) == [cleared.pk]
    assert ids({"scope": "provider"}) == sorted([cleared.pk, detected.pk])
    assert ids({"source": "detected"}) == [detected.pk]
    assert ids({"scope": "region", "open": "true"}) == [open_region.pk]


def test_staff_clears_outage(ops_client, ops, fleet, replans, django_capture_on_commit_callbacks):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")
    replans.clear()

    with django_capture_on_commit_callbacks(execute=True):
        response = ops_client.post(f"{OUTAGES}{outage.pk}/clear/", {"reason": "Recovered."}, format="json")

    assert response.status_code == 200
    assert response.data["is_open"] is False
    assert response.data["cleared_by"] == "ops"
    assert AuditEvent.objects.get(action="outage.cleared").reason == "Recovered."
    assert Alert.objects.get(kind="outage.open").resolved_at is not None
    assert replans == [{"trigger": "operator"}]


def test_clear_needs_reason(ops_client, ops, fleet):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    response = ops_client.post(f"{OUTAGES}{outage.pk}/clear/", {"reason": ""}, format="json")

    assert response.status_code == 400
    assert "reason" in response.data
    assert Outage.objects.get(pk=outage.pk).is_open


def test_clear_twice_returns_400(ops_client, ops, fleet):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")
    operations.clear_outage(outage, actor=ops, reason="recovered")

    response = ops_client.post(f"{OUTAGES}{outage.pk}/clear/", {"reason": "again"}, format="json")

    assert response.status_code == 400
    assert f"Outage {outage.pk} was already cleared" in response.data["cleared_at"][0]


def test_customer_cannot_clear_outage(acme_client, ops, fleet):
    outage = operations.declare_outage(scope="provider", target=fleet.aws, actor=ops, reason="API errors")

    response = acme_client.post(f"{OUTAGES}{outage.pk}/clear/", {"reason": "mine"}, format="json")

    assert response.status_code == 403
    assert Outage.objects.get(pk=outage.pk).is_open


# Alerts.


@pytest.fixture
def alerts(fleet):
    down = raise_alert("cluster.down", "critical", fleet.clusters["gcp-usw4-a"], "No heartbeat for 60 s.")
    suspect = raise_alert("cluster.suspect", "warning", fleet.clusters["aws-use1-a"], "One missed heartbeat.")
    Alert.objects.filter(pk=suspect.pk).update(resolved_at=suspect.raised_at)
    return down, suspect


def test_staff_lists_alerts_with_filters(ops_client, alerts):
    down, suspect = alerts

    open_alerts = ops_client.get(ALERTS, {"open": "true"})
    by_kind = ops_client.get(ALERTS, {"kind": "cluster.suspect"})

    assert open_alerts.status_code == 200
    assert [row["id"] for row in open_alerts.data["results"]] == [down.pk]
    assert open_alerts.data["results"][0]["is_open"] is True
    assert open_alerts.data["results"][0]["subject_label"] == "gcp-usw4-a"
    assert [row["id"] for row in by_kind.data["results"]] == [suspect.pk]


def test_customer_cannot_list_alerts(acme_client, alerts):
    response = acme_client.get(ALERTS)

    assert response.status_code == 403


def test_alerts_are_read_only(ops_client, alerts):
    down, _suspect = alerts

    response = ops_client.delete(f"{ALERTS}{down.pk}/")

    assert response.status_code == 405
    assert Alert.objects.filter(pk=down.pk).exists()


# Re-plan preview.


def test_preview_returns_diff_without_applying(ops_client, fleet, applied_plan):
    response = ops_client.post(PREVIEW, {"exclude_providers": ["aws"]}, format="json")

    assert response.status_code == 200
    dry_run = PlacementPlan.objects.get(pk=response.data["plan_id"])
    assert dry_run.status == PlanStatus.DRY_RUN
    assert response.data["current_plan_version"] == applied_plan.version
    # The applied plan runs 3 replicas on aws clusters; none stay there.
    assert response.data["by_provider"]["aws"] == -3
    assert response.data["replicas_removed"] >= 3
    assert response.data["unmet_replicas"]["before"] == applied_plan.summary.get("unmet_replicas")
    assert set(response.data["unmet_by_tier"]["after"]) == {"critical", "premium", "standard", "best_effort"}
    assert PlacementPlan.objects.get(status=PlanStatus.APPLIED) == applied_plan


def test_preview_by_region_key(ops_client, fleet, applied_plan):
    response = ops_client.post(PREVIEW, {"exclude_regions": ["aws/eu-west-1"]}, format="json")

    assert response.status_code == 200
    assert response.data["exclusions"]["regions"] == ["aws/eu-west-1"]
    assert response.data["by_region"].get("aws/eu-west-1", 0) == -1


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"exclude_providers": ["azure"]}, "exclude_providers", "Provider 'azure' not found."),
        ({"exclude_regions": ["mars/1"]}, "exclude_regions", "Region 'mars/1' not found."),
        ({"drain_clusters": ["nope"]}, "drain_clusters", "Cluster 'nope' not found."),
        (
            {"drain_clusters": ["aws-use1-a"], "cordon_clusters": ["aws-use1-a"]},
            "cordon_clusters",
            "also listed in drain_clusters",
        ),
        ({"exclude_providers": "aws"}, "exclude_providers", "list"),
    ],
)
def test_preview_bad_input_returns_400(ops_client, fleet, body, field, message):
    response = ops_client.post(PREVIEW, body, format="json")

    assert response.status_code == 400
    assert message in str(response.data[field])
    assert not PlacementPlan.objects.exists()


def test_preview_of_cluster_what_if(ops_client, fleet, applied_plan):
    response = ops_client.post(PREVIEW, {"drain_clusters": ["aws-use1-a"]}, format="json")

    assert response.status_code == 200
    assert response.data["by_region"].get("aws/us-east-1", 0) < 0
    assert PlacementPlan.objects.get(status=PlanStatus.APPLIED).pk == applied_plan.pk


def test_preview_of_cordon_keeps_running_replicas(ops_client, fleet, applied_plan):
    response = ops_client.post(PREVIEW, {"cordon_clusters": ["aws-use1-a"]}, format="json")

    assert response.status_code == 200
    # Cordoning keeps what runs there, so nothing leaves the cluster's region.
    assert response.data["by_region"].get("aws/us-east-1", 0) >= 0


def test_customer_cannot_preview(acme_client, fleet, applied_plan):
    response = acme_client.post(PREVIEW, {}, format="json")

    assert response.status_code == 403
    assert PlacementPlan.objects.count() == 1


def test_schema_is_valid(ops_client):
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)

    paths = schema["paths"]
    for path in [
        "/api/v1/clusters/{id}/cordon/",
        "/api/v1/clusters/{id}/uncordon/",
        "/api/v1/clusters/{id}/drain/",
        "/api/v1/outages/",
        "/api/v1/outages/{id}/clear/",
        "/api/v1/alerts/",
        "/api/v1/plans/preview/",
        "/api/v1/failover-requests/",
        "/api/v1/failover-requests/{id}/approve/",
        "/api/v1/failover-requests/{id}/reject/",
    ]:
        assert path in paths
