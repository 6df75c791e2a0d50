"""A small built-in fleet, written from public facts, so that MCM runs without any catalog file.

Eleven providers and 33 regions at the coordinates of the city each region is in (or next to),
each selling a few SKUs at approximate on-demand list prices as the providers published them
in 2025. Prices change often: treat them as realistic magnitudes for scheduling, not quotes.
Every provider sells its whole list in each of its regions, which real providers do not.

``load_builtin_fleet`` writes these as regions with ``location_source=built_in`` and catalog
offers with ``source_file="built-in"``, then derives clusters from them with ``build_fleet``.
"""

import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from compliance.services import record_event
from fleet.builder import DEFAULT_SEED, BuildReport, build_fleet
from fleet.models import CatalogOffer, LocationSource, Region
from fleet.regions import ensure_providers, jurisdiction_for
from fleet.skus import ensure_skus

logger = logging.getLogger(__name__)

SOURCE_FILE = "built-in"


@dataclass(frozen=True)
class BuiltinRegion:
    provider: str
    code: str
    city: str
    country: str
    country_code: str
    latitude: float
    longitude: float


REGIONS: tuple[BuiltinRegion, ...] = (
    BuiltinRegion("aws", "us-east-1", "Ashburn", "United States", "US", 39.0438, -77.4874),
    BuiltinRegion("aws", "us-west-2", "Boardman", "United States", "US", 45.8399, -119.7006),
    BuiltinRegion("aws", "eu-central-1", "Frankfurt", "Germany", "DE", 50.1109, 8.6821),
    BuiltinRegion("aws", "eu-west-1", "Dublin", "Ireland", "IE", 53.3498, -6.2603),
    BuiltinRegion("aws", "ap-northeast-1", "Tokyo", "Japan", "JP", 35.6762, 139.6503),
    BuiltinRegion("aws", "ap-south-1", "Mumbai", "India", "IN", 19.0760, 72.8777),
    BuiltinRegion("gcp", "us-central1", "Council Bluffs", "United States", "US", 41.2619, -95.8608),
    BuiltinRegion("gcp", "us-east4", "Ashburn", "United States", "US", 39.0438, -77.4874),
    BuiltinRegion("gcp", "europe-west4", "Eemshaven", "Netherlands", "NL", 53.4386, 6.8355),
    BuiltinRegion("gcp", "asia-southeast1", "Singapore", "Singapore", "SG", 1.3521, 103.8198),
    BuiltinRegion("azure", "eastus", "Boydton", "United States", "US", 36.6676, -78.3875),
    BuiltinRegion("azure", "westeurope", "Amsterdam", "Netherlands", "NL", 52.3676, 4.9041),
    BuiltinRegion("azure", "swedencentral", "Gävle", "Sweden", "SE", 60.6749, 17.1413),
    BuiltinRegion("azure", "japaneast", "Tokyo", "Japan", "JP", 35.6762, 139.6503),
    BuiltinRegion("oci", "us-ashburn-1", "Ashburn", "United States", "US", 39.0438, -77.4874),
    BuiltinRegion("oci", "eu-frankfurt-1", "Frankfurt", "Germany", "DE", 50.1109, 8.6821),
    BuiltinRegion("oci", "uk-london-1", "London", "United Kingdom", "GB", 51.5072, -0.1276),
    BuiltinRegion("lambda", "us-west-1", "San Francisco", "United States", "US", 37.7749, -122.4194),
    BuiltinRegion("lambda", "us-south-1", "Austin", "United States", "US", 30.2672, -97.7431),
    BuiltinRegion("nebius", "eu-north1", "Mäntsälä", "Finland", "FI", 60.6333, 25.3167),
    BuiltinRegion("nebius", "eu-west1", "Paris", "France", "FR", 48.8566, 2.3522),
    BuiltinRegion("nebius", "us-central1", "Kansas City", "United States", "US", 39.0997, -94.5786),
    BuiltinRegion("coreweave", "ORD1", "Chicago", "United States", "US", 41.8781, -87.6298),
    BuiltinRegion("coreweave", "LGA1", "New York", "United States", "US", 40.7128, -74.0060),
    BuiltinRegion("coreweave", "LAS1", "Las Vegas", "United States", "US", 36.1699, -115.1398),
    BuiltinRegion("runpod", "EU-RO-1", "Bucharest", "Romania", "RO", 44.4268, 26.1025),
    BuiltinRegion("runpod", "CA-MTL-1", "Montreal", "Canada", "CA", 45.5019, -73.5674),
    BuiltinRegion("runpod", "US-GA-1", "Atlanta", "United States", "US", 33.7490, -84.3880),
    BuiltinRegion("digitalocean", "tor1", "Toronto", "Canada", "CA", 43.6532, -79.3832),
    BuiltinRegion("digitalocean", "atl1", "Atlanta", "United States", "US", 33.7490, -84.3880),
    BuiltinRegion("scaleway", "fr-par", "Paris", "France", "FR", 48.8566, 2.3522),
    BuiltinRegion("scaleway", "pl-waw", "Warsaw", "Poland", "PL", 52.2297, 21.0122),
    BuiltinRegion("paperspace", "NY2", "Secaucus", "United States", "US", 40.7895, -74.0565),
)

