"""Cluster health: healthy, suspect or down, judged from reads of the cluster's API and heartbeat age.

Evidence comes in two ways, and ``evaluate_health`` judges it periodically:

- ``record_read`` and ``record_reads`` count each pulled read of a cluster's API: consecutive
  successes or failures. A successful read is also a heartbeat.
- ``record_push`` handles a pushed event batch. The batch raises the heartbeat of every cluster.
  It counts as a read only for a cluster without a registered API endpoint, as a failure when the
  batch's newest health event reports "failing" and as a success otherwise. For a cluster with an
  endpoint, MCM places replicas through that API, so only reads of the API count: an agent that
  still pushes must not hide an API that fails.

A cluster is suspect after ``MCM_HEALTH_SUSPECT_AFTER_FAILURES`` failed reads in a row or
``MCM_HEALTH_SUSPECT_AFTER_S`` without a heartbeat, and down after the ``DOWN`` thresholds. It is
healthy again only after ``MCM_HEALTH_RECOVER_AFTER_SUCCESSES`` successful reads in a row and a
fresh heartbeat, so a flapping cluster does not flip back on one good read.

Heartbeat age counts from the latest of the last heartbeat, the cluster's creation and the time
the evaluator resumed after MCM itself was stopped, so that silence while MCM's workers did not
run is not blamed on clusters. A cluster that has an endpoint but has never had a heartbeat is
judged by its failed reads only. The time it was registered is not stored, and a cluster
registered long after it was created must not go down before its first read.
"""

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, F, PositiveIntegerField, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from compliance.services import record_event
from fleet.alerts import raise_alert, resolve_alert
from fleet.models import (
    AlertSeverity,
    Cluster,
    ClusterHealth,
    HealthMonitor,
    Outage,
    OutageScope,
    OutageSource,
    Provider,
    Region,
    TelemetrySnapshot,
)
from placements.routing import schedule_route_refresh

logger = logging.getLogger(__name__)

ACTOR = "health monitor"
MONITOR_NAME = "health"
# A heartbeat counts as missed once it is this many intervals late.
MISSED_AFTER_INTERVALS = 1.5

HEALTHY, SUSPECT, DOWN = ClusterHealth.HEALTHY, ClusterHealth.SUSPECT, ClusterHealth.DOWN


# Evidence.


def record_read(cluster_id: int, ok: bool, *, error: str = "", at: datetime | None = None) -> None:
    """Count one pulled read of a cluster's API; a successful read is also a heartbeat at ``at`` (default now)."""
    at = at or timezone.now()
    if ok:
        record_reads(succeeded={cluster_id: at}, failed={})
    else:
        record_reads(succeeded={}, failed={cluster_id: at})
        logger.info("failed read of cluster id %s recorded: %s", cluster_id, error)


def record_reads(*, succeeded: dict[int, datetime], failed: dict[int, datetime]) -> None:
    """Count pulled reads of many clusters, given as cluster id -> time of the read; at most two UPDATEs.

    Uses F() expressions, so reads recorded by concurrent workers are all counted. A successful
    read raises the heartbeat to its time and never lowers it. It also clears
    ``first_missed_heartbeat_at`` of a healthy cluster, while a suspect or down cluster keeps it
    until the evaluator finds it healthy again. A failed read starts ``first_missed_heartbeat_at``
    unless a silence is already recorded.
    """
    if succeeded:
        at = _by_cluster(succeeded)
        Cluster.objects.filter(pk__in=list(succeeded)).update(
            consecutive_successes=F("consecutive_successes") + 1,
            consecutive_failures=0,
            # Coalesce first: GREATEST with a NULL is NULL on SQLite, and the first heartbeat is NULL.
            last_heartbeat_at=Greatest(Coalesce(F("last_heartbeat_at"), at), at),
            first_missed_heartbeat_at=Case(
                When(health=HEALTHY, then=Value(None)),
                default=F("first_missed_heartbeat_at"),
                output_field=DateTimeField(),
            ),
        )
    if failed:
        Cluster.objects.filter(pk__in=list(failed)).update(
            consecutive_failures=F("consecutive_failures") + 1,
            consecutive_successes=0,
            first_missed_heartbeat_at=Coalesce(F("first_missed_heartbeat_at"), _by_cluster(failed)),
        )


