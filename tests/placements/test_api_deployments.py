"""The deployments API: customer isolation, validation, audit, filters and the placement actions."""

import pytest
from django.db import IntegrityError, transaction

from compliance.models import AuditEvent
from mcm_site.api import integrity_error_detail
from placements.models import Deployment

DEPLOYMENTS = "/api/v1/deployments/"


def detail_url(deployment) -> str:
    return f"{DEPLOYMENTS}{deployment.pk}/"


def new_deployment(**overrides) -> dict:
    body = {
        "name": "embed",
        "sku": "H100",
        "alternative_skus": ["L4"],
        "gpus_per_replica": 1,
        "min_replicas": 1,
        "desired_replicas": 2,
        "max_replicas": 4,
        "region_preference": ["aws/eu-west-1", "aws/us-east-1"],
        "demand_origins": [
            {"name": "Paris", "country_code": "FR", "latitude": 48.9, "longitude": 2.35, "share": 0.7},
        ],
    }
    return {**body, **overrides}


def audit_actions(deployment_id) -> list[str]:
    events = AuditEvent.objects.filter(subject_type="placements.deployment", subject_id=str(deployment_id))
    return list(events.order_by("id").values_list("action", flat=True))


# Isolation between customers.


@pytest.mark.django_db
def test_member_lists_only_own_deployments(acme_client, acme_chat, globex_search):
    response = acme_client.get(DEPLOYMENTS)
    assert response.status_code == 200
    names = [row["name"] for row in response.data["results"]]
    assert names == ["chat"]


@pytest.mark.django_db
def test_member_cannot_retrieve_foreign_deployment(acme_client, globex_search):
    response = acme_client.get(detail_url(globex_search))
    assert response.status_code == 404


@pytest.mark.django_db
def test_member_cannot_update_foreign_deployment(acme_client, globex_search):
    response = acme_client.patch(detail_url(globex_search), {"desired_replicas": 4}, format="json")
    assert response.status_code == 404
    globex_search.refresh_from_db()
    assert globex_search.desired_replicas == 2
    assert audit_actions(globex_search.pk) == ["deployment.created"]


@pytest.mark.django_db
def test_member_cannot_replace_foreign_deployment(acme_client, globex_search):
    response = acme_client.put(detail_url(globex_search), new_deployment(name="search"), format="json")
    assert response.status_code == 404
    globex_search.refresh_from_db()
    assert globex_search.sku.name == "L4"


@pytest.mark.django_db
def test_member_cannot_delete_foreign_deployment(acme_client, globex_search):
    response = acme_client.delete(detail_url(globex_search))
    assert response.status_code == 404
    assert Deployment.objects.filter(pk=globex_search.pk).exists()


@pytest.mark.django_db
def test_member_cannot_read_foreign_placement(acme_client, applied_plan, globex_search):
    response = acme_client.get(f"{detail_url(globex_search)}placement/")
    assert response.status_code == 404


@pytest.mark.django_db
def test_staff_list_every_customers_deployments(ops_client, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS)
    assert response.status_code == 200
    assert response.data["count"] == 2


@pytest.mark.django_db
def test_unauthenticated_request_gets_401(anonymous_client, acme_chat):
    response = anonymous_client.get(DEPLOYMENTS)
    assert response.status_code == 401


# Create.


@pytest.mark.django_db
def test_create_uses_requesters_customer(acme_client, acme, fleet):
    response = acme_client.post(DEPLOYMENTS, new_deployment(), format="json")
    assert response.status_code == 201, response.data
    deployment = Deployment.objects.get(pk=response.data["id"])
    assert deployment.customer == acme
    assert response.data["customer"] == "acme"
    assert response.data["tier"] == "premium"


@pytest.mark.django_db
def test_create_stores_nested_preference_and_origins(acme_client, fleet):
    response = acme_client.post(DEPLOYMENTS, new_deployment(), format="json")
    assert response.status_code == 201, response.data
    assert response.data["region_preference"] == ["aws/eu-west-1", "aws/us-east-1"]
    assert response.data["alternative_skus"] == ["L4"]
    assert response.data["demand_origins"][0]["name"] == "Paris"
    deployment = Deployment.objects.get(pk=response.data["id"])
    ranks = list(deployment.region_preferences.order_by("rank").values_list("region__code", "rank"))
    assert ranks == [("eu-west-1", 0), ("us-east-1", 1)]
    assert deployment.demand_origins.get().share == 0.7


