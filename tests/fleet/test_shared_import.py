"""Import of the real public catalogs under MCM_DATA_DIR (skipped where that folder is absent)."""

import pytest
from django.db.models import Count

from fleet.builder import build_fleet
from fleet.catalog import import_shared_catalogs
from fleet.models import CatalogOffer, Cluster, LocationSource, Provider, Region

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_shared_catalogs_provider_and_region_counts(shared_data_dir):
    import_shared_catalogs(shared_data_dir)

    regions_with_gpus = Region.objects.filter(offers__isnull=False).distinct()
    providers_with_gpus = Provider.objects.filter(regions__offers__isnull=False).distinct()
    assert providers_with_gpus.count() >= 10
    assert regions_with_gpus.count() >= 40


def test_shared_catalogs_record_every_location_source(shared_data_dir):
    import_shared_catalogs(shared_data_dir)

    sources = set(Region.objects.filter(offers__isnull=False).values_list("location_source", flat=True))
    assert sources == {LocationSource.REGION_TABLE, LocationSource.CITY_MATCH, LocationSource.COUNTRY_APPROXIMATION}
    assert not Region.objects.filter(location_source=LocationSource.COUNTRY_APPROXIMATION).exclude(city="").exists()


def test_shared_catalogs_reject_tpus_as_not_gpus(shared_data_dir):
    reports = import_shared_catalogs(shared_data_dir)

    reasons = [row.reason for row in reports["catalogs"].rejected]
    assert any(reason.startswith("not a GPU SKU MCM schedules: 'tpu-") for reason in reasons)
    assert not CatalogOffer.objects.filter(sku__name__istartswith="tpu").exists()


def test_shared_catalogs_import_twice_changes_nothing(shared_data_dir):
    import_shared_catalogs(shared_data_dir)
    offers = CatalogOffer.objects.count()
    regions = Region.objects.count()

    reports = import_shared_catalogs(shared_data_dir)

    assert reports["catalogs"].created == 0
    assert reports["catalogs"].updated == 0
    assert reports["regions"].updated == 0
    assert CatalogOffer.objects.count() == offers
    assert Region.objects.count() == regions


def test_fleet_built_from_shared_catalogs_spans_ten_providers(shared_data_dir):
    import_shared_catalogs(shared_data_dir)

    build_fleet(seed=1)

    per_provider = Cluster.objects.values("region__provider").annotate(clusters=Count("id"))
    assert per_provider.count() >= 10
