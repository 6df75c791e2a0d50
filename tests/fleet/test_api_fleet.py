"""The read-only fleet API: providers, regions, GPU SKUs, clusters and capacities."""

import pytest

ENDPOINTS = ["providers", "regions", "gpu-skus", "clusters", "capacities"]


def url(name: str) -> str:
    return f"/api/v1/{name}/"


def names(response, key: str = "name") -> list:
    return [row[key] for row in response.data["results"]]


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_customer_can_list_inventory(acme_client, fleet, endpoint):
    response = acme_client.get(url(endpoint))
    assert response.status_code == 200
    assert response.data["count"] > 0


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_inventory_rejects_post(ops_client, fleet, endpoint):
    response = ops_client.post(url(endpoint), {"name": "new"}, format="json")
    assert response.status_code == 405


@pytest.mark.django_db
def test_inventory_rejects_delete(ops_client, fleet):
    response = ops_client.delete(f"{url('clusters')}{fleet.clusters['aws-use1-a'].pk}/")
    assert response.status_code == 405


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_inventory_requires_authentication(anonymous_client, fleet, endpoint):
    response = anonymous_client.get(url(endpoint))
    assert response.status_code == 401


@pytest.mark.django_db
def test_cluster_fields_leave_out_api_endpoint(acme_client, fleet):
    response = acme_client.get(f"{url('clusters')}{fleet.clusters['aws-use1-a'].pk}/")
    assert response.status_code == 200
    assert "api_endpoint" not in response.data
    assert response.data["region"] == "aws/us-east-1"
    assert response.data["provider"] == "aws"


# Regions.


@pytest.mark.django_db
def test_regions_filter_by_provider_name(acme_client, fleet):
    response = acme_client.get(url("regions"), {"provider": "gcp"})
    assert names(response, "key") == ["gcp/us-west4"]


@pytest.mark.django_db
def test_regions_filter_by_provider_id(acme_client, fleet):
    response = acme_client.get(url("regions"), {"provider_id": fleet.aws.pk})
    assert names(response, "key") == ["aws/eu-west-1", "aws/us-east-1"]


@pytest.mark.django_db
def test_regions_search_by_city(acme_client, fleet):
    response = acme_client.get(url("regions"), {"q": "dublin"})
    assert names(response, "key") == ["aws/eu-west-1"]


@pytest.mark.django_db
def test_regions_filter_by_jurisdiction(acme_client, fleet):
    response = acme_client.get(url("regions"), {"jurisdiction": "eu"})
    assert names(response, "key") == ["aws/eu-west-1"]


# Clusters.


@pytest.mark.django_db
def test_clusters_filter_by_state(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"state": "cordoned"})
    assert names(response) == ["aws-use1-b"]


@pytest.mark.django_db
def test_clusters_reject_unknown_state(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"state": "melted"})
    assert response.status_code == 400
    assert "state" in response.data


@pytest.mark.django_db
def test_clusters_filter_by_region_code(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"region": "us-east-1"})
    assert names(response) == ["aws-use1-a", "aws-use1-b"]


@pytest.mark.django_db
def test_clusters_filter_by_region_key(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"region": "gcp/us-west4"})
    assert names(response) == ["gcp-usw4-a"]


@pytest.mark.django_db
def test_clusters_filter_by_region_id(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"region_id": fleet.eu_west.pk})
    assert names(response) == ["aws-euw1-a"]


@pytest.mark.django_db
def test_clusters_filter_by_provider_name(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"provider": "gcp"})
    assert names(response) == ["gcp-usw4-a"]


@pytest.mark.django_db
def test_clusters_filter_by_provider_id(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"provider_id": fleet.aws.pk})
    assert names(response) == ["aws-euw1-a", "aws-use1-a", "aws-use1-b"]


@pytest.mark.django_db
def test_clusters_search_by_name(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"q": "euw1"})
    assert names(response) == ["aws-euw1-a"]


@pytest.mark.django_db
def test_clusters_paginate_with_limit_and_offset(acme_client, fleet):
    response = acme_client.get(url("clusters"), {"limit": 2, "offset": 2})
    assert response.data["count"] == 4
    assert names(response) == ["aws-use1-b", "gcp-usw4-a"]


# Capacities.


@pytest.mark.django_db
def test_capacities_filter_by_sku_name(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"sku": "L4"})
    assert names(response, "cluster") == ["aws-use1-a", "gcp-usw4-a"]


@pytest.mark.django_db
def test_capacities_filter_by_sku_id(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"sku_id": fleet.h100.pk})
    assert response.data["count"] == 3


@pytest.mark.django_db
def test_capacities_filter_by_cluster_name(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"cluster": "aws-use1-a"})
    assert names(response, "sku") == ["H100", "L4"]


@pytest.mark.django_db
def test_capacities_filter_by_cluster_id(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"cluster_id": fleet.clusters["gcp-usw4-a"].pk})
    assert names(response, "sku") == ["L4"]


@pytest.mark.django_db
def test_capacities_filter_by_provider(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"provider": "aws", "sku": "H100"})
    assert response.data["count"] == 3


@pytest.mark.django_db
def test_capacities_filter_by_provider_id(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"provider_id": fleet.gcp.pk})
    assert names(response, "cluster") == ["gcp-usw4-a"]


@pytest.mark.django_db
def test_capacities_filter_by_region(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"region": "aws/eu-west-1"})
    assert names(response, "cluster") == ["aws-euw1-a"]


@pytest.mark.django_db
def test_capacities_filter_by_region_id(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"region_id": fleet.us_west.pk})
    assert names(response, "cluster") == ["gcp-usw4-a"]


@pytest.mark.django_db
def test_capacity_reports_free_gpus(acme_client, fleet):
    response = acme_client.get(url("capacities"), {"cluster": "gcp-usw4-a"})
    row = response.data["results"][0]
    assert row["free_gpus"] == 22
    assert row["hourly_price_per_gpu"] == "0.7000"


# SKUs and providers.


@pytest.mark.django_db
def test_gpu_skus_search_by_name(acme_client, fleet):
    response = acme_client.get(url("gpu-skus"), {"q": "h1"})
    assert names(response) == ["H100"]


@pytest.mark.django_db
def test_providers_filter_by_name(acme_client, fleet):
    response = acme_client.get(url("providers"), {"name": "aws"})
    assert names(response) == ["aws"]