@pytest.mark.django_db
def test_create_writes_audit_event(acme_client, acme_member, fleet):
    response = acme_client.post(DEPLOYMENTS, new_deployment(), format="json")
    event = AuditEvent.objects.get(subject_type="placements.deployment", subject_id=str(response.data["id"]))
    assert event.action == "deployment.created"
    assert event.actor == acme_member
    assert event.before is None
    assert event.after["desired_replicas"] == 2
    assert event.after["region_preference"] == ["aws/eu-west-1", "aws/us-east-1"]


@pytest.mark.django_db
def test_create_with_ambiguous_customer_rejected(acme_client, acme_member, globex, fleet):
    globex.members.add(acme_member)
    response = acme_client.post(DEPLOYMENTS, new_deployment(), format="json")
    assert response.status_code == 400
    assert "customer" in response.data
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_create_uses_named_customer(acme_client, acme_member, globex, fleet):
    globex.members.add(acme_member)
    response = acme_client.post(DEPLOYMENTS, new_deployment(customer="globex"), format="json")
    assert response.status_code == 201, response.data
    assert Deployment.objects.get().customer == globex


@pytest.mark.django_db
def test_create_for_foreign_customer_is_rejected(acme_client, globex, fleet):
    response = acme_client.post(DEPLOYMENTS, new_deployment(customer="globex"), format="json")
    assert response.status_code == 400
    assert "'globex'" in response.data["customer"][0]
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_staff_create_requires_customer(ops_client, acme, globex, fleet):
    response = ops_client.post(DEPLOYMENTS, new_deployment(), format="json")
    assert response.status_code == 400
    assert "customer" in response.data


