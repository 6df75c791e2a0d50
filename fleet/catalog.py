"""Import GPU offers from SkyPilot-format catalog CSVs.

Each file lists instance types with ``InstanceType, AcceleratorName, AcceleratorCount, Region,
Price, SpotPrice`` in any column order; other columns are ignored. The AWS price file of
ec2instances.info has ``SpotAvg`` instead of ``SpotPrice``, a ``RegionName`` such as
"US East (Atlanta)" that locates Local Zones, and ``GpuMemoryGiBTotal``, which distinguishes
the 80 GB A100 from the 40 GB one.

The provider is the ``provider`` argument or, without it, the file name up to its first
underscore (``nebius_gpu_vms.csv`` is nebius, ``aws_gpu_prices_by_region.csv`` is aws,
``verda_datacrunch_gpu_vms.csv`` is verda, DataCrunch's name since 2025). A file named
``vms.csv``, as in SkyPilot's own catalog tree, takes the name of its folder.

Rows are rejected, with file, line and reason, for a missing or non-GPU accelerator, a count
that is not a positive whole number, a missing or non-positive price, or an empty region. A
region the database does not know yet is located from its name (see ``fleet.places``). A region
that cannot be located is reported and its rows are skipped, never guessed. Rows repeating an
offer already read (GCP lists each zone of a region) are merged, keeping the lowest prices.

One call is one transaction with one audit event. Importing the same files again changes nothing.
"""

import logging
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import slugify

from fleet.models import CatalogOffer, GpuSku, Region
from fleet.places import PlaceIndex
from fleet.regions import ensure_providers, import_regions, jurisdiction_for
from fleet.services import FileReport, ImportFileError, ImportReport, read_csv_rows, record_import
from fleet.skus import NOT_A_GPU_REASON, ensure_skus, is_non_gpu_accelerator, resolve_sku

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("InstanceType", "AcceleratorName", "AcceleratorCount", "Region", "Price")
SPOT_COLUMNS = ("SpotPrice", "SpotAvg")

# GCP sells GPUs to attach to a VM of any machine type, so its rows have no instance type.
ACCELERATOR_ONLY_INSTANCE = "(accelerators only)"

MAX_PRICE = Decimal("99999999")
PRICE_STEP = Decimal("0.0001")

PLACES_FILE = Path("world-populated-places-naturalearth") / "ne_10m_populated_places_simple.csv"
REGIONS_FILE = Path("cloud-regions-jasonwilbur") / "regions_flat.csv"
SHARED_CATALOGS = (
    Path("gpu-catalog-anycloud"),
    Path("gpu-catalog-skypilot"),
    Path("aws-gpu-pricing-ec2instances") / "aws_gpu_prices_by_region.csv",
)


@dataclass
class OfferRow:
    file_report: FileReport
    line: int
    provider: str
    region_code: str
    location_text: str
    sku: str
    instance_type: str
    gpu_count: int
    price: Decimal
    spot_price: Decimal | None

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.provider, self.region_code, self.instance_type, self.sku, self.gpu_count)


def provider_from_path(path: Path) -> str:
    """Return the provider a catalog file is named after, as a slug."""
    stem = path.parent.name if path.stem == "vms" else path.stem.split("_")[0]
    return slugify(stem)


class RowRejected(Exception):
    """A catalog row that cannot become an offer; the message is the reason reported for it."""


def _parse_price(raw: str | None, column: str, *, optional: bool) -> Decimal | None:
    """Parse a price cell; an optional price that is empty or zero is None."""
    text = (raw or "").strip()
    if not text:
        if optional:
            return None
        raise RowRejected(f"invalid {column}: the cell is empty")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RowRejected(f"invalid {column}: {text!r} is not a number") from None
    if not value.is_finite() or value < 0 or value > MAX_PRICE:
        raise RowRejected(f"invalid {column}: {text!r} is outside 0..{MAX_PRICE}")
    if value == 0:
        # Vast writes 0.00 where it sells no spot capacity, but a free on-demand offer is an error.
        if optional:
            return None
        raise RowRejected(f"invalid {column}: {text!r} is not positive")
    return value.quantize(PRICE_STEP)


def _parse_count(raw: str | None) -> int:
    text = (raw or "").strip()
    try:
        count = float(text)
    except ValueError:
        raise RowRejected(f"invalid AcceleratorCount: {text!r} is not a number") from None
    if 0 < count < 1:
        raise RowRejected(f"invalid AcceleratorCount: {text!r} is a fractional GPU, and MCM schedules whole GPUs")
    if not count.is_integer() or not 1 <= count <= 10_000:
        raise RowRejected(f"invalid AcceleratorCount: {text!r} is not a whole number from 1 to 10000")
    return int(count)


