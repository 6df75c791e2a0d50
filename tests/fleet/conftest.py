"""Fixtures for the fleet tests: small CSV writers and the shared data folder."""

import csv
from pathlib import Path

import pytest
from django.conf import settings

CATALOG_HEADER = ["InstanceType", "AcceleratorName", "AcceleratorCount", "Price", "SpotPrice", "Region"]
REGION_HEADER = [
    "provider",
    "region_code",
    "display_name",
    "city",
    "country",
    "country_code",
    "latitude",
    "longitude",
]
PLACES_HEADER = [
    "nameascii",
    "adm0name",
    "iso_a2",
    "adm1name",
    "latitude",
    "longitude",
    "pop_max",
    "geom_longitude",
    "geom_latitude",
]

# A few Natural Earth-style places: enough to locate Stockholm, Norway and Kansas City.
PLACES = [
    ["Stockholm", "Sweden", "SE", "Stockholm", "59.35", "18.1", "1264000", "18.0973", "59.3508"],
    ["Oslo", "Norway", "NO", "Oslo", "59.92", "10.75", "835000", "10.7480", "59.9186"],
    ["Bergen", "Norway", "NO", "Hordaland", "60.39", "5.32", "213585", "5.3245", "60.3910"],
    ["Kansas City", "United States of America", "US", "Missouri", "39.1", "-94.6", "1469000", "-94.6054", "39.1072"],
    ["New York", "United States of America", "US", "New York", "40.75", "-73.98", "19040000", "-73.9819", "40.7519"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def places_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "places.csv", PLACES_HEADER, PLACES)


@pytest.fixture
def shared_data_dir() -> Path:
    data_dir = Path(settings.MCM_DATA_DIR)
    if not (data_dir / "cloud-regions-jasonwilbur" / "regions_flat.csv").is_file():
        pytest.skip(f"shared data folder not found at MCM_DATA_DIR={data_dir}; set MCM_DATA_DIR to run this test")
    return data_dir
