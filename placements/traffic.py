"""Traffic telemetry: store deployments' traffic samples, summarise a time window, prune old samples.

Samples arrive from two doors, with the same meaning: ``traffic`` events pushed through the event
API (source push) and the custom metrics the pull collector reads from each cluster (source pull).
A sample belongs to a series keyed by (cluster, origin). A window's traffic is the mean of each
series over the window, summed over the series, so a series that reports every 5 s weighs as much
as one that reports every 30 s. A pulled series is averaged over every successful read of its
cluster in the window, not only the reads that reported it: the collector stores no sample for a
series that stopped, so traffic that moved to another cluster within the window is not counted
twice.
"""

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max, Sum
from django.utils import timezone

from fleet.models import TelemetrySnapshot, TelemetrySource
from placements.models import Deployment, TrafficSample, TrafficSource

logger = logging.getLogger(__name__)

MAX_ORIGIN_LENGTH = TrafficSample._meta.get_field("origin").max_length
# Rows deleted per statement by ``prune_traffic``, so that one prune does not hold row locks on
# millions of rows in one transaction.
PRUNE_BATCH = 10_000


@dataclass
class TrafficWindow:
    """The traffic of one deployment over a window: means per series, summed."""

    requests_per_second: float
    in_flight: float | None
    by_cluster: dict[int, float] = field(default_factory=dict)
    in_flight_by_cluster: dict[int, float] = field(default_factory=dict)
    by_origin: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    newest_at: datetime | None = None


def window_traffic(
    deployment_ids: Iterable[int] | None, *, window_s: float, now: datetime | None = None
) -> dict[int, TrafficWindow]:
    """Return the traffic of each deployment over (now - window_s, now], by deployment id.

    ``deployment_ids`` None means every deployment. Only deployments with at least one sample in
    the window are in the result. When a deployment has samples from named clusters in the window,
    its samples without a cluster are ignored, because they describe the same requests as a whole.
    ``in_flight`` is None when no sample in the window reported it, and otherwise sums only the
    series that did.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be greater than 0, got {window_s}")
    now = now or timezone.now()
    since = now - timedelta(seconds=window_s)
    samples = TrafficSample.objects.filter(observed_at__gt=since, observed_at__lte=now)
    if deployment_ids is not None:
        samples = samples.filter(deployment_id__in=list(deployment_ids))
    # One row per series; the index on (deployment, observed_at) or on observed_at serves the filter.
    series = list(
        samples.values("deployment_id", "cluster_id", "origin", "source")
        .annotate(
            rps_sum=Sum("requests_per_second"),
            in_flight_sum=Sum("in_flight"),
            in_flight_count=Count("in_flight"),
            count=Count("id"),
            newest=Max("observed_at"),
        )
        .order_by()
    )
    reads = _pull_reads({row["cluster_id"] for row in series if row["source"] == TrafficSource.PULL}, since, now)
    by_deployment: dict[int, list[dict]] = defaultdict(list)
    for row in series:
        # A pulled series counts as 0 at each read of its cluster that did not report it.
        reads_of_cluster = reads.get(row["cluster_id"], 0) if row["source"] == TrafficSource.PULL else 0
        row["rps"] = row["rps_sum"] / max(row["count"], reads_of_cluster)
        row["in_flight"] = None
        if row["in_flight_count"]:
            row["in_flight"] = row["in_flight_sum"] / max(row["in_flight_count"], reads_of_cluster)
        by_deployment[row["deployment_id"]].append(row)
    return {deployment_id: _combine(rows) for deployment_id, rows in by_deployment.items()}


def _pull_reads(cluster_ids: set[int | None], since: datetime, now: datetime) -> dict[int, int]:
    """Count the successful pulled reads of each cluster in (since, now]."""
    cluster_ids.discard(None)
    if not cluster_ids:
        return {}
    snapshots = TelemetrySnapshot.objects.filter(
        cluster_id__in=cluster_ids, source=TelemetrySource.PULL, ok=True, taken_at__gt=since, taken_at__lte=now
    )
    return dict(snapshots.values("cluster_id").annotate(reads=Count("id")).values_list("cluster_id", "reads"))


def _combine(rows: list[dict]) -> TrafficWindow:
    """Sum one deployment's series means into a window summary."""
    if any(row["cluster_id"] is not None for row in rows):
        rows = [row for row in rows if row["cluster_id"] is not None]
    window = TrafficWindow(requests_per_second=0.0, in_flight=None)
    for row in rows:
        cluster_id, rps, in_flight = row["cluster_id"], row["rps"], row["in_flight"]
        window.requests_per_second += rps
        _add(window.by_origin, row["origin"], rps)
        if cluster_id is not None:
            _add(window.by_cluster, cluster_id, rps)
        if in_flight is not None:
            window.in_flight = (window.in_flight or 0.0) + in_flight
            if cluster_id is not None:
                _add(window.in_flight_by_cluster, cluster_id, in_flight)
        window.samples += row["count"]
        if window.newest_at is None or row["newest"] > window.newest_at:
            window.newest_at = row["newest"]
    return window


