"""Small builders of scheduler inputs for the scheduler tests."""

from placements.scheduler.problem import ClusterInput, DemandOriginInput, DeploymentInput

LONDON = DemandOriginInput("London", 51.51, -0.13, 1.0)
NEW_YORK = DemandOriginInput("New York", 40.71, -74.01, 1.0)


def cluster(
    id: int,
    provider: str = "aws",
    region: str = "eu-west",
    jurisdiction: str = "EU",
    lat: float = 53.35,
    lon: float = -6.26,
    free: dict[str, int] | None = None,
    price: dict[str, float] | None = None,
    **extra,
) -> ClusterInput:
    free = {"H100": 16} if free is None else free
    price = price or {sku: 3.0 for sku in free}
    return ClusterInput(
        id=id,
        name=f"c{id}",
        provider=provider,
        region=f"{provider}/{region}",
        jurisdiction=jurisdiction,
        latitude=lat,
        longitude=lon,
        free_gpus=free,
        price_per_gpu_hour=price,
        **extra,
    )


def deployment(
    id: int, replicas: int = 1, gpus: int = 1, tier_rank: int = 1, skus: tuple[str, ...] = ("H100",), **extra
) -> DeploymentInput:
    extra.setdefault("origins", (LONDON,))
    return DeploymentInput(
        id=id,
        name=f"d{id}",
        tier=f"tier{tier_rank}",
        tier_rank=tier_rank,
        skus=skus,
        gpus_per_replica=gpus,
        replicas=replicas,
        **extra,
    )
