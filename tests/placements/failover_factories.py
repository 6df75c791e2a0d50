"""Builders for the failover tests: a fleet with GPU capacity per cluster, deployments, outages, recoveries.

The fleet has two providers and five regions, one H100 cluster in each region except
aws/us-east-1, which has two:

- aws/us-east-1 (us): aws-use1-a, aws-use1-b
- aws/eu-west-1 (eu): aws-euw1-a
- gcp/us-east4 (us): gcp-use4-a
- gcp/us-west4 (us): gcp-usw4-a
- gcp/europe-west4 (eu): gcp-euw4-a
"""

from decimal import Decimal
from types import SimpleNamespace

from django.utils import timezone

from compliance.models import PlacementLock
from fleet.models import (
    Cluster,
    ClusterCapacity,
    ClusterHealth,
    GpuSku,
    LocationSource,
    Outage,
    OutageScope,
    OutageSource,
    Provider,
    Region,
)
from placements.models import Assignment, Customer, Deployment, PlanTrigger
from placements.planning import run_plan
from placements.scheduler.problem import SchedulerOptions
from placements.services import create_deployment

FAST = SchedulerOptions(time_limit_s=10, gap_target=0.0)

REGIONS = [
    # provider, code, city, jurisdiction, latitude, longitude
    ("aws", "us-east-1", "Ashburn", "us", 39.0, -77.5),
    ("aws", "eu-west-1", "Dublin", "eu", 53.3, -6.3),
    ("gcp", "us-east4", "Ashburn", "us", 39.0, -77.4),
    ("gcp", "us-west4", "Las Vegas", "us", 36.2, -115.1),
    ("gcp", "europe-west4", "Eemshaven", "eu", 53.4, 6.8),
]
CLUSTERS = [
    # name, region code, USD per GPU-hour
    ("aws-use1-a", "us-east-1", "2.00"),
    ("aws-use1-b", "us-east-1", "2.10"),
    ("aws-euw1-a", "eu-west-1", "2.20"),
    ("gcp-use4-a", "us-east4", "2.50"),
    ("gcp-usw4-a", "us-west4", "2.60"),
    ("gcp-euw4-a", "europe-west4", "2.70"),
]
NEW_YORK = {"name": "New York", "country_code": "US", "latitude": 40.7, "longitude": -74.0, "share": 1.0}


def build_fleet(free: dict[str, int]) -> SimpleNamespace:
    """Create the fleet with ``free[name]`` free H100 GPUs per cluster (0 for a cluster left out)."""
    h100 = GpuSku.objects.create(name="H100", memory_gib=80)
    providers = {name: Provider.objects.create(name=name, display_name=name.upper()) for name in ("aws", "gcp")}
    regions = {}
    for provider, code, city, jurisdiction, latitude, longitude in REGIONS:
        regions[code] = Region.objects.create(
            provider=providers[provider],
            code=code,
            city=city,
            jurisdiction=jurisdiction,
            latitude=latitude,
            longitude=longitude,
            location_source=LocationSource.BUILT_IN,
        )
    clusters = {}
    for name, code, price in CLUSTERS:
        clusters[name] = Cluster.objects.create(name=name, region=regions[code])
        ClusterCapacity.objects.create(
            cluster=clusters[name],
            sku=h100,
            total_gpus=16,
            allocatable_gpus=16,
            in_use_gpus=16 - free.get(name, 0),
            hourly_price_per_gpu=Decimal(price),
        )
    return SimpleNamespace(h100=h100, providers=providers, regions=regions, clusters=clusters)


def set_free(fleet: SimpleNamespace, name: str, free: int) -> None:
    ClusterCapacity.objects.filter(cluster=fleet.clusters[name]).update(in_use_gpus=16 - free)


def make_deployment(customer: Customer, name: str, *, replicas: int = 1, gpus: int = 1, **policy) -> Deployment:
    """Create a deployment whose users are in New York; ``policy`` sets the model's failover fields.

    ``preference`` (a list of "provider/code" keys) sets the region preference, default aws/us-east-1 first.
    """
    preference = policy.pop("preference", ["aws/us-east-1"])
    min_providers = policy.pop("min_providers", 1)
    deployment = create_deployment(
        actor="test",
        customer=customer,
        data={
            "name": name,
            "sku": "H100",
            "gpus_per_replica": gpus,
            "min_replicas": 0,
            "desired_replicas": replicas,
            "max_replicas": replicas,
            "min_providers": min_providers,
            "region_preference": preference,
            "demand_origins": [NEW_YORK],
        },
    )
    if policy:
        Deployment.objects.filter(pk=deployment.pk).update(**policy)
        deployment.refresh_from_db()
    return deployment


def lock_to_regions(deployment: Deployment, *regions: Region, reason: str) -> PlacementLock:
    lock = PlacementLock.objects.create(deployment=deployment, reason=reason)
    lock.allowed_regions.set(regions)
    return lock


def lock_to_jurisdictions(deployment: Deployment, *jurisdictions: str, reason: str) -> PlacementLock:
    return PlacementLock.objects.create(deployment=deployment, allowed_jurisdictions=list(jurisdictions), reason=reason)


def plan(actor: str = "test"):
    return run_plan(actor=actor, trigger=PlanTrigger.MANUAL, options=FAST)


def placed_on(plan, deployment: Deployment) -> dict[str, int]:
    rows = Assignment.objects.filter(plan=plan, deployment=deployment).select_related("cluster")
    placed: dict[str, int] = {}
    for row in rows:
        placed[row.cluster.name] = placed.get(row.cluster.name, 0) + row.replicas
    return placed


def take_down(cluster: Cluster) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(
        health=ClusterHealth.DOWN, health_changed_at=timezone.now(), healthy_since=None
    )


def bring_back(cluster: Cluster) -> None:
    """Mark a down cluster healthy again, recovering from now on (schedulable after MCM_FAILBACK_AFTER_S)."""
    now = timezone.now()
    Cluster.objects.filter(pk=cluster.pk).update(health=ClusterHealth.HEALTHY, health_changed_at=now, healthy_since=now)


def provider_outage(provider: Provider) -> Outage:
    return Outage.objects.create(
        scope=OutageScope.PROVIDER,
        provider=provider,
        source=OutageSource.DECLARED,
        reason="provider-wide API failure",
        declared_by="test",
    )