# (instance type, SKU, GPUs, USD per instance-hour) that each provider sells in all its regions.
OFFERS: dict[str, tuple[tuple[str, str, int, str], ...]] = {
    "aws": (
        ("p5.48xlarge", "H100", 8, "55.04"),
        ("p4d.24xlarge", "A100", 8, "21.96"),
        ("g6e.xlarge", "L40S", 1, "1.861"),
        ("g6.xlarge", "L4", 1, "0.805"),
        ("g5.xlarge", "A10G", 1, "1.006"),
    ),
    "gcp": (
        ("a3-highgpu-8g", "H100", 8, "88.25"),
        ("a2-ultragpu-1g", "A100-80GB", 1, "5.07"),
        ("g2-standard-4", "L4", 1, "0.71"),
    ),
    "azure": (
        ("Standard_ND96isr_H100_v5", "H100", 8, "98.32"),
        ("Standard_NC24ads_A100_v4", "A100-80GB", 1, "3.67"),
        ("Standard_NV36ads_A10_v5", "A10", 1, "3.20"),
    ),
    "oci": (
        ("BM.GPU.H100.8", "H100", 8, "80.00"),
        ("BM.GPU.A100-v2.8", "A100-80GB", 8, "32.00"),
        ("VM.GPU.A10.1", "A10", 1, "2.00"),
    ),
    "lambda": (
        ("gpu_8x_h100_sxm5", "H100", 8, "23.92"),
        ("gpu_1x_a100_sxm4", "A100", 1, "1.29"),
        ("gpu_1x_gh200", "GH200", 1, "1.49"),
    ),
    "nebius": (
        ("gpu-h100-sxm_8gpu-128vcpu-1600gb", "H100", 8, "23.60"),
        ("gpu-h200-sxm_8gpu-128vcpu-1600gb", "H200", 8, "28.00"),
        ("gpu-l40s-a_1gpu-8vcpu-32gb", "L40S", 1, "1.55"),
    ),
    "coreweave": (
        ("gd-8xh100ib-i128", "H100", 8, "49.24"),
        ("gd-8xa100-i128", "A100-80GB", 8, "21.60"),
        ("gd-8xl40s-i128", "L40S", 8, "18.00"),
    ),
    "runpod": (
        ("1x_H100-SXM_SECURE", "H100", 1, "2.69"),
        ("1x_A100-80GB_SECURE", "A100-80GB", 1, "1.64"),
        ("1x_RTX4090_SECURE", "RTX4090", 1, "0.69"),
    ),
    "digitalocean": (
        ("gpu-h100x8-640gb", "H100", 8, "23.92"),
        ("gpu-l40sx1-48gb", "L40S", 1, "1.57"),
    ),
    "scaleway": (
        ("H100-1-80G", "H100", 1, "2.73"),
        ("L40S-1-48G", "L40S", 1, "1.40"),
        ("L4-1-24G", "L4", 1, "0.75"),
    ),
    "paperspace": (
        ("H100", "H100", 1, "5.95"),
        ("A100-80G", "A100-80GB", 1, "3.18"),
    ),
}


