import time
from decimal import Decimal

import pytest

from compliance.models import AuditEvent
from fleet.catalog import ACCELERATOR_ONLY_INSTANCE, import_catalog, provider_from_path
from fleet.models import CatalogOffer, GpuSku, LocationSource, Provider, Region

from .conftest import CATALOG_HEADER, write_csv


@pytest.fixture
def nebius_region(db):
    provider = Provider.objects.create(name="nebius")
    return Region.objects.create(
        provider=provider,
        code="eu-north1",
        city="Mäntsälä",
        country_code="FI",
        latitude=60.63,
        longitude=25.32,
        location_source=LocationSource.REGION_TABLE,
    )


def offer_rows(region="eu-north1"):
    return [
        ["gpu-h100-1", "H100", "1", "2.95", "1.25", region],
        ["gpu-h100-8", "NVIDIA H100", "8", "23.60", "", region],
        ["gpu-l40s-1", "L40S", "1.0", "1.55", "", region],
    ]


def test_provider_from_file_name():
    from pathlib import Path

    assert provider_from_path(Path("nebius_gpu_vms.csv")) == "nebius"
    assert provider_from_path(Path("aws_gpu_prices_by_region.csv")) == "aws"
    assert provider_from_path(Path("verda_datacrunch_gpu_vms.csv")) == "verda"
    assert provider_from_path(Path("catalogs/v8/runpod/vms.csv")) == "runpod"


@pytest.mark.django_db
def test_import_catalog_creates_offers(tmp_path, nebius_region):
    path = write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, offer_rows())

    report = import_catalog([path])

    assert report.files[0].created == 3
    offer = CatalogOffer.objects.get(instance_type="gpu-h100-8")
    assert offer.region == nebius_region
    assert offer.sku.name == "H100"
    assert offer.gpu_count == 8
    assert offer.price == Decimal("23.6000")
    assert offer.spot_price is None
    assert offer.source_file == "nebius_gpu_vms.csv"


@pytest.mark.django_db
def test_import_catalog_maps_aliases_to_one_sku(tmp_path, nebius_region):
    rows = [
        ["a", "H100", "1", "2", "", "eu-north1"],
        ["b", "NVIDIA H100", "1", "2", "", "eu-north1"],
        ["c", "H100-80GB", "1", "2", "", "eu-north1"],
    ]

    import_catalog([write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, rows)])

    assert set(CatalogOffer.objects.values_list("sku__name", flat=True)) == {"H100"}


@pytest.mark.django_db
def test_import_catalog_rejects_bad_rows_with_line_numbers(tmp_path, nebius_region):
    rows = [
        offer_rows()[0],
        ["x1", "Voodoo5", "1", "1.0", "", "eu-north1"],
        ["x2", "H100", "0", "1.0", "", "eu-north1"],
        ["x3", "H100", "two", "1.0", "", "eu-north1"],
        ["x4", "H100", "1", "cheap", "", "eu-north1"],
        ["x5", "H100", "1", "-1", "", "eu-north1"],
        ["x6", "H100", "1", "1.0", "", ""],
        ["x7", "tpu-v5p-8", "1", "1.0", "", "eu-north1"],
        ["x8", "A10", "0.5", "1.0", "", "eu-north1"],
        ["x9", "H100", "1", "", "", "eu-north1"],
    ]
    path = write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, rows)

    report = import_catalog([path])

    reasons = {row.line: row.reason for row in report.files[0].rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert reasons[3].startswith("unknown accelerator")
    assert reasons[4].startswith("invalid AcceleratorCount")
    assert reasons[5].startswith("invalid AcceleratorCount")
    assert reasons[6].startswith("invalid Price")
    assert reasons[7].startswith("invalid Price")
    assert reasons[8] == "Region is empty"
    assert reasons[9].startswith("not a GPU SKU MCM schedules")
    assert "fractional GPU" in reasons[10]
    assert reasons[11].startswith("invalid Price")
    assert str(report.files[0].rejected[0]).startswith("nebius_gpu_vms.csv:3: ")
    assert list(CatalogOffer.objects.values_list("instance_type", flat=True)) == ["gpu-h100-1"]


@pytest.mark.django_db
def test_import_catalog_all_bad_file_changes_nothing(tmp_path):
    rows = [["x", "tpu-v4-8", "1", "1.0", "", "us-central1"], ["y", "H100", "1", "free", "", "us-central1"]]
    path = write_csv(tmp_path / "gcp_gpu_vms.csv", CATALOG_HEADER, rows)

    report = import_catalog([path])

    assert len(report.rejected) == 2
    assert Provider.objects.count() == 0
    assert Region.objects.count() == 0
    assert GpuSku.objects.count() == 0
    assert CatalogOffer.objects.count() == 0
    assert AuditEvent.objects.count() == 0


@pytest.mark.django_db
def test_import_catalog_twice_changes_nothing(tmp_path, places_csv):
    rows = offer_rows("eu-north1") + [["c1", "A40", "1", "0.37", "", "se-stockholm-1"]]
    path = write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, rows)
    import_catalog([path], places_path=places_csv)
    offers_before = list(CatalogOffer.objects.values())
    regions_before = list(Region.objects.values())

    report = import_catalog([path], places_path=places_csv)

    assert report.files[0].unchanged == 4
    assert report.created == 0
    assert report.updated == 0
    assert report.regions_created == 0
    assert list(CatalogOffer.objects.values()) == offers_before
    assert list(Region.objects.values()) == regions_before
    assert AuditEvent.objects.filter(action="fleet.catalog_imported").count() == 1