def _memory_per_gpu(row: dict[str, str], count: int) -> float | None:
    total = (row.get("GpuMemoryGiBTotal") or "").strip()
    try:
        return float(total) / count if total else None
    except ValueError:
        return None


def _parse_region(row: dict[str, str]) -> str:
    region_code = (row["Region"] or "").strip()
    if not region_code:
        raise RowRejected("Region is empty")
    if len(region_code) > 64:
        raise RowRejected(f"Region {region_code!r} is longer than 64 characters")
    return region_code


def _parse_accelerator(row: dict[str, str]) -> str:
    accelerator = (row["AcceleratorName"] or "").strip()
    if not accelerator:
        raise RowRejected("AcceleratorName is empty")
    if is_non_gpu_accelerator(accelerator):
        raise RowRejected(f"{NOT_A_GPU_REASON}: {accelerator!r}")
    return accelerator


def _parse_offer(row: dict[str, str], line: int, provider: str, report: FileReport) -> OfferRow:
    """Turn one catalog row into an OfferRow; raises RowRejected with the reason when it cannot."""
    region_code = _parse_region(row)
    accelerator = _parse_accelerator(row)
    count = _parse_count(row["AcceleratorCount"])
    sku = resolve_sku(accelerator, _memory_per_gpu(row, count))
    if sku is None:
        raise RowRejected(f"unknown accelerator: {accelerator!r}")

    price = _parse_price(row["Price"], "Price", optional=False)
    assert price is not None, "a required price is never None"
    spot_column = next((column for column in SPOT_COLUMNS if column in row), "SpotPrice")
    spot_price = _parse_price(row.get(spot_column), spot_column, optional=True)

    instance_type = (row["InstanceType"] or "").strip() or ACCELERATOR_ONLY_INSTANCE
    if len(instance_type) > 128:
        raise RowRejected(f"InstanceType {instance_type[:40]!r}... is longer than 128 characters")
    location_text = (row.get("RegionName") or "").strip() or region_code
    return OfferRow(report, line, provider, region_code, location_text, sku, instance_type, count, price, spot_price)


def _lower(first: Decimal | None, second: Decimal | None) -> Decimal | None:
    candidates = [value for value in (first, second) if value is not None]
    return min(candidates) if candidates else None


def read_offers(path: Path, provider: str, report: FileReport, offers: dict[tuple, OfferRow]) -> None:
    """Parse one catalog file into ``offers``, merging rows that repeat an offer already read."""
    for line, row in read_csv_rows(path, REQUIRED_COLUMNS):
        report.rows += 1
        try:
            offer = _parse_offer(row, line, provider, report)
        except RowRejected as error:
            report.reject(line, str(error))
            continue
        known = offers.get(offer.key)
        if known is None:
            offers[offer.key] = offer
            continue
        known.price = min(known.price, offer.price)
        known.spot_price = _lower(known.spot_price, offer.spot_price)
        report.merged += 1


def locate_regions(offers: dict[tuple, OfferRow], places: PlaceIndex | None) -> dict[tuple[str, str], Region]:
    """Return the Region of every offer's (provider, code), creating located ones; unlocated ones are left out.

    Regions already in the database are used as they are, whatever their location source.
    """
    regions = {
        (region.provider.name, region.code): region
        for region in Region.objects.select_related("provider").filter(
            provider__name__in={offer.provider for offer in offers.values()}
        )
    }
    places = places or PlaceIndex.from_csv(None)
    located = {}
    for offer in offers.values():
        key = (offer.provider, offer.region_code)
        if key not in regions and key not in located:
            located[key] = (offer.location_text, places.locate(offer.provider, offer.location_text))
    providers = ensure_providers({provider for (provider, _), (_, where) in located.items() if where is not None})
    to_create = []
    for (provider, code), (location_text, location) in located.items():
        if location is None:
            continue
        regions[provider, code] = Region(
            provider=providers[provider],
            code=code,
            display_name=location_text[:128],
            city=location.city,
            country=location.country,
            country_code=location.country_code,
            jurisdiction=jurisdiction_for(location.country_code),
            latitude=location.latitude,
            longitude=location.longitude,
            location_source=location.source,
        )
        to_create.append(regions[provider, code])
    Region.objects.bulk_create(to_create)
    return regions


