"""What placement may do with each cluster now, from the operator's state, health and open outages.

One function decides it for the scheduler, the executor, the routes and the admin, so they agree:

- lost: an open outage covers the cluster, or it is down (health or state). Its replicas are
  placed elsewhere, and MCM does not call its API until it is back.
- draining: no replicas at all; they move elsewhere, make-before-break.
- holding: cordoned, suspect, or recovering from being down for less than
  ``MCM_FAILBACK_AFTER_S``. Replicas running there stay; no new ones are placed.
- schedulable: everything else that is active.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from fleet.models import Cluster, ClusterHealth, ClusterState, Outage

LOST = "lost"
DRAINING = "draining"
HOLDING = "holding"
SCHEDULABLE = "schedulable"


@dataclass(frozen=True)
class Availability:
    mode: str  # LOST, DRAINING, HOLDING or SCHEDULABLE
    reason: str  # a short label for explanations: "outage", "down", "cordoned", "suspect", "recovering", ...

    @property
    def lost(self) -> bool:
        return self.mode == LOST

    @property
    def schedulable(self) -> bool:
        return self.mode == SCHEDULABLE

    @property
    def holds_current(self) -> bool:
        return self.mode == HOLDING


def open_outages() -> list[Outage]:
    return list(Outage.objects.filter(cleared_at__isnull=True).select_related("cluster", "region", "provider"))


def recently_cleared_outages(now: datetime) -> list[Outage]:
    cutoff = now - timedelta(seconds=settings.MCM_FAILBACK_AFTER_S)
    return list(Outage.objects.filter(cleared_at__gte=cutoff))


def covers(outage: Outage, cluster: Cluster) -> bool:
    """Return whether ``outage`` covers ``cluster``; ``cluster.region`` must be loaded."""
    if outage.scope == "cluster":
        return outage.cluster_id == cluster.pk
    if outage.scope == "region":
        return outage.region_id == cluster.region_id
    return outage.provider_id == cluster.region.provider_id


def availability(
    cluster: Cluster,
    *,
    now: datetime,
    outages: list[Outage],
    cleared: list[Outage],
) -> Availability:
    """Classify one cluster; ``outages`` are the open ones, ``cleared`` those cleared within the failback period."""
    for outage in outages:
        if covers(outage, cluster):
            return Availability(LOST, f"{outage.scope} outage")
    if cluster.state == ClusterState.DOWN or cluster.health == ClusterHealth.DOWN:
        return Availability(LOST, "down")
    if cluster.state == ClusterState.DRAINING:
        return Availability(DRAINING, "draining")
    if cluster.health == ClusterHealth.SUSPECT:
        return Availability(HOLDING, "suspect")
    if cluster.state == ClusterState.CORDONED:
        return Availability(HOLDING, "cordoned")
    failback_after = timedelta(seconds=settings.MCM_FAILBACK_AFTER_S)
    if cluster.healthy_since is not None and now - cluster.healthy_since < failback_after:
        return Availability(HOLDING, "recovering")
    if any(covers(outage, cluster) for outage in cleared):
        return Availability(HOLDING, "recovering")
    return Availability(SCHEDULABLE, "active")


def cluster_availability(clusters=None, *, now: datetime | None = None) -> dict[int, Availability]:
    """Return every cluster's availability by id; ``clusters`` defaults to all of them."""
    now = now or timezone.now()
    if clusters is None:
        clusters = Cluster.objects.select_related("region")
    outages = open_outages()
    cleared = recently_cleared_outages(now)
    return {cluster.pk: availability(cluster, now=now, outages=outages, cleared=cleared) for cluster in clusters}


class AvailabilityReader:
    """Classifies clusters one by one with the outages read once, for lists in the API and the admin."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or timezone.now()
        self.outages = open_outages()
        self.cleared = recently_cleared_outages(self.now)

    def __call__(self, cluster: Cluster) -> Availability:
        return availability(cluster, now=self.now, outages=self.outages, cleared=self.cleared)


def lost_cluster_ids(now: datetime | None = None) -> set[int]:
    """Ids of the clusters that are lost now: the executor and reconciler leave them alone."""
    return {pk for pk, state in cluster_availability(now=now).items() if state.lost}


def outage_filter(outage: Outage) -> Q:
    """Return a filter on ``Cluster`` for the clusters an outage covers."""
    if outage.scope == "cluster":
        return Q(pk=outage.cluster_id)
    if outage.scope == "region":
        return Q(region_id=outage.region_id)
    return Q(region__provider_id=outage.provider_id)
