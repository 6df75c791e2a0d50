from decimal import Decimal

import pytest

from compliance.models import AuditEvent
from fleet.builder import BIG_REGION_SKUS, NODES_PER_SKU, build_fleet
from fleet.models import CatalogOffer, Cluster, ClusterCapacity, ClusterState, LocationSource, Provider, Region
from fleet.skus import SKUS, ensure_skus

SKU_NAMES = [spec.name for spec in SKUS]


def make_region(provider_name: str, code: str) -> Region:
    provider, _ = Provider.objects.get_or_create(name=provider_name)
    return Region.objects.create(
        provider=provider, code=code, latitude=0, longitude=0, location_source=LocationSource.REGION_TABLE
    )


def add_offer(region: Region, sku_name: str, gpu_count: int, price: str, instance_type: str | None = None):
    skus = ensure_skus()
    return CatalogOffer.objects.create(
        region=region,
        instance_type=instance_type or f"{sku_name}-x{gpu_count}",
        sku=skus[sku_name],
        gpu_count=gpu_count,
        price=Decimal(price),
        source_file="test.csv",
    )


@pytest.fixture
def small_catalog(db):
    aws = make_region("aws", "us-east-1")
    add_offer(aws, "H100", 8, "55.04")
    add_offer(aws, "H100", 1, "7.50")
    add_offer(aws, "L4", 1, "0.80")
    nebius = make_region("nebius", "eu-north1")
    add_offer(nebius, "H200", 8, "28.00")
    add_offer(make_region("runpod", "NO"), "A40", 1, "0.40")
    return {"aws": aws, "nebius": nebius}


def fleet_snapshot():
    return sorted(
        ClusterCapacity.objects.values_list(
            "cluster__name", "cluster__region__code", "sku__name", "total_gpus", "hourly_price_per_gpu"
        )
    )


@pytest.mark.django_db
def test_build_fleet_creates_one_cluster_per_region(small_catalog):
    report = build_fleet(seed=7)

    assert report.clusters_created == 3
    assert set(Cluster.objects.values_list("name", flat=True)) == {
        "aws-us-east-1-a",
        "nebius-eu-north1-a",
        "runpod-no-a",
    }
    assert set(Cluster.objects.values_list("api_endpoint", flat=True)) == {""}


@pytest.mark.django_db
def test_build_fleet_is_reproducible_with_a_seed(small_catalog):
    build_fleet(seed=7)
    first = fleet_snapshot()
    ClusterCapacity.objects.all().delete()
    Cluster.objects.all().delete()

    build_fleet(seed=7)

    assert fleet_snapshot() == first


@pytest.mark.django_db
def test_build_fleet_with_another_seed_draws_other_counts(small_catalog):
    build_fleet(seed=7)
    first = fleet_snapshot()
    ClusterCapacity.objects.all().delete()
    Cluster.objects.all().delete()

    build_fleet(seed=8)

    assert fleet_snapshot() != first


@pytest.mark.django_db
def test_build_fleet_twice_changes_nothing(small_catalog):
    build_fleet(seed=7)
    before = list(ClusterCapacity.objects.values())

    report = build_fleet(seed=7)

    assert report.clusters_created == 0
    assert report.capacities_created == 0
    assert report.capacities_updated == 0
    assert report.capacities_unchanged == 4
    assert list(ClusterCapacity.objects.values()) == before
    assert AuditEvent.objects.filter(action="fleet.built").count() == 1


@pytest.mark.django_db
def test_price_is_cheapest_offer_per_gpu(small_catalog):
    build_fleet(seed=7)

    capacity = ClusterCapacity.objects.get(cluster__name="aws-us-east-1-a", sku__name="H100")
    assert capacity.hourly_price_per_gpu == Decimal("6.8800")
    assert capacity.pricing_model == "on_demand"


@pytest.mark.django_db
def test_gpu_counts_follow_node_shape_and_node_range(small_catalog):
    build_fleet(seed=7)

    h200 = ClusterCapacity.objects.get(sku__name="H200")
    low, high = NODES_PER_SKU
    assert h200.total_gpus % 8 == 0
    assert low * 8 <= h200.total_gpus <= high * 8
    assert h200.allocatable_gpus == h200.total_gpus
    assert h200.in_use_gpus == 0


@pytest.mark.django_db
def test_region_selling_many_skus_gets_two_clusters(db):
    region = make_region("gcp", "us-central1")
    for sku_name in SKU_NAMES[:BIG_REGION_SKUS]:
        add_offer(region, sku_name, 1, "1.00")

    build_fleet(seed=7)

    assert sorted(Cluster.objects.values_list("name", flat=True)) == ["gcp-us-central1-a", "gcp-us-central1-b"]


@pytest.mark.django_db
def test_max_clusters_takes_each_provider_in_turn(small_catalog):
    make_region("aws", "us-west-2")
    add_offer(Region.objects.get(code="us-west-2"), "L4", 1, "0.80")

    report = build_fleet(seed=7, max_clusters=3)

    assert report.clusters_planned == 3
    assert set(Cluster.objects.values_list("region__provider__name", flat=True)) == {"aws", "nebius", "runpod"}


@pytest.mark.django_db
def test_rebuild_keeps_cluster_state_and_endpoint(small_catalog):
    build_fleet(seed=7)
    Cluster.objects.filter(name="aws-us-east-1-a").update(
        state=ClusterState.CORDONED, api_endpoint="https://127.0.0.1:6443"
    )

    build_fleet(seed=7)

    cluster = Cluster.objects.get(name="aws-us-east-1-a")
    assert cluster.state == ClusterState.CORDONED
    assert cluster.api_endpoint == "https://127.0.0.1:6443"


@pytest.mark.django_db
def test_build_fleet_rejects_zero_max_clusters(small_catalog):
    with pytest.raises(ValueError, match="max_clusters"):
        build_fleet(seed=7, max_clusters=0)