def _add(totals: dict, key, value: float) -> None:
    totals[key] = totals.get(key, 0.0) + value


def record_traffic(rows: list[dict], *, source: str) -> int:
    """Store traffic samples in one insert; return how many were stored.

    Each row has ``deployment_id``, ``requests_per_second`` and ``observed_at``, and may have
    ``cluster_id``, ``origin`` and ``in_flight`` (missing means None, "" and None). Rows of
    deployments that do not exist (any more) are skipped with a warning. So are rows with invalid
    values (a negative or infinite rate, an origin over 64 characters), so that one bad report
    from a cluster does not lose the others.
    """
    if source not in TrafficSource.values:
        raise ValueError(f"source must be one of {', '.join(TrafficSource.values)}, got {source!r}")
    rows = [row for row in rows if _is_valid(row, source)]
    if not rows:
        return 0
    requested = {row["deployment_id"] for row in rows}
    known = set(Deployment.objects.filter(pk__in=requested).values_list("pk", flat=True))
    unknown = sorted(requested - known)
    if unknown:
        skipped = sum(1 for row in rows if row["deployment_id"] not in known)
        logger.warning("skipped %s %s traffic samples of unknown deployment ids %s", skipped, source, unknown)
    samples = [
        TrafficSample(
            deployment_id=row["deployment_id"],
            cluster_id=row.get("cluster_id"),
            origin=row.get("origin") or "",
            requests_per_second=row["requests_per_second"],
            in_flight=row.get("in_flight"),
            observed_at=row["observed_at"],
            source=source,
        )
        for row in rows
        if row["deployment_id"] in known
    ]
    TrafficSample.objects.bulk_create(samples)
    return len(samples)


def _is_valid(row: dict, source: str) -> bool:
    problem = None
    rate, in_flight, origin = row["requests_per_second"], row.get("in_flight"), row.get("origin") or ""
    if not 0 <= rate < math.inf:
        problem = f"requests_per_second {rate!r} is not a finite number >= 0"
    elif in_flight is not None and not 0 <= in_flight < math.inf:
        problem = f"in_flight {in_flight!r} is not a finite number >= 0"
    elif len(origin) > MAX_ORIGIN_LENGTH:
        problem = f"origin {origin[:80]!r} is longer than {MAX_ORIGIN_LENGTH} characters"
    if problem:
        logger.warning(
            "skipped a %s traffic sample of deployment %s on cluster %s: %s",
            source,
            row["deployment_id"],
            row.get("cluster_id"),
            problem,
        )
    return problem is None


def prune_traffic(now: datetime | None = None) -> int:
    """Delete samples observed more than ``MCM_TRAFFIC_RETENTION_S`` before ``now``; return how many.

    Deletes in batches of ``PRUNE_BATCH`` rows, each its own statement, oldest first.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.MCM_TRAFFIC_RETENTION_S)
    old = TrafficSample.objects.filter(observed_at__lt=cutoff).order_by("observed_at")
    deleted = 0
    while True:
        batch = list(old.values_list("pk", flat=True)[:PRUNE_BATCH])
        if not batch:
            break
        count, _ = TrafficSample.objects.filter(pk__in=batch).delete()
        deleted += count
    if deleted:
        logger.info("pruned %s traffic samples observed before %s", deleted, cutoff.isoformat())
    return deleted