def _by_cluster(moments: dict[int, datetime]) -> Case:
    """Build an SQL CASE that gives each cluster row its own time from ``moments``."""
    whens = [When(pk=cluster_id, then=Value(moment)) for cluster_id, moment in moments.items()]
    return Case(*whens, output_field=DateTimeField())


def record_push(cluster_id: int, seen_at: datetime, *, failing: bool = False) -> None:
    """Raise the heartbeat to ``seen_at`` for a pushed batch, and count it as a read if the cluster has no endpoint.

    ``failing`` is whether the batch's newest health event reports the cluster failing. The
    heartbeat only moves forward, because batches may arrive out of order.
    """
    push_only = Q(api_endpoint="")
    count = PositiveIntegerField()
    if failing:
        failures = Case(
            When(push_only, then=F("consecutive_failures") + 1), default=F("consecutive_failures"), output_field=count
        )
        successes = Case(When(push_only, then=Value(0)), default=F("consecutive_successes"), output_field=count)
        missed = Case(
            When(push_only, then=Coalesce(F("first_missed_heartbeat_at"), Value(seen_at))),
            default=F("first_missed_heartbeat_at"),
            output_field=DateTimeField(),
        )
    else:
        failures = Case(When(push_only, then=Value(0)), default=F("consecutive_failures"), output_field=count)
        successes = Case(
            When(push_only, then=F("consecutive_successes") + 1), default=F("consecutive_successes"), output_field=count
        )
        missed = F("first_missed_heartbeat_at")
    # Coalesce first: GREATEST with a NULL is NULL on SQLite, and the first heartbeat is NULL.
    Cluster.objects.filter(pk=cluster_id).update(
        last_heartbeat_at=Greatest(Coalesce(F("last_heartbeat_at"), Value(seen_at)), Value(seen_at)),
        consecutive_failures=failures,
        consecutive_successes=successes,
        first_missed_heartbeat_at=missed,
    )


# Evaluation.


@dataclass(frozen=True)
class Thresholds:
    """The health settings, read once per evaluation."""

    interval_s: float
    suspect_failures: int
    down_failures: int
    suspect_after_s: float
    down_after_s: float
    recover_successes: int
    monitor_gap_s: float
    failback_s: float

    @classmethod
    def from_settings(cls) -> "Thresholds":
        return cls(
            interval_s=settings.MCM_HEARTBEAT_INTERVAL_S,
            suspect_failures=settings.MCM_HEALTH_SUSPECT_AFTER_FAILURES,
            down_failures=settings.MCM_HEALTH_DOWN_AFTER_FAILURES,
            suspect_after_s=settings.MCM_HEALTH_SUSPECT_AFTER_S,
            down_after_s=settings.MCM_HEALTH_DOWN_AFTER_S,
            recover_successes=settings.MCM_HEALTH_RECOVER_AFTER_SUCCESSES,
            monitor_gap_s=settings.MCM_HEALTH_MONITOR_GAP_S,
            failback_s=settings.MCM_FAILBACK_AFTER_S,
        )


@dataclass(frozen=True)
class HealthChange:
    cluster_id: int
    cluster: str
    before: str
    after: str
    reason: str


