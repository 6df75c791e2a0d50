"""End-to-end fixtures: a fleet of emulated clusters and MCM's whole loop, run in the test process.

``World.tick`` runs one round of what Celery beat and the workers do in production, with the same
services: collect telemetry from every cluster, judge health, let approval deadlines expire,
re-plan (after a health change, a decision or an expired approval, or when the periodic re-plan
is due), execute the current plan and reconcile.

Tasks that the services enqueue (a re-plan after an approval, an execution after a plan) are
recorded instead of sent to the broker, and the next tick runs them in process. The tests run
with real transactions (``transaction=True``), so those on-commit enqueues happen as in
production.

Settings are short so that a scenario takes seconds. Heartbeats come every second. A cluster is
down after 2 failed reads in a row or 4 s of silence, and healthy again after 2 good reads.
Failback comes 2 s after recovery, and pods are ready 0.2 s after they are scheduled.
"""

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from emulator import EmulatedCluster
from fleet.clusters import register_cluster
from fleet.health import HealthReport, evaluate_health
from fleet.kube import ClusterAdapter, Credentials
from fleet.models import Cluster, ClusterCapacity, GpuSku, LocationSource, Provider, Region
from fleet.telemetry import collect_many
from placements.execution import execute_plan
from placements.models import Assignment, Customer, Deployment, DeploymentOutcome, PlacementPlan, PlanTrigger, Tier
from placements.observation import executable_clusters, observe_clusters, open_adapters
from placements.planning import run_plan
from placements.reconcile import reconcile
from placements.services import create_deployment, current_plan
from tests.placements.execution_factories import Site

logger = logging.getLogger(__name__)

GPU_LABELS = {"H100": "NVIDIA-H100-80GB-HBM3", "L4": "NVIDIA-L4"}
GPUS_PER_NODE = 8
READY_DELAY_S = 0.2
TICK_PAUSE_S = 0.3
PLAN_EVERY_S = 5.0


@dataclass(frozen=True)
class ClusterSpec:
    """One cluster of the test fleet: where it is and how many GPUs of each SKU its nodes have."""

    name: str
    provider: str
    region: str
    jurisdiction: str
    latitude: float
    longitude: float
    gpus: dict[str, int]
    price: str = "2.50"


# Three providers, six regions, one cluster per region; 16 H100 each. Each provider has a US and
# an EU region, so that an EU-only deployment has somewhere to go when one provider fails.
DEFAULT_FLEET = (
    ClusterSpec("aws-use1-a", "aws", "us-east-1", "us", 39.0, -77.5, {"H100": 16}, "2.00"),
    ClusterSpec("aws-euw1-a", "aws", "eu-west-1", "eu", 53.3, -6.3, {"H100": 16}, "2.20"),
    ClusterSpec("gcp-usc1-a", "gcp", "us-central1", "us", 41.3, -95.9, {"H100": 16}, "2.60"),
    ClusterSpec("gcp-euw4-a", "gcp", "europe-west4", "eu", 53.4, 6.8, {"H100": 16}, "2.70"),
    ClusterSpec("azure-eus-a", "azure", "eastus", "us", 37.4, -79.0, {"H100": 16}, "2.90"),
    ClusterSpec("azure-weu-a", "azure", "westeurope", "eu", 52.4, 4.9, {"H100": 16}, "3.00"),
)

LONDON = {"name": "London", "country_code": "GB", "latitude": 51.5, "longitude": -0.1, "share": 1.0}


@dataclass
class TokenSite(Site):
    """A site with a token of its own.

    An unreachable emulated cluster frees its port, and another test's emulated cluster may take
    it. With one token per cluster, MCM's calls to a port taken that way fail with 401 instead of
    reading the other cluster.
    """

    token: str = ""

    def adapter(self) -> ClusterAdapter:
        return ClusterAdapter(self.emulated.name, self.emulated.url, Credentials(token=self.token), timeout_s=2.0)


def start_token_site(cluster: Cluster, nodes: list[tuple[str, str, int]]) -> TokenSite:
    token = secrets.token_urlsafe(24)
    emulated = EmulatedCluster(cluster.name, nodes, ready_delay_s=READY_DELAY_S, token=token).start()
    cluster = register_cluster(actor="test", cluster=cluster, api_endpoint=emulated.url, credentials={"token": token})
    return TokenSite(cluster, emulated, token)


