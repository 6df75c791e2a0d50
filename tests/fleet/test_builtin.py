import pytest

from fleet.builtin import REGIONS, load_builtin_fleet
from fleet.models import CatalogOffer, Cluster, LocationSource, Provider, Region


@pytest.mark.django_db
def test_builtin_fleet_loads_without_shared_data(settings, tmp_path):
    settings.MCM_DATA_DIR = tmp_path / "absent"

    result = load_builtin_fleet()

    assert Provider.objects.count() >= 10
    assert 25 <= Region.objects.count() <= 40
    assert set(Region.objects.values_list("location_source", flat=True)) == {LocationSource.BUILT_IN}
    assert Cluster.objects.count() == len(REGIONS)
    assert result["build"].capacities_created == CatalogOffer.objects.values("region", "sku").distinct().count()


@pytest.mark.django_db
def test_builtin_regions_have_jurisdictions():
    load_builtin_fleet()

    assert Region.objects.get(provider__name="scaleway", code="pl-waw").jurisdiction == "eu"
    assert Region.objects.get(provider__name="oci", code="uk-london-1").jurisdiction == "uk"
    assert Region.objects.get(provider__name="aws", code="us-east-1").jurisdiction == "us"


@pytest.mark.django_db
def test_load_builtin_fleet_twice_changes_nothing():
    load_builtin_fleet()
    before = sorted(Cluster.objects.values_list("name", "capacities__total_gpus"))

    result = load_builtin_fleet()

    assert result["regions_created"] == 0
    assert result["offers_created"] == 0
    assert result["build"].capacities_created == 0
    assert result["build"].capacities_updated == 0
    assert sorted(Cluster.objects.values_list("name", "capacities__total_gpus")) == before


def test_builtin_module_does_not_read_shared_data():
    from pathlib import Path

    import fleet.builtin

    source = Path(fleet.builtin.__file__).read_text()
    assert "MCM_DATA_DIR" not in source
    assert "shared" not in source