@dataclass
class HealthReport:
    """The outcome of one evaluation: clusters judged, health changes and outages opened or cleared."""

    judged: int = 0
    changes: list[HealthChange] = field(default_factory=list)
    outages_opened: list[str] = field(default_factory=list)  # "region aws/us-east-1", "provider aws"
    outages_cleared: list[str] = field(default_factory=list)
    # Clusters whose failback period (MCM_FAILBACK_AFTER_S after recovery) ended since the last run.
    failback_ready: list[str] = field(default_factory=list)
    monitor_resumed: bool = False

    @property
    def replan_needed(self) -> bool:
        """Whether placement must change: a cluster went down or came back from down, an outage opened or
        closed, or a recovered cluster may take replicas again."""
        lost_or_back = any(DOWN in (change.before, change.after) for change in self.changes)
        return lost_or_back or bool(self.outages_opened or self.outages_cleared or self.failback_ready)

    def as_dict(self) -> dict:
        return {
            "judged": self.judged,
            "changes": [asdict(change) for change in self.changes],
            "outages_opened": self.outages_opened,
            "outages_cleared": self.outages_cleared,
            "failback_ready": self.failback_ready,
            "monitor_resumed": self.monitor_resumed,
            "replan_needed": self.replan_needed,
        }


def evaluate_health(now: datetime | None = None) -> HealthReport:
    """Judge every cluster with an API endpoint or a heartbeat, record changes, and detect region and provider outages.

    Runs in one transaction that locks the monitor row, so concurrent evaluations run one after
    the other and a second one finds nothing left to change. Each change is audited and raises or
    resolves its alert. Catalog-only clusters, with neither an endpoint nor a heartbeat, are not judged.
    """
    now = now or timezone.now()
    limits = Thresholds.from_settings()
    report = HealthReport()
    with transaction.atomic():
        previous_run = HealthMonitor.objects.filter(name=MONITOR_NAME).values_list("last_run_at", flat=True).first()
        resumed_at = _check_monitor(now, limits, report)
        clusters = list(
            Cluster.objects.filter(~Q(api_endpoint="") | Q(last_heartbeat_at__isnull=False))
            .select_related("region__provider")
            .defer("credentials_encrypted")
            .order_by("pk")
        )
        report.judged = len(clusters)
        verdicts = {cluster.pk: judge(cluster, now=now, resumed_at=resumed_at, limits=limits) for cluster in clusters}
        _record_missed_heartbeats(clusters, verdicts, now=now, resumed_at=resumed_at, limits=limits)
        for cluster in clusters:
            verdict = verdicts[cluster.pk]
            if verdict.health != cluster.health:
                _change_health(cluster, verdict, now=now, limits=limits, report=report)
        _detect_outages(clusters, now=now, report=report)
        if report.changes or report.outages_opened or report.outages_cleared:
            schedule_route_refresh(reason="cluster health changed")
        if previous_run is not None:
            report.failback_ready = _failback_ready(previous_run, now)

    if report.changes or report.outages_opened or report.outages_cleared:
        logger.info(
            "health of %s clusters evaluated: %s changes, outages opened %s, cleared %s",
            report.judged,
            len(report.changes),
            report.outages_opened,
            report.outages_cleared,
        )
    return report


def _failback_ready(previous_run: datetime, now: datetime) -> list[str]:
    """Name the clusters and outages whose failback period ended after ``previous_run`` and by ``now``."""
    period = timedelta(seconds=settings.MCM_FAILBACK_AFTER_S)
    start, end = previous_run - period, now - period
    names = [
        f"cluster {name}"
        for name in Cluster.objects.filter(healthy_since__gt=start, healthy_since__lte=end).values_list(
            "name", flat=True
        )
    ]
    for outage in Outage.objects.filter(cleared_at__gt=start, cleared_at__lte=end).select_related(
        "cluster", "region__provider", "provider"
    ):
        names.append(f"{outage.scope} {outage.target}")
    return sorted(names)