def _write_regions(providers) -> dict[tuple[str, str], Region]:
    """Create the built-in regions that do not exist yet; existing ones keep their location."""
    regions = {
        (region.provider.name, region.code): region
        for region in Region.objects.select_related("provider").filter(provider__name__in=providers)
    }
    to_create = [
        Region(
            provider=providers[spec.provider],
            code=spec.code,
            display_name=f"{spec.city}, {spec.country}",
            city=spec.city,
            country=spec.country,
            country_code=spec.country_code,
            jurisdiction=jurisdiction_for(spec.country_code),
            latitude=spec.latitude,
            longitude=spec.longitude,
            location_source=LocationSource.BUILT_IN,
        )
        for spec in REGIONS
        if (spec.provider, spec.code) not in regions
    ]
    for region in Region.objects.bulk_create(to_create):
        regions[region.provider.name, region.code] = region
    return regions


def _write_offers(regions: dict[tuple[str, str], Region]) -> tuple[int, int]:
    skus = ensure_skus()
    region_ids = [regions[spec.provider, spec.code].pk for spec in REGIONS]
    existing = {
        (offer.region_id, offer.instance_type, offer.sku_id, offer.gpu_count): offer
        for offer in CatalogOffer.objects.filter(region_id__in=region_ids)
    }
    to_create, to_update = [], []
    for spec in REGIONS:
        region = regions[spec.provider, spec.code]
        for instance_type, sku_name, gpu_count, price in OFFERS[spec.provider]:
            sku = skus[sku_name]
            offer = existing.get((region.pk, instance_type, sku.pk, gpu_count))
            if offer is None:
                to_create.append(
                    CatalogOffer(
                        region=region,
                        instance_type=instance_type,
                        sku=sku,
                        gpu_count=gpu_count,
                        price=Decimal(price),
                        source_file=SOURCE_FILE,
                    )
                )
                continue
            # An imported catalog's offer for the same instance is newer data and stays as it is.
            if offer.source_file == SOURCE_FILE and offer.price != Decimal(price):
                offer.price = Decimal(price)
                to_update.append(offer)
    CatalogOffer.objects.bulk_create(to_create)
    CatalogOffer.objects.bulk_update(to_update, ["price"])
    return len(to_create), len(to_update)


def load_builtin_fleet(seed: int = DEFAULT_SEED, *, actor="fleet-builtin") -> dict:
    """Write the built-in providers, regions and offers, then build their clusters; return counts.

    The result has ``regions_created``, ``offers_created``, ``offers_updated`` and ``build`` (the
    BuildReport). Loading again changes nothing.
    """
    with transaction.atomic():
        providers = ensure_providers({spec.provider for spec in REGIONS})
        known_regions = Region.objects.count()
        regions = _write_regions(providers)
        regions_created = Region.objects.count() - known_regions
        offers_created, offers_updated = _write_offers(regions)
        if regions_created or offers_created or offers_updated:
            record_event(
                actor=actor,
                action="fleet.builtin_loaded",
                subject=("fleet.import", SOURCE_FILE),
                after={"regions_created": regions_created, "offers_created": offers_created},
            )
        build: BuildReport = build_fleet(
            seed, region_ids=[regions[spec.provider, spec.code].pk for spec in REGIONS], actor=actor
        )
    logger.info("loaded the built-in fleet: %d regions and %d offers created", regions_created, offers_created)
    return {
        "regions_created": regions_created,
        "offers_created": offers_created,
        "offers_updated": offers_updated,
        "build": build,
    }
