"""Emulated clusters registered in MCM, applied plans and polling helpers for the execution tests."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db.models import Max
from django.utils import timezone

from emulator import EmulatedCluster
from fleet.clusters import register_cluster
from fleet.kube import ClusterAdapter, Credentials, DesiredDeployment, ObservedDeployment
from fleet.models import Cluster
from placements.execution import kubernetes_name
from placements.models import Assignment, Deployment, PlacementPlan, PlanStatus, PlanTrigger

H100_LABEL = "NVIDIA-H100-80GB-HBM3"
L4_LABEL = "NVIDIA-L4"
TOKEN = "execution-test-token"


@dataclass
class Site:
    """One MCM cluster row and the emulated cluster behind its API endpoint."""

    cluster: Cluster
    emulated: EmulatedCluster

    def adapter(self) -> ClusterAdapter:
        return ClusterAdapter(self.emulated.name, self.emulated.url, Credentials(token=TOKEN), timeout_s=2.0)

    def observed(self, deployment: Deployment) -> ObservedDeployment | None:
        adapter = self.adapter()
        try:
            by_name = {item.name: item for item in adapter.list_managed_deployments()}
        finally:
            adapter.close()
        return by_name.get(kubernetes_name(deployment))

    def replicas(self, deployment: Deployment) -> int:
        current = self.observed(deployment)
        return current.replicas if current else 0

    def ready(self, deployment: Deployment) -> int:
        current = self.observed(deployment)
        return current.ready_replicas if current else 0

    def run_directly(self, deployment: Deployment, replicas: int, *, name: str = "") -> None:
        """Create or scale the deployment on the cluster behind MCM's back."""
        adapter = self.adapter()
        try:
            adapter.apply_deployment(
                DesiredDeployment(
                    name=name or kubernetes_name(deployment),
                    deployment_id=deployment.pk,
                    replicas=replicas,
                    gpus_per_replica=deployment.gpus_per_replica,
                    gpu_product=H100_LABEL,
                )
            )
        finally:
            adapter.close()


def start_site(cluster: Cluster, nodes: list[tuple[str, str, int]], ready_delay_s: float = 0.1) -> Site:
    emulated = EmulatedCluster(cluster.name, nodes, ready_delay_s=ready_delay_s, token=TOKEN).start()
    cluster = register_cluster(actor="test", cluster=cluster, api_endpoint=emulated.url, credentials={"token": TOKEN})
    return Site(cluster, emulated)


def apply_plan(placements: list[tuple[Deployment, Cluster, int]]) -> PlacementPlan:
    """Store an applied plan that places ``(deployment, cluster, replicas)`` on the deployment's SKU."""
    version = (PlacementPlan.objects.aggregate(last=Max("version"))["last"] or 0) + 1
    PlacementPlan.objects.filter(status=PlanStatus.APPLIED).update(status=PlanStatus.SUPERSEDED)
    plan = PlacementPlan.objects.create(
        version=version,
        trigger=PlanTrigger.MANUAL,
        status=PlanStatus.APPLIED,
        inputs_digest="0" * 64,
        solver="test",
        applied_at=timezone.now(),
    )
    for deployment, cluster, replicas in placements:
        Assignment.objects.create(
            plan=plan, deployment=deployment, cluster=cluster, sku=deployment.sku, replicas=replicas
        )
    return plan


def poll(check: Callable[[], object], timeout_s: float = 5.0, interval_s: float = 0.05):
    """Call ``check`` until it returns a true value or the deadline passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval_s)