def _check_monitor(now: datetime, limits: Thresholds, report: HealthReport) -> datetime | None:
    """Stamp this run on the monitor row; return when the evaluator last resumed after MCM was stopped."""
    HealthMonitor.objects.get_or_create(name=MONITOR_NAME)
    monitor = HealthMonitor.objects.select_for_update().get(name=MONITOR_NAME)
    gap_s = None if monitor.last_run_at is None else (now - monitor.last_run_at).total_seconds()
    if gap_s is None or gap_s > limits.monitor_gap_s:
        before = {"last_run_at": _iso(monitor.last_run_at), "resumed_at": _iso(monitor.resumed_at)}
        monitor.resumed_at = now
        if gap_s is None:
            reason = "first run of the health evaluator: heartbeat ages count from now"
        else:
            reason = (
                f"the health evaluator did not run for {gap_s:.0f} s (more than {limits.monitor_gap_s:.0f} s): "
                "heartbeat ages count from now, so time MCM was stopped is not blamed on clusters"
            )
        record_event(
            actor=ACTOR,
            action="health.monitor_resumed",
            subject=monitor,
            reason=reason,
            before=before,
            after={"resumed_at": _iso(now), "gap_s": None if gap_s is None else round(gap_s, 1)},
        )
        logger.warning("%s", reason)
        report.monitor_resumed = True
    monitor.last_run_at = now
    monitor.save(update_fields=["last_run_at", "resumed_at"])
    return monitor.resumed_at


def heartbeat_age_s(cluster: Cluster, *, now: datetime, resumed_at: datetime | None) -> float | None:
    """Seconds of silence to judge the cluster by; None for a cluster never heard from."""
    if cluster.last_heartbeat_at is None:
        return None
    start = max(moment for moment in (cluster.last_heartbeat_at, resumed_at, cluster.created_at) if moment is not None)
    return (now - start).total_seconds()


@dataclass(frozen=True)
class Verdict:
    health: str
    reason: str  # why the cluster has this health; used only when the health changes
    failed_reads: bool = False  # the reason is a run of failed reads, so the last error is worth adding


def judge(cluster: Cluster, *, now: datetime, resumed_at: datetime | None, limits: Thresholds) -> Verdict:
    """Return the health the cluster has now and why."""
    failures = cluster.consecutive_failures
    age_s = heartbeat_age_s(cluster, now=now, resumed_at=resumed_at)
    if failures >= limits.down_failures:
        return Verdict(DOWN, _failed_reads(failures), failed_reads=True)
    if age_s is not None and age_s > limits.down_after_s:
        return Verdict(DOWN, f"no heartbeat for {age_s:.0f} s (down after {limits.down_after_s:.0f} s)")

    recovered = _recovered(cluster, now=now, limits=limits)
    if cluster.health == DOWN and not recovered:
        return Verdict(DOWN, cluster.health_reason)
    if failures >= limits.suspect_failures:
        return Verdict(SUSPECT, _failed_reads(failures), failed_reads=True)
    if age_s is not None and age_s > limits.suspect_after_s:
        return Verdict(SUSPECT, f"no heartbeat for {age_s:.0f} s (suspect after {limits.suspect_after_s:.0f} s)")
    if cluster.health == SUSPECT and not recovered:
        return Verdict(SUSPECT, cluster.health_reason)
    return Verdict(HEALTHY, f"{cluster.consecutive_successes} successful reads in a row and a fresh heartbeat")


def _failed_reads(count: int) -> str:
    return f"{count} failed read{'s' if count != 1 else ''} in a row"


def _recovered(cluster: Cluster, *, now: datetime, limits: Thresholds) -> bool:
    """Return whether a suspect or down cluster may be healthy again: enough successful reads and a fresh heartbeat."""
    if cluster.consecutive_successes < limits.recover_successes or cluster.last_heartbeat_at is None:
        return False
    return (now - cluster.last_heartbeat_at).total_seconds() <= limits.suspect_after_s


def _last_error(cluster: Cluster) -> str:
    """Return "; last error: ..." from the cluster's latest failed read, or "" when none is stored."""
    error = (
        TelemetrySnapshot.objects.filter(cluster=cluster, ok=False)
        .order_by("-taken_at")
        .values_list("error", flat=True)
    ).first()
    return f"; last error: {error[:150]}" if error else ""