@pytest.mark.django_db
def test_import_catalog_updates_changed_price(tmp_path, nebius_region):
    import_catalog([write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, offer_rows())])
    cheaper = [["gpu-h100-1", "H100", "1", "2.50", "1.25", "eu-north1"]]

    report = import_catalog([write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, cheaper)])

    assert report.files[0].updated == 1
    assert CatalogOffer.objects.get(instance_type="gpu-h100-1").price == Decimal("2.5000")


@pytest.mark.django_db
def test_import_catalog_merges_zone_rows_keeping_lowest_price(tmp_path, nebius_region):
    rows = [["", "L4", "1", "0.80", "0.30", "eu-north1"], ["", "L4", "1", "0.70", "0.35", "eu-north1"]]

    report = import_catalog([write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, rows)])

    offer = CatalogOffer.objects.get()
    assert report.files[0].merged == 1
    assert offer.instance_type == ACCELERATOR_ONLY_INSTANCE
    assert offer.price == Decimal("0.7000")
    assert offer.spot_price == Decimal("0.3000")


@pytest.mark.django_db
def test_city_in_region_code_matches(tmp_path, places_csv):
    rows = [["a40", "A40", "1", "0.37", "", "se-stockholm-1"]]

    import_catalog([write_csv(tmp_path / "cudo_gpu_vms.csv", CATALOG_HEADER, rows)], places_path=places_csv)

    region = Region.objects.get(provider__name="cudo", code="se-stockholm-1")
    assert region.location_source == LocationSource.CITY_MATCH
    assert region.city == "Stockholm"
    assert region.country_code == "SE"
    assert region.jurisdiction == "eu"
    assert region.latitude == pytest.approx(59.3508)


@pytest.mark.django_db
def test_country_code_region_is_approximate(tmp_path, places_csv):
    rows = [["1x_A40", "A40", "1", "0.40", "", "NO"]]

    import_catalog([write_csv(tmp_path / "runpod_gpu_vms.csv", CATALOG_HEADER, rows)], places_path=places_csv)

    region = Region.objects.get(provider__name="runpod", code="NO")
    assert region.location_source == LocationSource.COUNTRY_APPROXIMATION
    assert region.city == ""
    assert region.jurisdiction == "eea"
    assert region.latitude == pytest.approx(59.9186)


@pytest.mark.django_db
def test_vast_state_location_is_approximate(tmp_path, places_csv):
    rows = [["1x-4090", "RTX4090", "1", "0.30", "", "Missouri, US, NA"]]

    import_catalog([write_csv(tmp_path / "vast_gpu_vms.csv", CATALOG_HEADER, rows)], places_path=places_csv)

    region = Region.objects.get(provider__name="vast")
    assert region.location_source == LocationSource.COUNTRY_APPROXIMATION
    assert region.city == ""
    assert region.latitude == pytest.approx(39.1072)


@pytest.mark.django_db
def test_unlocatable_region_is_rejected_not_guessed(tmp_path, places_csv):
    rows = [["1x-H100", "H100", "1", "1.29", "", "default"]]
    path = write_csv(tmp_path / "hyperbolic_gpu_vms.csv", CATALOG_HEADER, rows)

    report = import_catalog([path], places_path=places_csv)

    assert [str(row) for row in report.rejected] == ["hyperbolic_gpu_vms.csv:2: region cannot be located: 'default'"]
    assert Region.objects.count() == 0
    assert Provider.objects.count() == 0


@pytest.mark.django_db
def test_known_region_keeps_its_region_table_location(tmp_path, nebius_region, places_csv):
    import_catalog([write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, offer_rows())], places_path=places_csv)

    nebius_region.refresh_from_db()
    assert nebius_region.location_source == LocationSource.REGION_TABLE
    assert nebius_region.latitude == 60.63


@pytest.mark.django_db
def test_aws_columns_spot_average_and_region_name(tmp_path, places_csv):
    header = ["InstanceType", "AcceleratorName", "AcceleratorCount", "GpuMemoryGiBTotal", "Region", "RegionName"]
    header += ["Price", "SpotAvg"]
    rows = [["p4de.24xlarge", "NVIDIA A100", "8", "640", "us-east-1-nyc-1", "US East (New York City)", "40.96", "12.5"]]
    path = write_csv(tmp_path / "aws_gpu_prices_by_region.csv", header, rows)

    import_catalog([path], places_path=places_csv)

    offer = CatalogOffer.objects.select_related("region", "sku").get()
    assert offer.sku.name == "A100-80GB"
    assert offer.spot_price == Decimal("12.5000")
    assert offer.region.provider.name == "aws"
    assert offer.region.city == "New York"
    assert offer.region.location_source == LocationSource.CITY_MATCH


@pytest.mark.django_db
def test_explicit_provider_overrides_file_name(tmp_path, nebius_region):
    path = write_csv(tmp_path / "prices.csv", CATALOG_HEADER, offer_rows())

    import_catalog([path], provider="nebius")

    assert CatalogOffer.objects.filter(region=nebius_region).count() == 3


@pytest.mark.django_db
def test_import_catalog_of_thousands_of_rows_takes_seconds(tmp_path, nebius_region):
    rows = [[f"type-{index}", "H100", str(1 + index % 8), "2.0", "", "eu-north1"] for index in range(3000)]
    path = write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, rows)

    started = time.monotonic()
    report = import_catalog([path])
    elapsed = time.monotonic() - started

    assert report.created == 3000
    assert elapsed < 10
