"""GET /api/v1/deployments/{id}/explain: the placement in sentences for the customer, after a real plan."""

import pytest
from django.utils import timezone

from compliance.models import PlacementLock
from fleet.models import ClusterHealth
from placements.models import PlanTrigger
from placements.planning import run_plan
from placements.scheduler.problem import SchedulerOptions

FAST = SchedulerOptions(time_limit_s=10, gap_target=0.0)

pytestmark = pytest.mark.django_db


def explain_url(deployment) -> str:
    return f"/api/v1/deployments/{deployment.pk}/explain/"


@pytest.fixture
def planned(fleet, acme_chat, globex_search):
    """acme/chat locked away from gcp by its customer's lock; aws-use1-b is cordoned; then one plan."""
    lock = PlacementLock.objects.create(customer=acme_chat.customer, reason="No Google Cloud (contract 4.2)")
    lock.excluded_providers.add(fleet.gcp)
    return run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)


def test_explain_words_each_placed_cluster(acme_client, acme_chat, planned):
    response = acme_client.get(explain_url(acme_chat))

    assert response.status_code == 200
    body = response.data
    assert body["deployment"] == "acme/chat"
    assert body["plan_version"] == planned.version
    assert sum(row["replicas"] for row in body["placed"]) == 3
    assert body["summary"].startswith("3 of 3 replicas placed")
    by_cluster = {row["cluster"]: row for row in body["placed"]}
    assert set(by_cluster) <= {"aws-use1-a", "aws-euw1-a"}
    for row in body["placed"]:
        assert row["region"] in ("aws/us-east-1", "aws/eu-west-1")
        assert row["location"] in ("Ashburn", "Dublin")
        assert f"in {row['location']} ({row['region']}, cluster {row['cluster']})" in row["sentence"]
        assert "your users in New York and London" in row["sentence"]
        assert "per GPU-hour" in row["sentence"]


def test_explain_groups_unused_clusters_in_customer_terms(acme_client, acme_chat, planned):
    groups = {group["reason"]: group for group in acme_client.get(explain_url(acme_chat)).data["not_used"]}

    locked = groups["locked_out"]
    assert locked["clusters"] == ["gcp-usw4-a"]
    assert locked["sentence"] == (
        "not allowed by your lock 'No Google Cloud (contract 4.2)' (customer acme): "
        "it requires a provider other than gcp."
    )
    assert groups["not_schedulable"]["clusters"] == ["aws-use1-b"]
    assert groups["not_schedulable"]["sentence"].startswith("cordoned by operators")


def test_explain_names_missing_sku(globex_client, globex_search, planned):
    groups = {group["reason"]: group for group in globex_client.get(explain_url(globex_search)).data["not_used"]}

    assert groups["wrong_sku"]["sentence"] == "no L4 GPUs there."
    assert "aws-euw1-a" in groups["wrong_sku"]["clusters"]


def test_explain_says_since_when_a_cluster_is_down(acme_client, acme_chat, fleet):
    since = timezone.now().replace(second=0, microsecond=0)
    cluster = fleet.clusters["aws-euw1-a"]
    cluster.health = ClusterHealth.DOWN
    cluster.health_changed_at = since
    cluster.save()
    run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    groups = acme_client.get(explain_url(acme_chat)).data["not_used"]

    down = [group for group in groups if "aws-euw1-a" in group["clusters"]]
    assert [group["sentence"] for group in down] == [f"down since {since:%Y-%m-%d %H:%M} UTC."]


def test_explain_leaks_no_other_customer_or_internal_id(globex_client, globex_search, planned):
    response = globex_client.get(explain_url(globex_search))

    text = str(response.data)
    assert "acme" not in text
    assert "No Google Cloud" not in text
    assert "lock " + str(PlacementLock.objects.get().pk) + " " not in text
    assert "plan_id" not in response.data


def test_explain_hides_lock_id(acme_client, acme_chat, planned):
    lock = PlacementLock.objects.get()
    text = str(acme_client.get(explain_url(acme_chat)).data)
    assert f"lock {lock.pk} on" not in text


def test_explain_of_another_customers_deployment_is_404(globex_client, acme_chat, planned):
    assert globex_client.get(explain_url(acme_chat)).status_code == 404


def test_explain_needs_authentication(anonymous_client, acme_chat, planned):
    assert anonymous_client.get(explain_url(acme_chat)).status_code in (401, 403)


def test_explain_without_plan_says_so(acme_client, acme_chat):
    body = acme_client.get(explain_url(acme_chat)).data
    assert body["plan_version"] is None
    assert body["placed"] == []
    assert body["not_used"] == []
    assert body["summary"].startswith("No plan has placed this deployment yet")


def test_explanation_action_still_answers(acme_client, acme_chat, planned):
    response = acme_client.get(f"/api/v1/deployments/{acme_chat.pk}/explanation/")
    assert response.status_code == 200
    assert response.data["explanation"]["deployment"] == "acme/chat"


def test_explain_is_in_the_openapi_schema(ops_client):
    response = ops_client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    operation = paths["/api/v1/deployments/{id}/explain/"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/DeploymentExplain")


def test_explain_outcome_without_reasons(acme_client, acme_chat, applied_plan):
    body = acme_client.get(explain_url(acme_chat)).data

    assert body["plan_version"] == 1
    assert body["summary"] == (
        "Plan v1 places 3 of its replicas but stored no reasons; the next planning run explains its choices."
    )