def _record_missed_heartbeats(
    clusters: list[Cluster],
    verdicts: dict[int, Verdict],
    *,
    now: datetime,
    resumed_at: datetime | None,
    limits: Thresholds,
) -> None:
    """Start ``first_missed_heartbeat_at`` when a heartbeat is late, and clear it once the cluster is healthy.

    A silence starts one interval after the last heartbeat, recorded once the heartbeat is
    ``MISSED_AFTER_INTERVALS`` intervals late. Two UPDATE statements cover every cluster.
    """
    late_after_s = MISSED_AFTER_INTERVALS * limits.interval_s
    to_start, to_clear = [], []
    for cluster in clusters:
        after = verdicts[cluster.pk].health
        age_s = heartbeat_age_s(cluster, now=now, resumed_at=resumed_at)
        late = age_s is not None and age_s > late_after_s
        if late and cluster.first_missed_heartbeat_at is None:
            to_start.append(cluster)
        elif (
            after == HEALTHY
            and cluster.first_missed_heartbeat_at is not None
            and cluster.consecutive_failures == 0
            and (cluster.health != HEALTHY or not late)
        ):
            to_clear.append(cluster)

    interval = timedelta(seconds=limits.interval_s)
    if to_start:
        Cluster.objects.filter(pk__in=[cluster.pk for cluster in to_start], first_missed_heartbeat_at=None).update(
            first_missed_heartbeat_at=F("last_heartbeat_at") + interval
        )
        for cluster in to_start:
            cluster.first_missed_heartbeat_at = cluster.last_heartbeat_at + interval
    if to_clear:
        # A read that failed since the clusters were loaded keeps its silence.
        Cluster.objects.filter(pk__in=[cluster.pk for cluster in to_clear], consecutive_failures=0).update(
            first_missed_heartbeat_at=None
        )
        for cluster in to_clear:
            cluster.first_missed_heartbeat_at = None


def _change_health(
    cluster: Cluster, verdict: Verdict, *, now: datetime, limits: Thresholds, report: HealthReport
) -> None:
    """Store one cluster's new health, audit it and raise or resolve its alerts."""
    before, after = cluster.health, verdict.health
    reason = verdict.reason + (_last_error(cluster) if verdict.failed_reads else "")
    healthy_since = cluster.healthy_since
    if after == DOWN:
        healthy_since = None
    elif after == HEALTHY and before == DOWN:
        healthy_since = now
    elif after == HEALTHY and healthy_since is not None:
        # Back from suspect: an earlier recovery from down still within the failback period keeps its start.
        if (now - healthy_since).total_seconds() >= limits.failback_s:
            healthy_since = None

    # Compare-and-set on the health read, so a change made since then is not overwritten.
    updated = Cluster.objects.filter(pk=cluster.pk, health=before).update(
        health=after, health_reason=reason[:255], health_changed_at=now, healthy_since=healthy_since
    )
    if updated != 1:
        logger.info("health of cluster %s changed during the evaluation; left for the next one", cluster.name)
        return
    record_event(
        actor=ACTOR,
        action="cluster.health_changed",
        subject=cluster,
        reason=reason,
        before={"health": before, "healthy_since": _iso(cluster.healthy_since)},
        after={
            "health": after,
            "healthy_since": _iso(healthy_since),
            "consecutive_failures": cluster.consecutive_failures,
            "consecutive_successes": cluster.consecutive_successes,
            "last_heartbeat_at": _iso(cluster.last_heartbeat_at),
            "first_missed_heartbeat_at": _iso(cluster.first_missed_heartbeat_at),
        },
    )
    cluster.health, cluster.health_reason, cluster.health_changed_at = after, reason[:255], now
    cluster.healthy_since = healthy_since
    report.changes.append(HealthChange(cluster.pk, cluster.name, before, after, reason))
    log = logger.info if after == HEALTHY else logger.warning
    log("cluster %s (id %s) is %s, was %s: %s", cluster.name, cluster.pk, after, before, reason)

    if after == DOWN:
        raise_alert("cluster.down", AlertSeverity.CRITICAL, cluster, f"cluster {cluster.name} is down: {reason}")
    else:
        resolve_alert("cluster.down", cluster)
    if after == SUSPECT:
        raise_alert("cluster.suspect", AlertSeverity.WARNING, cluster, f"cluster {cluster.name} is suspect: {reason}")
    else:
        resolve_alert("cluster.suspect", cluster)


