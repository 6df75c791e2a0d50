"""Import providers and regions, with coordinates, from a region table CSV.

The table has one row per region with the columns ``provider, region_code, display_name, city,
country, country_code, latitude, longitude``; other columns are ignored. Regions imported from it
get ``location_source=region_table``, and a region that a catalog import had located by a city or
country match is upgraded to the table's coordinates.

A row with a missing or out-of-range latitude or longitude, or without provider or region code,
is rejected with its file, line and reason and writes nothing. The whole import is one
transaction, and importing the same file again changes nothing.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.utils.text import slugify

from fleet.models import LocationSource, Provider, Region
from fleet.services import FileReport, ImportReport, read_csv_rows, record_import

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "provider",
    "region_code",
    "display_name",
    "city",
    "country",
    "country_code",
    "latitude",
    "longitude",
)

# The 27 member states of the European Union (ISO 3166-1 alpha-2), as of 2025.
EU_MEMBER_STATES = frozenset("AT BE BG HR CY CZ DK EE FI FR DE GR IE IT LV LT LU MT NL PL PT RO SK SI ES SE HU".split())
# EEA members outside the EU: GDPR applies there through the EEA agreement.
EEA_NON_EU_STATES = frozenset({"IS", "LI", "NO"})

REGION_FIELDS = ("display_name", "city", "country", "country_code", "jurisdiction", "latitude", "longitude")


def jurisdiction_for(country_code: str) -> str:
    """Return the legal area a country's data falls under.

    ``eu`` for EU member states, ``eea`` for Iceland, Liechtenstein and Norway, ``uk`` for the
    United Kingdom, and the lower-case ISO code for every other country (``us``, ``ch``, ``jp``,
    ...). An empty code gives an empty jurisdiction.
    """
    code = country_code.strip().upper()
    if code in EU_MEMBER_STATES:
        return "eu"
    if code in EEA_NON_EU_STATES:
        return "eea"
    if code == "GB":
        return "uk"
    return code.lower()


@dataclass(frozen=True)
class RegionRow:
    provider: str
    code: str
    values: dict


def _parse_row(row: dict[str, str], line: int, report: FileReport) -> RegionRow | None:
    provider = slugify(row["provider"] or "")
    code = (row["region_code"] or "").strip()
    if not provider:
        report.reject(line, "provider is empty")
        return None
    if not code or len(code) > 64:
        report.reject(line, f"region_code {code!r} is empty or longer than 64 characters")
        return None
    coordinates = []
    for column, limit in (("latitude", 90), ("longitude", 180)):
        raw = (row[column] or "").strip()
        try:
            value = float(raw)
        except ValueError:
            report.reject(line, f"{column} {raw!r} is not a number")
            return None
        if not -limit <= value <= limit:
            report.reject(line, f"{column} {value} is outside -{limit}..{limit}")
            return None
        coordinates.append(value)
    country_code = (row["country_code"] or "").strip().upper()
    if country_code and len(country_code) != 2:
        report.reject(line, f"country_code {country_code!r} is not a two-letter ISO code")
        return None
    values = {
        "display_name": (row["display_name"] or "").strip()[:128],
        "city": (row["city"] or "").strip()[:128],
        "country": (row["country"] or "").strip()[:128],
        "country_code": country_code,
        "jurisdiction": jurisdiction_for(country_code),
        "latitude": coordinates[0],
        "longitude": coordinates[1],
    }
    return RegionRow(provider, code, values)


def read_region_rows(path: Path, report: FileReport) -> list[RegionRow]:
    """Parse and validate a region table; invalid and duplicate rows go to ``report.rejected``."""
    rows: list[RegionRow] = []
    first_line: dict[tuple[str, str], int] = {}
    for line, raw in read_csv_rows(path, REQUIRED_COLUMNS):
        report.rows += 1
        parsed = _parse_row(raw, line, report)
        if parsed is None:
            continue
        key = (parsed.provider, parsed.code)
        if key in first_line:
            report.reject(line, f"region {parsed.provider}/{parsed.code} repeats line {first_line[key]}")
            continue
        first_line[key] = line
        rows.append(parsed)
    return rows


def ensure_providers(names: set[str]) -> dict[str, Provider]:
    """Return providers by name, creating the missing ones in one query."""
    providers = {provider.name: provider for provider in Provider.objects.filter(name__in=names)}
    missing = [Provider(name=name, display_name=name) for name in sorted(names - providers.keys())]
    for provider in Provider.objects.bulk_create(missing):
        providers[provider.name] = provider
    return providers


def import_regions(path: str | Path, *, actor="fleet-import") -> ImportReport:
    """Import a region table into Provider and Region rows; return per-file counts and rejected rows.

    Raises ImportFileError when the file is unreadable or lacks a required column; nothing is
    written then.
    """
    started = time.monotonic()
    path = Path(path)
    file_report = FileReport(str(path))
    report = ImportReport(files=[file_report])
    rows = read_region_rows(path, file_report)
    logger.info("importing %d regions from %s", len(rows), path)

    with transaction.atomic():
        providers = ensure_providers({row.provider for row in rows})
        existing = {
            (region.provider.name, region.code): region
            for region in Region.objects.select_related("provider").filter(provider__name__in=providers)
        }
        to_create, to_update = [], []
        for row in rows:
            region = existing.get((row.provider, row.code))
            if region is None:
                to_create.append(
                    Region(
                        provider=providers[row.provider],
                        code=row.code,
                        location_source=LocationSource.REGION_TABLE,
                        **row.values,
                    )
                )
            elif region.location_source != LocationSource.REGION_TABLE or any(
                getattr(region, name) != value for name, value in row.values.items()
            ):
                for name, value in row.values.items():
                    setattr(region, name, value)
                region.location_source = LocationSource.REGION_TABLE
                to_update.append(region)
            else:
                file_report.unchanged += 1
        Region.objects.bulk_create(to_create)
        Region.objects.bulk_update(to_update, [*REGION_FIELDS, "location_source"])
        file_report.created, file_report.updated = len(to_create), len(to_update)
        report.regions_created, report.regions_updated = len(to_create), len(to_update)
        record_import(actor=actor, action="fleet.regions_imported", subject_id=path.name, report=report)

    report.seconds = time.monotonic() - started
    logger.info(
        "imported regions from %s: %d created, %d updated, %d unchanged, %d rejected in %.2f s",
        path,
        file_report.created,
        file_report.updated,
        file_report.unchanged,
        len(file_report.rejected),
        report.seconds,
    )
    return report