INVALID_CREATES = [
    ({"desired_replicas": 9}, "desired_replicas", "9"),
    ({"min_replicas": 3, "desired_replicas": 2}, "desired_replicas", "2"),
    ({"gpus_per_replica": 17}, "gpus_per_replica", "17"),
    ({"gpus_per_replica": 0}, "gpus_per_replica", "0"),
    ({"sku": "Z9000"}, "sku", "'Z9000'"),
    ({"alternative_skus": ["H100"]}, "alternative_skus", "'H100'"),
    ({"alternative_skus": ["B200"]}, "alternative_skus", "'B200'"),
    ({"region_preference": ["aws/mars-1"]}, "region_preference", "'aws/mars-1'"),
    ({"region_preference": ["us-east-1"]}, "region_preference", "'us-east-1'"),
    ({"region_preference": ["aws/us-east-1", "aws/us-east-1"]}, "region_preference", "aws/us-east-1"),
    ({"min_providers": 0}, "min_providers", "0"),
    ({"min_regions": 0}, "min_regions", "0"),
    ({"name": "Not A Slug"}, "name", "'Not A Slug'"),
    (
        {"demand_origins": [{"name": "X", "latitude": 91, "longitude": 0, "share": 0.5}]},
        "demand_origins",
        "91",
    ),
    (
        {"demand_origins": [{"name": "X", "latitude": 0, "longitude": 0, "share": 0}]},
        "demand_origins",
        "share 0",
    ),
    (
        {
            "demand_origins": [
                {"name": "A", "latitude": 0, "longitude": 0, "share": 0.6},
                {"name": "B", "latitude": 0, "longitude": 0, "share": 0.5},
            ]
        },
        "demand_origins",
        "1.1",
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("overrides", "field", "value"), INVALID_CREATES)
def test_create_rejects_invalid_value(acme_client, fleet, overrides, field, value):
    response = acme_client.post(DEPLOYMENTS, new_deployment(**overrides), format="json")
    assert response.status_code == 400
    assert field in response.data
    assert value in " ".join(str(message) for message in response.data[field])
    assert not Deployment.objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_create_accepts_shares_summing_to_one(acme_client, fleet):
    origins = [{"name": str(index), "latitude": 0, "longitude": 0, "share": 0.1} for index in range(10)]
    response = acme_client.post(DEPLOYMENTS, new_deployment(demand_origins=origins), format="json")
    assert response.status_code == 201, response.data


@pytest.mark.django_db
def test_create_rejects_duplicate_name(acme_client, acme_chat):
    response = acme_client.post(DEPLOYMENTS, new_deployment(name="chat"), format="json")
    assert response.status_code == 400
    assert "'chat'" in response.data["name"][0]
    assert Deployment.objects.filter(name="chat").count() == 1


@pytest.mark.django_db
def test_other_customer_may_reuse_a_name(globex_client, acme_chat):
    response = globex_client.post(DEPLOYMENTS, new_deployment(name="chat"), format="json")
    assert response.status_code == 201, response.data


# Update and delete.


@pytest.mark.django_db
def test_patch_changes_only_given_fields(acme_client, acme_chat):
    response = acme_client.patch(detail_url(acme_chat), {"desired_replicas": 5}, format="json")
    assert response.status_code == 200, response.data
    acme_chat.refresh_from_db()
    assert acme_chat.desired_replicas == 5
    assert acme_chat.region_preferences.count() == 2
    assert acme_chat.demand_origins.count() == 2


@pytest.mark.django_db
def test_patch_audits_before_and_after(acme_client, acme_chat):
    acme_client.patch(detail_url(acme_chat), {"desired_replicas": 5}, format="json")
    event = AuditEvent.objects.get(action="deployment.updated")
    assert event.subject_id == str(acme_chat.pk)
    assert event.before["desired_replicas"] == 3
    assert event.after["desired_replicas"] == 5


@pytest.mark.django_db
def test_patch_replaces_region_preference(acme_client, acme_chat):
    body = {"region_preference": ["gcp/us-west4"]}
    response = acme_client.patch(detail_url(acme_chat), body, format="json")
    assert response.status_code == 200, response.data
    assert response.data["region_preference"] == ["gcp/us-west4"]


@pytest.mark.django_db
def test_patch_rejects_desired_above_max(acme_client, acme_chat):
    response = acme_client.patch(detail_url(acme_chat), {"desired_replicas": 7}, format="json")
    assert response.status_code == 400
    assert "7" in response.data["desired_replicas"][0]
    acme_chat.refresh_from_db()
    assert acme_chat.desired_replicas == 3
    assert audit_actions(acme_chat.pk) == ["deployment.created"]


@pytest.mark.django_db
def test_patch_with_bad_origins_keeps_preference(acme_client, acme_chat):
    body = {
        "region_preference": ["aws/eu-west-1"],
        "demand_origins": [{"name": "X", "latitude": 0, "longitude": 200, "share": 0.5}],
    }
    response = acme_client.patch(detail_url(acme_chat), body, format="json")
    assert response.status_code == 400
    assert "200" in response.data["demand_origins"][0]
    assert acme_chat.region_preferences.count() == 2


@pytest.mark.django_db
def test_patch_cannot_change_customer(acme_client, acme_member, globex, acme_chat):
    globex.members.add(acme_member)
    response = acme_client.patch(detail_url(acme_chat), {"customer": "globex"}, format="json")
    assert response.status_code == 400
    assert "customer" in response.data
    acme_chat.refresh_from_db()
    assert acme_chat.customer.name == "acme"


@pytest.mark.django_db
def test_put_resets_omitted_lists(acme_client, acme_chat):
    body = {"name": "chat", "sku": "H100", "desired_replicas": 1}
    response = acme_client.put(detail_url(acme_chat), body, format="json")
    assert response.status_code == 200, response.data
    acme_chat.refresh_from_db()
    assert acme_chat.region_preferences.count() == 0
    assert acme_chat.demand_origins.count() == 0
    assert acme_chat.alternative_skus.count() == 0
    assert acme_chat.gpus_per_replica == 1


@pytest.mark.django_db
def test_put_requires_name_and_sku(acme_client, acme_chat):
    response = acme_client.put(detail_url(acme_chat), {"desired_replicas": 1}, format="json")
    assert response.status_code == 400
    assert "name" in response.data
    assert "sku" in response.data


@pytest.mark.django_db
def test_delete_removes_and_audits(acme_client, acme_member, acme_chat):
    deployment_id = acme_chat.pk
    response = acme_client.delete(detail_url(acme_chat))
    assert response.status_code == 204
    assert not Deployment.objects.filter(pk=deployment_id).exists()
    event = AuditEvent.objects.get(action="deployment.deleted")
    assert event.subject_id == str(deployment_id)
    assert event.actor == acme_member
    assert event.before["name"] == "chat"


# Filters and pagination.


@pytest.mark.django_db
def test_filter_by_sku_name(ops_client, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"sku": "L4"})
    assert [row["name"] for row in response.data["results"]] == ["search"]


@pytest.mark.django_db
def test_filter_by_sku_id(ops_client, fleet, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"sku_id": fleet.h100.pk})
    assert [row["name"] for row in response.data["results"]] == ["chat"]


@pytest.mark.django_db
def test_filter_by_customer_name(ops_client, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"customer": "globex"})
    assert [row["name"] for row in response.data["results"]] == ["search"]


