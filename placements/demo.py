"""Demo customers and deployments whose users live in real cities.

Deployments are generated from a seed so that a demo run is reproducible. SKUs are drawn in
proportion to the fleet's GPUs of each SKU. Replica counts are scaled so that the requested GPUs
are about ``target_utilisation`` of the fleet's free GPUs. Each deployment's users live in one to
three cities drawn in proportion to their metro population.
"""

import csv
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.db.models import F, Sum

from compliance.lock_services import record_seeded_lock
from compliance.models import PlacementLock
from compliance.services import record_event
from fleet.models import ClusterCapacity, GpuSku, Provider, Region
from placements.models import Customer, DemandOrigin, Deployment, RegionPreference, Tier
from placements.scheduler.geo import haversine_km

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class City:
    name: str
    country_code: str
    latitude: float
    longitude: float
    population: int


# Large metro areas, used when the Natural Earth populated places are not available. Coordinates
# are city centres rounded to 0.01 degrees; populations are rounded metro estimates (2020s).
BUILT_IN_CITIES = [
    City("Tokyo", "JP", 35.69, 139.69, 37_000_000),
    City("Delhi", "IN", 28.61, 77.21, 32_000_000),
    City("Shanghai", "CN", 31.23, 121.47, 28_000_000),
    City("Sao Paulo", "BR", -23.55, -46.63, 22_000_000),
    City("Mexico City", "MX", 19.43, -99.13, 22_000_000),
    City("Mumbai", "IN", 19.08, 72.88, 21_000_000),
    City("Osaka", "JP", 34.69, 135.50, 19_000_000),
    City("New York", "US", 40.71, -74.01, 19_000_000),
    City("Seoul", "KR", 37.57, 126.98, 25_000_000),
    City("Jakarta", "ID", -6.21, 106.85, 33_000_000),
    City("Los Angeles", "US", 34.05, -118.24, 13_000_000),
    City("London", "GB", 51.51, -0.13, 14_000_000),
    City("Paris", "FR", 48.86, 2.35, 11_000_000),
    City("Istanbul", "TR", 41.01, 28.98, 15_000_000),
    City("Lagos", "NG", 6.52, 3.38, 15_000_000),
    City("Buenos Aires", "AR", -34.60, -58.38, 15_000_000),
    City("Chicago", "US", 41.88, -87.63, 9_500_000),
    City("Singapore", "SG", 1.35, 103.82, 6_000_000),
    City("Sydney", "AU", -33.87, 151.21, 5_300_000),
    City("Toronto", "CA", 43.65, -79.38, 6_400_000),
    City("Frankfurt", "DE", 50.11, 8.68, 2_300_000),
    City("Berlin", "DE", 52.52, 13.40, 4_500_000),
    City("Madrid", "ES", 40.42, -3.70, 6_700_000),
    City("Milan", "IT", 45.46, 9.19, 4_300_000),
    City("Amsterdam", "NL", 52.37, 4.90, 2_500_000),
    City("Stockholm", "SE", 59.33, 18.07, 2_400_000),
    City("Warsaw", "PL", 52.23, 21.01, 3_100_000),
    City("Dublin", "IE", 53.35, -6.26, 1_400_000),
    City("San Francisco", "US", 37.77, -122.42, 6_700_000),
    City("Seattle", "US", 47.61, -122.33, 4_000_000),
    City("Dallas", "US", 32.78, -96.80, 7_600_000),
    City("Miami", "US", 25.76, -80.19, 6_100_000),
    City("Johannesburg", "ZA", -26.20, 28.05, 10_000_000),
    City("Dubai", "AE", 25.20, 55.27, 3_500_000),
    City("Bangalore", "IN", 12.97, 77.59, 13_000_000),
    City("Hong Kong", "HK", 22.32, 114.17, 7_500_000),
    City("Taipei", "TW", 25.03, 121.57, 7_000_000),
    City("Melbourne", "AU", -37.81, 144.96, 5_000_000),
    City("Santiago", "CL", -33.45, -70.67, 6_900_000),
    City("Cairo", "EG", 30.04, 31.24, 21_000_000),
]