@pytest.fixture(autouse=True)
def e2e_settings(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    settings.MCM_CLUSTER_API_TIMEOUT_S = 1.0
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 50
    settings.MCM_EXECUTION_TIMEOUT_S = 60
    settings.MCM_SCHEDULER_TIME_LIMIT_S = 10
    settings.MCM_HEARTBEAT_INTERVAL_S = 1
    settings.MCM_HEALTH_SUSPECT_AFTER_FAILURES = 1
    settings.MCM_HEALTH_DOWN_AFTER_FAILURES = 2
    settings.MCM_HEALTH_SUSPECT_AFTER_S = 2.5
    settings.MCM_HEALTH_DOWN_AFTER_S = 4
    settings.MCM_HEALTH_RECOVER_AFTER_SUCCESSES = 2
    settings.MCM_HEALTH_MONITOR_GAP_S = 3
    settings.MCM_FAILBACK_AFTER_S = 2
    return settings


@dataclass
class Enqueued:
    """Tasks the services asked Celery for since the last tick."""

    replans: int = 0
    executions: list[int] = field(default_factory=list)


@pytest.fixture
def enqueued(monkeypatch) -> Enqueued:
    """Record the re-plans and executions that services enqueue, so that the loop runs them in process."""
    from placements import tasks as placement_tasks
    from tasks import tasks as scheduler_tasks

    record = Enqueued()

    def replan(*args, **kwargs):
        record.replans += 1

    def execution(args=(), kwargs=None, **options):
        record.executions.append(args[0] if args else (kwargs or {}).get("plan_id"))

    monkeypatch.setattr(scheduler_tasks.plan_placements, "delay", replan)
    monkeypatch.setattr(scheduler_tasks.plan_placements, "apply_async", lambda *a, **k: replan())
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", execution)
    return record


@dataclass
class TickReport:
    health: HealthReport
    expired: int
    plan: PlacementPlan | None  # the plan this tick made, if any
    reconcile: dict


@dataclass
class World:
    """The emulated fleet, MCM's rows for it, and the loop that drives MCM against it."""

    sites: dict[str, TokenSite]
    enqueued: Enqueued
    ticks: list[TickReport] = field(default_factory=list)
    # The periodic re-plan of the beat schedule ("plan placements", 300 s by default), shortened
    # like the other intervals. None turns it off.
    plan_every_s: float | None = PLAN_EVERY_S
    last_plan_at: float = 0.0
    # Called after every tick, for scenarios that check an invariant all along the way.
    watchers: list[Callable[["World"], None]] = field(default_factory=list)

    # The loop.

    def tick(self, *, collect: bool = True) -> TickReport:
        """Run one round of MCM's loop; see the module docstring."""
        from placements.failover import expire_requests

        if collect:
            collect_many(list(executable_clusters().values_list("pk", flat=True)))
        health = evaluate_health()
        expired = expire_requests()
        plan = None
        if health.replan_needed or expired or self.enqueued.replans:
            self.enqueued.replans = 0
            plan = self.replan(trigger=PlanTrigger.HEALTH)
        elif self.plan_every_s is not None and time.monotonic() - self.last_plan_at >= self.plan_every_s:
            plan = self.replan(trigger=PlanTrigger.SCHEDULE)
        self.enqueued.executions.clear()
        current = current_plan()
        if current is not None:
            execute_plan(current.pk)
        report = TickReport(health, expired, plan, reconcile().as_dict())
        self.ticks.append(report)
        for watcher in self.watchers:
            watcher(self)
        return report

    def replan(self, trigger: str = PlanTrigger.MANUAL) -> PlacementPlan:
        self.last_plan_at = time.monotonic()
        return run_plan(actor="e2e loop", trigger=trigger)

    def run_until(self, check: Callable[[], object], timeout_s: float = 30.0) -> object:
        """Tick until ``check`` returns a true value or ``timeout_s`` passes; return its last value."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.tick()
            result = check()
            if result or time.monotonic() > deadline:
                return result
            time.sleep(TICK_PAUSE_S)

    def run_for(self, seconds: float) -> None:
        """Tick for ``seconds``, whatever happens."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick()
            time.sleep(TICK_PAUSE_S)

    def start(self, timeout_s: float = 30.0) -> PlacementPlan:
        """Read every cluster, plan every deployment and run the loop until the plan runs everywhere."""
        self.tick()
        plan = self.replan()
        converged = self.run_until(lambda: self.converged(), timeout_s)
        assert converged, f"the first plan did not converge: {self.describe()}"
        return plan

    # Faults.

    def fail(self, *names: str) -> None:
        for name in names:
            self.sites[name].emulated.set_unreachable(True)

    def restore(self, *names: str) -> None:
        for name in names:
            self.sites[name].emulated.set_unreachable(False)

    # What the clusters run.

    def observed(self) -> dict[str, dict[int, tuple[int, int]]]:
        """Return (replicas, ready) per deployment id on every reachable cluster, read through the API."""
        result: dict[str, dict[int, tuple[int, int]]] = {}
        clusters = [site.cluster for site in self.sites.values()]
        with open_adapters() as adapters:
            observations = observe_clusters(clusters, adapters)
        for observation in observations.values():
            if observation.error is not None:
                continue
            result[observation.cluster.name] = {
                deployment_id: (item.replicas, item.ready_replicas)
                for deployment_id, item in observation.deployments.items()
            }
        return result

    def ready(self, deployment: Deployment) -> dict[str, int]:
        """Ready replicas of ``deployment`` per reachable cluster, leaving out clusters with none."""
        return {
            name: counts[deployment.pk][1]
            for name, counts in self.observed().items()
            if deployment.pk in counts and counts[deployment.pk][1] > 0
        }

    def replicas(self, deployment: Deployment) -> dict[str, int]:
        """Replicas (ready or not) of ``deployment`` per reachable cluster, leaving out clusters with none."""
        return {
            name: counts[deployment.pk][0]
            for name, counts in self.observed().items()
            if deployment.pk in counts and counts[deployment.pk][0] > 0
        }

    def placed(self, deployment: Deployment, plan: PlacementPlan | None = None) -> dict[str, int]:
        """Replicas of ``deployment`` per cluster in ``plan`` (default: the current plan)."""
        plan = plan or current_plan()
        placed: dict[str, int] = defaultdict(int)
        for name, replicas in Assignment.objects.filter(plan=plan, deployment=deployment).values_list(
            "cluster__name", "replicas"
        ):
            placed[name] += replicas
        return dict(placed)

    def outcome(self, deployment: Deployment) -> DeploymentOutcome:
        return DeploymentOutcome.objects.get(plan=current_plan(), deployment=deployment)

    def converged(self, deployments: Iterable[Deployment] | None = None) -> bool:
        """Whether every cluster runs exactly what the current plan places there, all ready."""
        plan = current_plan()
        if plan is None:
            return False
        observed = self.observed()
        if len(observed) < len(self.reachable()):
            return False
        checked = deployments if deployments is not None else Deployment.objects.all()
        for deployment in checked:
            placed = self.placed(deployment, plan)
            for name in self.reachable():
                replicas, ready = observed.get(name, {}).get(deployment.pk, (0, 0))
                if replicas != placed.get(name, 0) or ready != replicas:
                    return False
        return True

    def reachable(self) -> list[str]:
        return [name for name, site in self.sites.items() if not site.emulated.faults().get("unreachable")]

    def gpus_requested(self) -> dict[str, int]:
        """GPUs that the pods of MCM's Deployments request on each reachable cluster, ready or not."""
        gpus_per_replica = dict(Deployment.objects.values_list("pk", "gpus_per_replica"))
        return {
            name: sum(
                replicas * gpus_per_replica.get(deployment_id, 0) for deployment_id, (replicas, _) in counts.items()
            )
            for name, counts in self.observed().items()
        }

    def health(self) -> dict[str, str]:
        return dict(Cluster.objects.values_list("name", "health"))

    def describe(self) -> str:
        """A summary for assertion messages: health, the current plan and what each cluster runs."""
        plan = current_plan()
        placed = (
            list(Assignment.objects.filter(plan=plan).values_list("deployment_id", "cluster__name", "replicas"))
            if plan
            else []
        )
        return (
            f"health={self.health()} plan=v{plan.version if plan else None} placed={placed} "
            f"observed={self.observed()} ticks={len(self.ticks)}"
        )


def make_fleet(specs: Iterable[ClusterSpec]) -> dict[str, Cluster]:
    """Create the providers, regions, clusters and capacity rows of ``specs``."""
    skus = {name: GpuSku.objects.get_or_create(name=name, defaults={"memory_gib": 80})[0] for name in GPU_LABELS}
    clusters = {}
    for spec in specs:
        provider, _ = Provider.objects.get_or_create(name=spec.provider)
        region, _ = Region.objects.get_or_create(
            provider=provider,
            code=spec.region,
            defaults={
                "city": spec.region,
                "jurisdiction": spec.jurisdiction,
                "latitude": spec.latitude,
                "longitude": spec.longitude,
                "location_source": LocationSource.BUILT_IN,
            },
        )
        cluster = Cluster.objects.create(name=spec.name, region=region)
        for sku, gpus in spec.gpus.items():
            ClusterCapacity.objects.create(
                cluster=cluster,
                sku=skus[sku],
                total_gpus=gpus,
                allocatable_gpus=gpus,
                hourly_price_per_gpu=Decimal(spec.price),
            )
        clusters[spec.name] = cluster
    return clusters


def node_specs(spec: ClusterSpec) -> list[tuple[str, str, int]]:
    nodes = []
    for sku, gpus in spec.gpus.items():
        index = 0
        while gpus > 0:
            count = min(GPUS_PER_NODE, gpus)
            nodes.append((f"{sku.lower()}-{index}", GPU_LABELS[sku], count))
            gpus -= count
            index += 1
    return nodes


@pytest.fixture
def sites_factory(db):
    """Create the fleet of the cluster specs and start one registered emulated cluster per cluster.

    Returns the sites by cluster name; every emulated cluster is stopped at the end.
    """
    started: list[TokenSite] = []

    def build(specs: Iterable[ClusterSpec] = DEFAULT_FLEET) -> dict[str, TokenSite]:
        specs = list(specs)
        clusters = make_fleet(specs)
        sites = {}
        for spec in specs:
            site = start_token_site(clusters[spec.name], node_specs(spec))
            started.append(site)
            sites[spec.name] = site
        return sites

    yield build
    for site in started:
        site.emulated.stop()


@pytest.fixture
def world_factory(sites_factory, enqueued):
    """Build a ``World`` from cluster specs, with the loop run in process."""

    def build(specs: Iterable[ClusterSpec] = DEFAULT_FLEET) -> World:
        return World(sites=sites_factory(specs), enqueued=enqueued)

    return build


@pytest.fixture
def world(world_factory) -> World:
    return world_factory()


# Customers and deployments.


@pytest.fixture
def customers(db):
    return {
        "acme": Customer.objects.create(name="acme", display_name="Acme", tier=Tier.PREMIUM),
        "globex": Customer.objects.create(name="globex", display_name="Globex", tier=Tier.STANDARD),
        "initech": Customer.objects.create(name="initech", display_name="Initech", tier=Tier.BEST_EFFORT),
    }


def deploy(customer: Customer, name: str, **fields) -> Deployment:
    """Create a deployment through the service, as a customer would; ``fields`` override the defaults.

    Fields that the service does not take (spread mode, failover and failback policies, approval
    time-out) are set on the row afterwards, as staff set them in the admin.
    """
    staff_fields = {
        key: fields.pop(key)
        for key in ("spread_mode", "failover_policy", "approval_timeout_s", "failback_policy")
        if key in fields
    }
    replicas = fields.pop("replicas", 2)
    data = {
        "name": name,
        "sku": "H100",
        "gpus_per_replica": 2,
        "min_replicas": 1,
        "desired_replicas": replicas,
        "max_replicas": max(replicas, 1),
        "min_providers": 1,
        "min_regions": 1,
        "demand_origins": [
            {"name": "New York", "country_code": "US", "latitude": 40.7, "longitude": -74.0, "share": 1.0},
        ],
        **fields,
    }
    deployment = create_deployment(actor="e2e test", customer=customer, data=data)
    if staff_fields:
        Deployment.objects.filter(pk=deployment.pk).update(**staff_fields)
        deployment.refresh_from_db()
    return deployment