@pytest.mark.django_db
def test_filter_by_customer_id(ops_client, acme, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"customer_id": acme.pk})
    assert [row["name"] for row in response.data["results"]] == ["chat"]


@pytest.mark.django_db
def test_filter_by_tier(ops_client, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"tier": "premium"})
    assert [row["name"] for row in response.data["results"]] == ["chat"]


@pytest.mark.django_db
def test_search_matches_name(ops_client, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"q": "sear"})
    assert [row["name"] for row in response.data["results"]] == ["search"]


@pytest.mark.django_db
def test_filter_cannot_reveal_other_customers(acme_client, globex, globex_search):
    response = acme_client.get(DEPLOYMENTS, {"customer_id": globex.pk})
    assert response.data["count"] == 0


@pytest.mark.django_db
def test_list_is_paginated_with_limit_and_offset(ops_client, acme_chat, globex_search):
    response = ops_client.get(DEPLOYMENTS, {"limit": 1, "offset": 1})
    assert response.data["count"] == 2
    assert len(response.data["results"]) == 1
    assert response.data["results"][0]["name"] == "search"
    assert response.data["previous"] is not None


# Placement and explanation.


@pytest.mark.django_db
def test_placement_lists_current_plan_assignments(acme_client, acme_chat, applied_plan):
    response = acme_client.get(f"{detail_url(acme_chat)}placement/")
    assert response.status_code == 200
    assert response.data["plan_version"] == 1
    assert response.data["placed_replicas"] == 3
    assert response.data["unmet_replicas"] == 0
    first = response.data["assignments"][0]
    assert first == {
        "cluster": "aws-euw1-a",
        "provider": "aws",
        "region": "aws/eu-west-1",
        "sku": "H100",
        "replicas": 1,
    }


@pytest.mark.django_db
def test_placement_reports_unmet_replicas(globex_client, globex_search, applied_plan):
    response = globex_client.get(f"{detail_url(globex_search)}placement/")
    assert response.data["unmet_replicas"] == 1


@pytest.mark.django_db
def test_placement_without_applied_plan_is_empty(acme_client, acme_chat):
    response = acme_client.get(f"{detail_url(acme_chat)}placement/")
    assert response.status_code == 200
    assert response.data["plan_version"] is None
    assert response.data["assignments"] == []


@pytest.mark.django_db
def test_explanation_returns_outcome_json(acme_client, acme_chat, applied_plan):
    response = acme_client.get(f"{detail_url(acme_chat)}explanation/")
    assert response.status_code == 200
    assert response.data["plan_version"] == 1
    assert response.data["explanation"]["rejected"] == {"gcp-usw4-a": "wrong SKU"}


@pytest.mark.django_db
def test_explanation_without_applied_plan_is_null(acme_client, acme_chat):
    response = acme_client.get(f"{detail_url(acme_chat)}explanation/")
    assert response.status_code == 200
    assert response.data["explanation"] is None


# Plans.


@pytest.mark.django_db
def test_plans_list_summarises_assignments(ops_client, applied_plan):
    response = ops_client.get("/api/v1/plans/")
    assert response.status_code == 200
    row = response.data["results"][0]
    assert row["version"] == 1
    assert row["assignment_count"] == 3
    assert row["placed_replicas"] == 4
    assert row["unmet_replicas"] == 1


@pytest.mark.django_db
def test_plans_filter_by_status(ops_client, applied_plan):
    response = ops_client.get("/api/v1/plans/", {"status": "dry_run"})
    assert response.data["count"] == 0


@pytest.mark.django_db
def test_plans_are_forbidden_to_customers(acme_client, applied_plan):
    response = acme_client.get("/api/v1/plans/")
    assert response.status_code == 403


# Base viewset behaviour.


@pytest.mark.django_db
def test_integrity_error_names_constraint_fields(acme, fleet, acme_chat):
    with pytest.raises(IntegrityError) as raised, transaction.atomic():
        Deployment.objects.create(customer=acme, name="chat", sku=fleet.h100)
    detail = integrity_error_detail(raised.value)
    assert detail["name"] == ["This customer already has a deployment with this name."]


@pytest.mark.django_db
def test_schema_endpoint_returns_200(acme_client):
    response = acme_client.get("/api/v1/schema/")
    assert response.status_code == 200


@pytest.mark.django_db
def test_docs_page_returns_200(acme_client):
    response = acme_client.get("/api/v1/docs/")
    assert response.status_code == 200