EU_COUNTRIES = {"AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "NL", "PL", "SE", "PT", "CZ", "NO"}


def load_cities(data_dir: Path | None, min_population: int = 1_000_000) -> tuple[list[City], str]:
    """Return the demand cities and where they came from."""
    path = data_dir / "world-populated-places-naturalearth" / "ne_10m_populated_places_simple.csv" if data_dir else None
    if path is None or not path.is_file():
        return BUILT_IN_CITIES, "built-in city list"
    cities = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            population = int(float(row["pop_max"] or 0))
            if population < min_population:
                continue
            cities.append(
                City(
                    name=row["nameascii"] or row["name"],
                    country_code=(row["iso_a2"] or "")[:2] if row["iso_a2"] not in ("-99", "") else "",
                    latitude=float(row["geom_latitude"]),
                    longitude=float(row["geom_longitude"]),
                    population=population,
                )
            )
    return cities, f"{path.name} (metro population >= {min_population:,})"


@dataclass(frozen=True)
class DemoCustomer:
    name: str
    tier: str
    # "eu": EU-only jurisdiction lock; "provider": allowed providers; "": none.
    lock: str = ""


DEMO_CUSTOMERS = [
    DemoCustomer("helix-health", Tier.CRITICAL, lock="eu"),
    DemoCustomer("northwind-bank", Tier.CRITICAL, lock="provider"),
    DemoCustomer("acme-ai", Tier.PREMIUM),
    DemoCustomer("globex", Tier.PREMIUM),
    DemoCustomer("initech", Tier.STANDARD),
    DemoCustomer("umbrella-eu", Tier.STANDARD, lock="eu"),
    DemoCustomer("stark-labs", Tier.STANDARD),
    DemoCustomer("hobbyist-hub", Tier.BEST_EFFORT),
]


def free_gpus_by_sku() -> dict[str, int]:
    rows = (
        ClusterCapacity.objects.filter(cluster__state="active")
        .values("sku__name")
        .annotate(free=Sum(F("allocatable_gpus") - F("in_use_gpus")))
    )
    return {row["sku__name"]: row["free"] for row in rows if row["free"] > 0}


def weighted_choice(rng: random.Random, items: list, weights: list[float]):
    return rng.choices(items, weights=weights, k=1)[0]


@transaction.atomic
def seed_demo(*, count: int = 240, seed: int = 7, target_utilisation: float = 0.7, data_dir: Path | None = None):
    """Create the demo customers and ``count`` deployments; existing ones are left as they are.

    Returns (customers, deployments created, city source).
    """
    rng = random.Random(seed)
    cities, city_source = load_cities(data_dir)
    free = free_gpus_by_sku()
    if not free:
        raise ValueError("the fleet has no free GPUs: import a catalog and build the fleet first")
    skus = {sku.name: sku for sku in GpuSku.objects.filter(name__in=free)}
    sku_names = sorted(free)
    regions = list(Region.objects.filter(clusters__isnull=False).select_related("provider").distinct())
    providers = sorted({region.provider.name for region in regions})

    customers = {}
    for spec in DEMO_CUSTOMERS:
        customer, _ = Customer.objects.get_or_create(
            name=spec.name, defaults={"tier": spec.tier, "display_name": spec.name.replace("-", " ").title()}
        )
        customers[spec.name] = (customer, spec)

    # Replica counts: the mean deployment requests budget / count GPUs of its SKU.
    budget = sum(free.values()) * target_utilisation
    sku_weights = [free[name] for name in sku_names]
    created = 0
    specs = list(customers.values())
    for index in range(count):
        customer, spec = specs[index % len(specs)]
        name = f"model-{index:03d}"
        if Deployment.objects.filter(customer=customer, name=name).exists():
            continue
        sku_name = weighted_choice(rng, sku_names, sku_weights)
        gpus = weighted_choice(rng, [1, 2, 4, 8], [0.45, 0.25, 0.2, 0.1])
        mean_gpus = budget / count
        replicas = max(2, min(24, round(rng.expovariate(1 / max(mean_gpus / gpus, 1)))))
        deployment = Deployment.objects.create(
            customer=customer,
            name=name,
            sku=skus[sku_name],
            gpus_per_replica=gpus,
            min_replicas=1,
            desired_replicas=replicas,
            max_replicas=replicas * 2,
            min_providers=2 if rng.random() < 0.1 and not spec.lock else 1,
        )
        alternatives = [
            other for other in sku_names if other != sku_name and skus[other].memory_gib >= skus[sku_name].memory_gib
        ]
        if alternatives and rng.random() < 0.3:
            deployment.alternative_skus.add(skus[rng.choice(alternatives)])
        add_origins(rng, deployment, cities, eu_only=spec.lock == "eu")
        nearest = add_preferences(deployment, regions, eu_only=spec.lock == "eu")
        if not spec.lock and len(nearest) >= 2 and rng.random() < 0.05:
            lock = PlacementLock.objects.create(
                deployment=deployment, reason="Latency contract: served only from the two regions nearest its users."
            )
            lock.allowed_regions.set(nearest[:2])
            record_seeded_lock(actor="demo", lock=lock)
        created += 1

    add_customer_locks(customers, providers)
    record_event(
        actor="demo",
        action="demo.seeded",
        subject=("placements.deployment", "*"),
        after={"created": created, "seed": seed, "city_source": city_source},
    )
    return [customer for customer, _ in customers.values()], created, city_source


def add_origins(rng: random.Random, deployment: Deployment, cities: list[City], *, eu_only: bool) -> None:
    pool = [city for city in cities if city.country_code in EU_COUNTRIES] if eu_only else cities
    pool = pool or cities
    picked: list[City] = []
    for _ in range(rng.randint(1, 3)):
        city = weighted_choice(rng, pool, [math.sqrt(city.population) for city in pool])
        if city not in picked:
            picked.append(city)
    raw_shares = [rng.uniform(1, 3) for _ in picked]
    total = sum(raw_shares)
    shares = [round(share / total, 4) for share in raw_shares]
    shares[-1] = round(1 - sum(shares[:-1]), 4)
    DemandOrigin.objects.bulk_create(
        DemandOrigin(
            deployment=deployment,
            name=city.name,
            country_code=city.country_code,
            latitude=city.latitude,
            longitude=city.longitude,
            share=share,
        )
        for city, share in zip(picked, shares, strict=True)
        if share > 0
    )


def add_preferences(deployment: Deployment, regions: list[Region], *, eu_only: bool) -> list[Region]:
    """Prefer the three regions nearest the deployment's largest demand origin; return them."""
    origin = deployment.demand_origins.order_by("-share").first()
    if origin is None:
        return []
    pool = [region for region in regions if region.jurisdiction == "eu"] if eu_only else regions
    nearest = sorted(
        pool, key=lambda region: haversine_km(origin.latitude, origin.longitude, region.latitude, region.longitude)
    )
    RegionPreference.objects.bulk_create(
        RegionPreference(deployment=deployment, region=region, rank=rank) for rank, region in enumerate(nearest[:3])
    )
    return nearest[:3]


def add_customer_locks(customers: dict, providers: list[str]) -> None:
    for customer, spec in customers.values():
        if not spec.lock or customer.locks.exists():
            continue
        if spec.lock == "eu":
            lock = PlacementLock.objects.create(
                customer=customer,
                allowed_jurisdictions=["eu"],
                reason="Data residency: EU customer data stays in the EU.",
            )
        else:
            lock = PlacementLock.objects.create(customer=customer, reason="Vendor policy: approved providers only.")
            allowed = [name for name in ("aws", "gcp", "azure") if name in providers] or providers[:2]
            lock.allowed_providers.set(Provider.objects.filter(name__in=allowed))
        record_seeded_lock(actor="demo", lock=lock)


def provider_region_counts() -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for region in Region.objects.filter(clusters__isnull=False).distinct().select_related("provider"):
        counts[region.provider.name] += 1
    return dict(counts)


def build_catalog_fleet(*, catalog: str, deployments: int, reset: bool, progress=print) -> None:
    """Migrate, then build the demo fleet from ``catalog`` and plan it, unless a plan exists and ``reset`` is off.

    Benchmarks use it so that they measure the same fleet as the demo.
    """
    import os
    import time

    from django.core.management import call_command

    from placements.services import current_plan

    call_command("migrate", verbosity=0, interactive=False)
    if not reset and current_plan() is not None:
        return
    progress(f"Building the fleet from {catalog} with {deployments} deployments (mcm_demo)...")
    started = time.monotonic()
    with open(os.devnull, "w") as quiet:
        call_command(
            "mcm_demo",
            headless=True,
            no_clusters=True,
            catalog=[catalog],
            deployments=deployments,
            reset=reset,
            stdout=quiet,
        )
    progress(f"  built and planned in {time.monotonic() - started:.1f} s")
