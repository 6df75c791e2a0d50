import pytest

from compliance.models import AuditEvent
from fleet.models import LocationSource, Provider, Region
from fleet.regions import import_regions, jurisdiction_for
from fleet.services import ImportFileError

from .conftest import REGION_HEADER, write_csv

GOOD_ROWS = [
    ["aws", "eu-central-1", "EU (Frankfurt)", "Frankfurt", "Germany", "DE", "50.1109", "8.6821"],
    ["aws", "us-east-1", "US East (N. Virginia)", "Ashburn", "United States", "US", "39.0438", "-77.4874"],
    ["oci", "eu-zurich-1", "Zurich", "Zurich", "Switzerland", "CH", "47.3769", "8.5417"],
]


@pytest.mark.django_db
def test_import_regions_creates_providers_and_regions(tmp_path):
    path = write_csv(tmp_path / "regions.csv", REGION_HEADER, GOOD_ROWS)

    report = import_regions(path)

    assert report.files[0].created == 3
    assert set(Provider.objects.values_list("name", flat=True)) == {"aws", "oci"}
    frankfurt = Region.objects.get(provider__name="aws", code="eu-central-1")
    assert frankfurt.location_source == LocationSource.REGION_TABLE
    assert frankfurt.jurisdiction == "eu"
    assert frankfurt.latitude == 50.1109


@pytest.mark.django_db
def test_import_regions_rejects_bad_rows_with_line_numbers(tmp_path):
    rows = [
        GOOD_ROWS[0],
        ["aws", "bad-lat", "", "", "", "US", "north", "8.0"],
        ["aws", "far-lon", "", "", "", "US", "10", "200"],
        ["aws", "no-lat", "", "", "", "US", "", "8.0"],
        ["", "no-provider", "", "", "", "US", "10", "8.0"],
        ["aws", "eu-central-1", "again", "", "", "DE", "50", "8"],
    ]
    path = write_csv(tmp_path / "regions.csv", REGION_HEADER, rows)

    report = import_regions(path)

    rejected = {row.line: row.reason for row in report.files[0].rejected}
    assert sorted(rejected) == [3, 4, 5, 6, 7]
    assert "latitude 'north' is not a number" in rejected[3]
    assert "longitude 200.0 is outside" in rejected[4]
    assert "latitude '' is not a number" in rejected[5]
    assert "provider is empty" in rejected[6]
    assert "repeats line 2" in rejected[7]
    assert report.files[0].rejected[0].file == "regions.csv"
    assert list(Region.objects.values_list("code", flat=True)) == ["eu-central-1"]


@pytest.mark.django_db
def test_import_regions_all_bad_file_changes_nothing(tmp_path):
    rows = [["aws", "x", "", "", "", "US", "95", "0"], ["aws", "y", "", "", "", "US", "0", "abc"]]
    path = write_csv(tmp_path / "regions.csv", REGION_HEADER, rows)

    report = import_regions(path)

    assert len(report.rejected) == 2
    assert Provider.objects.count() == 0
    assert Region.objects.count() == 0
    assert AuditEvent.objects.count() == 0


@pytest.mark.django_db
def test_import_regions_twice_changes_nothing(tmp_path):
    path = write_csv(tmp_path / "regions.csv", REGION_HEADER, GOOD_ROWS)
    import_regions(path)
    before = list(Region.objects.values())

    report = import_regions(path)

    assert report.files[0].unchanged == 3
    assert report.files[0].created == 0
    assert report.files[0].updated == 0
    assert list(Region.objects.values()) == before
    assert AuditEvent.objects.filter(action="fleet.regions_imported").count() == 1


@pytest.mark.django_db
def test_import_regions_updates_changed_coordinates(tmp_path):
    import_regions(write_csv(tmp_path / "v1.csv", REGION_HEADER, GOOD_ROWS))
    moved = [GOOD_ROWS[0][:6] + ["50.0", "8.5"]]

    report = import_regions(write_csv(tmp_path / "v2.csv", REGION_HEADER, moved))

    assert report.files[0].updated == 1
    assert Region.objects.get(code="eu-central-1").latitude == 50.0


@pytest.mark.django_db
def test_import_regions_upgrades_approximate_location_to_region_table(tmp_path):
    provider = Provider.objects.create(name="aws")
    Region.objects.create(
        provider=provider,
        code="eu-central-1",
        latitude=52.5,
        longitude=13.4,
        location_source=LocationSource.COUNTRY_APPROXIMATION,
    )

    import_regions(write_csv(tmp_path / "regions.csv", REGION_HEADER, GOOD_ROWS[:1]))

    region = Region.objects.get(code="eu-central-1")
    assert region.location_source == LocationSource.REGION_TABLE
    assert region.city == "Frankfurt"


@pytest.mark.django_db
def test_import_regions_missing_column_raises_and_writes_nothing(tmp_path):
    header = [column for column in REGION_HEADER if column != "longitude"]
    path = write_csv(tmp_path / "regions.csv", header, [row[:7] for row in GOOD_ROWS])

    with pytest.raises(ImportFileError, match="longitude"):
        import_regions(path)

    assert Region.objects.count() == 0


@pytest.mark.django_db
def test_import_regions_missing_file_raises_naming_the_path(tmp_path):
    with pytest.raises(ImportFileError, match="nowhere.csv"):
        import_regions(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    ("country_code", "jurisdiction"),
    [("DE", "eu"), ("fr", "eu"), ("NO", "eea"), ("IS", "eea"), ("CH", "ch"), ("GB", "uk"), ("US", "us"), ("", "")],
)
def test_jurisdiction_for_country_codes(country_code, jurisdiction):
    assert jurisdiction_for(country_code) == jurisdiction