# Region and provider outages.


def _detect_outages(clusters: list[Cluster], *, now: datetime, report: HealthReport) -> None:
    """Open a detected outage for each region and provider whose judged clusters are all down; clear recovered ones.

    A detected outage clears once one of its clusters is healthy again, or when none of its
    clusters is judged any more. Declared outages are left alone: only staff clear them.
    """
    groups: dict[tuple[str, int], list[Cluster]] = defaultdict(list)
    targets: dict[tuple[str, int], Region | Provider] = {}
    for cluster in clusters:
        for key, target in (
            ((OutageScope.REGION, cluster.region_id), cluster.region),
            ((OutageScope.PROVIDER, cluster.region.provider_id), cluster.region.provider),
        ):
            groups[key].append(cluster)
            targets[key] = target

    open_detected = {
        (outage.scope, outage.region_id if outage.scope == OutageScope.REGION else outage.provider_id): outage
        for outage in Outage.objects.filter(
            source=OutageSource.DETECTED,
            cleared_at__isnull=True,
            scope__in=[OutageScope.REGION, OutageScope.PROVIDER],
        ).select_related("region__provider", "provider")
    }

    for key, members in sorted(groups.items()):
        outage = open_detected.get(key)
        if outage is None and all(cluster.health == DOWN for cluster in members):
            _open_outage(key[0], targets[key], members, now=now, report=report)
        elif outage is not None:
            back = [cluster.name for cluster in members if cluster.health == HEALTHY]
            if back:
                _clear_outage(outage, f"cluster {back[0]} is healthy again", now=now, report=report)
    for key, outage in open_detected.items():
        if key not in groups:
            _clear_outage(outage, "none of its clusters is judged any more", now=now, report=report)


def _open_outage(
    scope: str, target: Region | Provider, members: list[Cluster], *, now: datetime, report: HealthReport
) -> None:
    names = sorted(cluster.name for cluster in members)
    reason = f"every judged cluster of {scope} {target} is down ({len(names)}: {', '.join(names[:10])})"
    outage = Outage.objects.create(
        scope=scope,
        region=target if scope == OutageScope.REGION else None,
        provider=target if scope == OutageScope.PROVIDER else None,
        source=OutageSource.DETECTED,
        reason=reason,
        declared_by=ACTOR,
        started_at=now,
    )
    record_event(
        actor=ACTOR,
        action="outage.detected",
        subject=outage,
        reason=reason,
        after={"scope": scope, "target": str(target), "clusters": names},
    )
    raise_alert(f"{scope}.down", AlertSeverity.CRITICAL, target, reason)
    report.outages_opened.append(f"{scope} {target}")
    logger.warning("outage detected: %s", reason)


def _clear_outage(outage: Outage, why: str, *, now: datetime, report: HealthReport) -> None:
    cleared = Outage.objects.filter(pk=outage.pk, cleared_at__isnull=True).update(cleared_at=now, cleared_by="health")
    if cleared != 1:
        return
    target = outage.target
    reason = f"{outage.scope} {target} recovered: {why}"
    record_event(
        actor=ACTOR,
        action="outage.cleared",
        subject=outage,
        reason=reason,
        before={"cleared_at": None},
        after={"cleared_at": _iso(now), "cleared_by": "health"},
    )
    resolve_alert(f"{outage.scope}.down", target)
    report.outages_cleared.append(f"{outage.scope} {target}")
    logger.info("outage cleared: %s", reason)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