def write_offers(offers: dict[tuple, OfferRow], regions: dict[tuple[str, str], Region], skus: dict[str, GpuSku]):
    """Create or update one CatalogOffer per parsed offer; offers of unlocated regions are rejected."""
    region_ids = [region.pk for region in regions.values()]
    existing = {
        (offer.region_id, offer.instance_type, offer.sku_id, offer.gpu_count): offer
        for offer in CatalogOffer.objects.filter(region_id__in=region_ids)
    }
    to_create, to_update = [], []
    for offer in offers.values():
        report = offer.file_report
        region = regions.get((offer.provider, offer.region_code))
        if region is None:
            report.reject(offer.line, f"region cannot be located: {offer.location_text!r}")
            continue
        sku = skus[offer.sku]
        source_file = Path(report.path).name
        row = existing.get((region.pk, offer.instance_type, sku.pk, offer.gpu_count))
        if row is None:
            to_create.append(
                CatalogOffer(
                    region=region,
                    instance_type=offer.instance_type,
                    sku=sku,
                    gpu_count=offer.gpu_count,
                    price=offer.price,
                    spot_price=offer.spot_price,
                    source_file=source_file,
                )
            )
            report.created += 1
        elif (row.price, row.spot_price, row.source_file) != (offer.price, offer.spot_price, source_file):
            row.price, row.spot_price, row.source_file = offer.price, offer.spot_price, source_file
            to_update.append(row)
            report.updated += 1
        else:
            report.unchanged += 1
    CatalogOffer.objects.bulk_create(to_create, batch_size=1000)
    CatalogOffer.objects.bulk_update(to_update, ["price", "spot_price", "source_file"], batch_size=1000)


def import_catalog(
    paths, provider: str | None = None, *, places_path: Path | None = None, actor="fleet-import"
) -> ImportReport:
    """Import catalog CSVs into CatalogOffer rows; return per-file counts and rejected rows.

    ``places_path`` is a Natural Earth populated-places CSV for locating regions by name; it
    defaults to the copy under ``settings.MCM_DATA_DIR`` when that exists. Raises ImportFileError
    when any file is unreadable or lacks a required column, and nothing is written then.
    """
    started = time.monotonic()
    paths = [Path(path) for path in paths]
    if places_path is None and (Path(settings.MCM_DATA_DIR) / PLACES_FILE).is_file():
        places_path = Path(settings.MCM_DATA_DIR) / PLACES_FILE
    report = ImportReport()
    offers: dict[tuple, OfferRow] = {}
    for path in paths:
        file_report = FileReport(str(path))
        report.files.append(file_report)
        read_offers(path, slugify(provider) if provider else provider_from_path(path), file_report, offers)
    places = PlaceIndex.from_csv(places_path) if places_path else None
    logger.info("importing %d offers from %d catalog files", len(offers), len(paths))

    with transaction.atomic():
        # SKU rows are written only when there is an offer to point at them, so an import whose
        # rows were all rejected changes nothing.
        skus = ensure_skus() if offers else {}
        known_regions = Region.objects.count()
        regions = locate_regions(offers, places)
        report.regions_created = Region.objects.count() - known_regions
        write_offers(offers, regions, skus)
        record_import(actor=actor, action="fleet.catalog_imported", subject_id=_subject(paths), report=report)

    for file_report in report.files:
        file_report.rejected.sort(key=lambda row: row.line)
    report.seconds = time.monotonic() - started
    logger.info(
        "imported catalogs: %d offers created, %d updated, %d unchanged, %d rows rejected, %d regions created"
        " in %.2f s",
        report.created,
        report.updated,
        report.unchanged,
        len(report.rejected),
        report.regions_created,
        report.seconds,
    )
    return report


def _subject(paths: list[Path]) -> str:
    names = ",".join(path.name for path in paths)
    return names if len(names) <= 64 else f"{len(paths)} files"


def shared_catalog_paths(data_dir: Path) -> list[Path]:
    """Return the catalog CSVs of the shared data folder, in a stable order."""
    paths: list[Path] = []
    for entry in SHARED_CATALOGS:
        full = Path(data_dir) / entry
        paths.extend(sorted(full.glob("*.csv")) if full.is_dir() else [full])
    return paths


def import_shared_catalogs(data_dir: str | Path, *, actor="fleet-import") -> dict[str, ImportReport]:
    """Import the region table and every catalog of a shared data folder; return both reports.

    Raises ImportFileError, naming the path, when an expected file is missing.
    """
    data_dir = Path(data_dir)
    regions_path = data_dir / REGIONS_FILE
    catalog_paths = shared_catalog_paths(data_dir)
    for path in [regions_path, *catalog_paths]:
        if not path.is_file():
            raise ImportFileError(f"{path} does not exist; MCM_DATA_DIR must point at the shared data folder")
    return {
        "regions": import_regions(regions_path, actor=actor),
        "catalogs": import_catalog(catalog_paths, places_path=data_dir / PLACES_FILE, actor=actor),
    }
