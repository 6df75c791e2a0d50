"""Cluster health: read counters, transitions with hysteresis, MCM's own stops, outages, alerts and audit.

Times are explicit: ``Clock`` evaluates at offsets from a start time, every 5 seconds as the beat
schedule does with 10-second heartbeats, instead of sleeping.
"""

import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from compliance.models import AuditEvent
from fleet import telemetry
from fleet.events import ingest_events
from fleet.health import evaluate_health, record_read
from fleet.models import (
    Alert,
    Cluster,
    ClusterHealth,
    HealthMonitor,
    Outage,
    OutageScope,
    OutageSource,
    TelemetrySnapshot,
)
from fleet.telemetry import collect_many
from tasks.models import TaskRun, TaskRunStatus
from tests.placements.execution_factories import H100_LABEL, start_site

HEALTHY, SUSPECT, DOWN = ClusterHealth.HEALTHY, ClusterHealth.SUSPECT, ClusterHealth.DOWN
ENDPOINT = "http://127.0.0.1:9/"  # never contacted: these tests record reads instead of making them


@pytest.fixture(autouse=True)
def thresholds(settings):
    """The shipped defaults, pinned so that the times in these tests keep their meaning."""
    settings.MCM_HEARTBEAT_INTERVAL_S = 10
    settings.MCM_HEALTH_SUSPECT_AFTER_FAILURES = 1
    settings.MCM_HEALTH_DOWN_AFTER_FAILURES = 3
    settings.MCM_HEALTH_SUSPECT_AFTER_S = 25
    settings.MCM_HEALTH_DOWN_AFTER_S = 45
    settings.MCM_HEALTH_RECOVER_AFTER_SUCCESSES = 3
    settings.MCM_HEALTH_MONITOR_GAP_S = 30
    settings.MCM_FAILBACK_AFTER_S = 600
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000


class Clock:
    """Evaluation times as seconds after ``start``; the monitor counts as running since ``start``."""

    def __init__(self, start):
        self.start = start
        self.now = start
        HealthMonitor.objects.update_or_create(
            name="health", defaults={"last_run_at": start, "resumed_at": start - timedelta(hours=1)}
        )

    def at(self, seconds: float):
        return self.start + timedelta(seconds=seconds)

    def evaluate(self, seconds: float):
        self.now = self.at(seconds)
        return evaluate_health(now=self.now)

    def run(self, until: float, step: float = 5):
        """Evaluate every ``step`` seconds after the last evaluation up to ``until``; return the reports."""
        reports = []
        seconds = (self.now - self.start).total_seconds() + step
        while seconds <= until:
            reports.append(self.evaluate(seconds))
            seconds += step
        return reports


@pytest.fixture
def clock(db):
    # An hour ahead, so that every cluster was created before the clock starts.
    return Clock(timezone.now().replace(microsecond=0) + timedelta(hours=1))


def watch(cluster: Cluster, heartbeat_at) -> Cluster:
    """Give a cluster an API endpoint and a heartbeat, so that the evaluator judges it."""
    Cluster.objects.filter(pk=cluster.pk).update(api_endpoint=ENDPOINT, last_heartbeat_at=heartbeat_at)
    cluster.refresh_from_db()
    return cluster


def reads(cluster: Cluster, clock: Clock, *outcomes: tuple[float, bool]) -> None:
    for seconds, ok in outcomes:
        record_read(cluster.pk, ok, error="" if ok else "list nodes: ConnectionRefusedError", at=clock.at(seconds))


def step(cluster: Cluster, clock: Clock, seconds: float, ok: bool):
    """Record one read at ``seconds`` and evaluate right after it, as the schedules do; return the report."""
    reads(cluster, clock, (seconds, ok))
    return clock.evaluate(seconds)


def health_of(cluster: Cluster) -> str:
    cluster.refresh_from_db()
    return cluster.health


def open_alert_kinds(cluster: Cluster) -> set[str]:
    return set(
        Alert.objects.filter(
            subject_type="fleet.cluster", subject_id=str(cluster.pk), resolved_at__isnull=True
        ).values_list("kind", flat=True)
    )


@pytest.fixture
def east(fleet, clock):
    return watch(fleet.clusters["aws-use1-a"], clock.at(0))


# Read counters.


def test_record_read_success_counts_and_beats(east, clock):
    reads(east, clock, (0, False), (10, True), (20, True))

    east.refresh_from_db()
    assert east.consecutive_successes == 2
    assert east.consecutive_failures == 0
    assert east.last_heartbeat_at == clock.at(20)


def test_record_read_failure_counts_and_starts_silence(east, clock):
    reads(east, clock, (10, True), (20, False), (30, False))

    east.refresh_from_db()
    assert east.consecutive_failures == 2
    assert east.consecutive_successes == 0
    assert east.first_missed_heartbeat_at == clock.at(20)
    assert east.last_heartbeat_at == clock.at(10)


def test_record_read_success_clears_silence_of_healthy_cluster(east, clock):
    reads(east, clock, (10, False), (20, True))

    east.refresh_from_db()
    assert east.health == HEALTHY
    assert east.first_missed_heartbeat_at is None


def test_record_read_keeps_newer_heartbeat(east, clock):
    reads(east, clock, (30, True), (20, True))

    east.refresh_from_db()
    assert east.last_heartbeat_at == clock.at(30)


@pytest.mark.django_db(transaction=True)
def test_concurrent_reads_all_counted(fleet):
    cluster = fleet.clusters["aws-use1-a"]
    errors = []

    def fail_reads():
        try:
            for _ in range(10):
                record_read(cluster.pk, False, error="timed out")
        except Exception as error:  # reported by the assert below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=fail_reads) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    cluster.refresh_from_db()
    assert errors == []
    assert cluster.consecutive_failures == 60


# Transitions.


def test_failed_reads_make_suspect_then_down(east, clock):
    reads(east, clock, (3, False))
    first = clock.evaluate(5)
    reads(east, clock, (13, False))
    second = clock.evaluate(15)
    reads(east, clock, (23, False))
    third = clock.evaluate(25)

    assert [change.after for change in first.changes] == [SUSPECT]
    assert second.changes == []
    assert [change.after for change in third.changes] == [DOWN]
    east.refresh_from_db()
    assert east.health == DOWN
    assert east.health_changed_at == clock.at(25)
    assert east.health_reason == "3 failed reads in a row"


def test_failed_read_reason_names_stored_error(east, clock):
    TelemetrySnapshot.objects.create(cluster=east, source="pull", ok=False, error="list nodes: HTTP 503")
    reads(east, clock, (3, False))

    clock.evaluate(5)

    east.refresh_from_db()
    assert east.health_reason == "1 failed read in a row; last error: list nodes: HTTP 503"


def test_silence_makes_suspect_then_down(east, clock):
    reports = clock.run(until=60)

    health_by_second = {5 * (index + 1): report for index, report in enumerate(reports)}
    changed = {
        second: [c.after for c in report.changes] for second, report in health_by_second.items() if report.changes
    }
    # Suspect once the heartbeat is more than 25 s old, down once it is more than 45 s old.
    assert changed == {30: [SUSPECT], 50: [DOWN]}
    east.refresh_from_db()
    assert east.health_reason == "no heartbeat for 50 s (down after 45 s)"


def test_age_thresholds_follow_settings(settings, east, clock):
    settings.MCM_HEALTH_SUSPECT_AFTER_S = 8
    settings.MCM_HEALTH_DOWN_AFTER_S = 12

    assert [c.after for c in clock.evaluate(5).changes] == []
    assert [c.after for c in clock.evaluate(10).changes] == [SUSPECT]
    assert [c.after for c in clock.evaluate(15).changes] == [DOWN]


def test_failure_thresholds_follow_settings(settings, east, clock):
    settings.MCM_HEALTH_SUSPECT_AFTER_FAILURES = 2
    settings.MCM_HEALTH_DOWN_AFTER_FAILURES = 4

    reads(east, clock, (1, False))
    assert clock.evaluate(2).changes == []
    reads(east, clock, (3, False))
    assert [c.after for c in clock.evaluate(4).changes] == [SUSPECT]
    reads(east, clock, (5, False))
    assert clock.evaluate(6).changes == []
    reads(east, clock, (7, False))
    assert [c.after for c in clock.evaluate(8).changes] == [DOWN]


def test_short_gap_of_missed_heartbeats_stays_suspect(east, clock):
    # Two heartbeats (at 10 and 20 s) never arrive; the one at 30 s does.
    reports = clock.run(until=30)
    reads(east, clock, (31, True))
    reports += clock.run(until=40)

    assert [c.after for report in reports for c in report.changes] == [SUSPECT]
    assert health_of(east) == SUSPECT
    assert not any(report.replan_needed for report in reports)


def test_short_gap_of_failed_reads_stays_suspect(east, clock):
    reports = [step(east, clock, 10, False), step(east, clock, 20, False), step(east, clock, 30, True)]
    reports += clock.run(until=40)

    assert [c.after for report in reports for c in report.changes] == [SUSPECT]
    assert health_of(east) == SUSPECT
    assert "cluster.down" not in open_alert_kinds(east)


def test_suspect_recovers_after_enough_successes(east, clock):
    step(east, clock, 10, False)
    step(east, clock, 20, True)
    step(east, clock, 30, True)
    assert health_of(east) == SUSPECT

    report = step(east, clock, 40, True)

    assert [(c.before, c.after) for c in report.changes] == [(SUSPECT, HEALTHY)]
    assert not report.replan_needed
    east.refresh_from_db()
    assert east.healthy_since is None
    assert east.first_missed_heartbeat_at is None


def test_flapping_cluster_does_not_flip_to_healthy(east, clock):
    # Every other read fails: the successes never reach three in a row.
    outcomes = [(seconds, index % 2 == 1) for index, seconds in enumerate(range(5, 120, 10))]
    histories = []
    for seconds, ok in outcomes:
        step(east, clock, seconds, ok)
        histories.append(health_of(east))

    assert histories[0] == SUSPECT
    assert HEALTHY not in histories
    assert DOWN not in histories


def test_down_recovers_after_three_successes(east, clock):
    for seconds in (10, 20, 30):
        step(east, clock, seconds, False)
    assert health_of(east) == DOWN

    assert step(east, clock, 40, True).changes == []
    assert step(east, clock, 50, True).changes == []
    report = step(east, clock, 60, True)

    assert [(c.before, c.after) for c in report.changes] == [(DOWN, HEALTHY)]
    assert report.replan_needed
    east.refresh_from_db()
    assert east.healthy_since == clock.at(60)
    assert east.first_missed_heartbeat_at is None


def test_end_of_failback_period_requests_one_replan(settings, east, clock):
    settings.MCM_FAILBACK_AFTER_S = 30
    for seconds in (10, 20, 30, 40, 50, 60):
        step(east, clock, seconds, seconds > 30)
    assert health_of(east) == HEALTHY  # healthy again at 60 s, so failback is allowed from 90 s

    reports = {seconds: step(east, clock, seconds, True) for seconds in (70, 80, 90, 100)}

    assert [seconds for seconds, report in reports.items() if report.replan_needed] == [90]
    assert "cluster aws-use1-a" in reports[90].failback_ready


def test_down_stays_down_without_fresh_heartbeat(east, clock):
    for seconds in (10, 20, 30):
        step(east, clock, seconds, False)
    # Three successful reads recorded late: their heartbeat is 32 s old, older than the suspect threshold.
    reads(east, clock, (1, True), (2, True), (3, True))

    reports = clock.run(until=60)

    assert all(report.changes == [] for report in reports)
    assert health_of(east) == DOWN


def down_up_suspect_up(east: Cluster, clock: Clock) -> None:
    """Down at 30 s, healthy again at 60 s, suspect at 70 s, healthy at 100 s."""
    for seconds, ok in [(10, False), (20, False), (30, False), (40, True), (50, True), (60, True), (70, False)]:
        step(east, clock, seconds, ok)
    assert health_of(east) == SUSPECT
    for seconds in (80, 90, 100):
        step(east, clock, seconds, True)


def test_suspect_after_recovery_keeps_healthy_since_within_failback(east, clock):
    down_up_suspect_up(east, clock)

    east.refresh_from_db()
    assert east.health == HEALTHY
    assert east.healthy_since == clock.at(60)


def test_suspect_after_failback_period_clears_healthy_since(settings, east, clock):
    settings.MCM_FAILBACK_AFTER_S = 30

    down_up_suspect_up(east, clock)

    east.refresh_from_db()
    assert east.health == HEALTHY
    assert east.healthy_since is None


def test_first_missed_heartbeat_set_when_late_and_cleared(east, clock):
    clock.evaluate(15)
    east.refresh_from_db()
    assert east.first_missed_heartbeat_at is None

    clock.evaluate(20)
    east.refresh_from_db()
    assert east.health == HEALTHY
    assert east.first_missed_heartbeat_at == clock.at(10)

    clock.run(until=30)
    reads(east, clock, (31, True), (32, True), (33, True))
    clock.evaluate(35)
    east.refresh_from_db()
    assert east.health == HEALTHY
    assert east.first_missed_heartbeat_at is None


def test_transition_audited_with_counters(east, clock):
    reads(east, clock, (3, False))

    clock.evaluate(5)

    event = AuditEvent.objects.get(action="cluster.health_changed")
    assert event.actor_label == "health monitor"
    assert event.subject_type == "fleet.cluster"
    assert event.subject_id == str(east.pk)
    assert event.reason == "1 failed read in a row"
    assert event.before["health"] == HEALTHY
    assert event.after["health"] == SUSPECT
    assert event.after["consecutive_failures"] == 1
    assert event.after["first_missed_heartbeat_at"] == clock.at(3).isoformat()


def test_alerts_follow_health_without_duplicates(east, clock):
    reads(east, clock, (3, False))
    clock.evaluate(5)
    assert open_alert_kinds(east) == {"cluster.suspect"}

    reads(east, clock, (13, False), (23, False))
    clock.evaluate(25)
    clock.evaluate(30)
    assert open_alert_kinds(east) == {"cluster.down"}
    assert Alert.objects.filter(kind="cluster.down").count() == 1
    assert Alert.objects.get(kind="cluster.down").severity == "critical"

    reads(east, clock, (33, True), (34, True), (35, True))
    clock.evaluate(35)
    assert open_alert_kinds(east) == set()
    assert Alert.objects.filter(kind="cluster.down", resolved_at__isnull=False).count() == 1


def test_unchanged_evaluation_writes_no_audit(east, clock):
    reads(east, clock, (3, True), (8, True))

    clock.evaluate(5)
    clock.evaluate(10)

    assert not AuditEvent.objects.filter(action="cluster.health_changed").exists()


# Which clusters are judged.


def test_catalog_only_cluster_not_judged(fleet, clock):
    cluster = fleet.clusters["gcp-usw4-a"]

    reports = clock.run(until=120)

    assert {report.judged for report in reports} == {0}
    assert health_of(cluster) == HEALTHY
    assert not Outage.objects.exists()


def test_registered_cluster_without_heartbeat_judged_by_reads(fleet, clock):
    cluster = fleet.clusters["gcp-usw4-a"]
    Cluster.objects.filter(pk=cluster.pk).update(api_endpoint=ENDPOINT)

    reports = clock.run(until=120)
    assert {report.judged for report in reports} == {1}
    assert health_of(cluster) == HEALTHY

    reads(cluster, clock, (121, False), (122, False), (123, False))
    clock.evaluate(125)
    assert health_of(cluster) == DOWN


def test_push_only_cluster_judged_by_pushed_batches(fleet, clock):
    cluster = fleet.clusters["gcp-usw4-a"]

    def push(sequence: int, status: str) -> None:
        occurred = clock.at(sequence * 10 - 10).isoformat()
        event = {
            "event_id": f"e{sequence}",
            "cluster": cluster.name,
            "sequence": sequence,
            "kind": "health",
            "occurred_at": occurred,
            "payload": {"status": status},
        }
        ingest_events(actor="test agent", batch=[event])

    push(1, "failing")
    cluster.refresh_from_db()
    assert cluster.consecutive_failures == 1
    assert cluster.last_heartbeat_at is not None

    push(2, "ok")
    push(3, "ok")
    cluster.refresh_from_db()
    assert cluster.consecutive_failures == 0
    assert cluster.consecutive_successes == 2


def test_push_not_counted_for_registered_cluster(east, clock):
    reads(east, clock, (1, False))
    event = {
        "event_id": "e1",
        "cluster": east.name,
        "sequence": 1,
        "kind": "health",
        "occurred_at": clock.at(2).isoformat(),
        "payload": {"status": "ok"},
    }

    ingest_events(actor="test agent", batch=[event])

    east.refresh_from_db()
    assert east.consecutive_failures == 1
    assert east.consecutive_successes == 0


# MCM's own workers stopped.


def test_monitor_gap_not_blamed_on_clusters(fleet, clock):
    steady = watch(fleet.clusters["aws-use1-a"], clock.at(0))
    failing = watch(fleet.clusters["aws-euw1-a"], clock.at(0))
    watch(fleet.clusters["gcp-usw4-a"], clock.at(0))  # silent: no read after the restart
    clock.evaluate(5)

    # The evaluator and telemetry do not run for 10 minutes; every heartbeat is 600 s old.
    restart = clock.evaluate(600)

    assert restart.monitor_resumed
    assert restart.changes == []
    resumed = AuditEvent.objects.get(action="health.monitor_resumed")
    assert resumed.after["gap_s"] == 595.0
    assert HealthMonitor.objects.get().resumed_at == clock.at(600)

    # After the restart: steady reads fine, failing keeps failing reads, silent stays silent.
    down_at = {}
    for seconds in range(605, 700, 5):
        if seconds % 10 == 5:
            reads(steady, clock, (seconds, True))
            reads(failing, clock, (seconds, False))
        report = clock.evaluate(seconds)
        for change in report.changes:
            if change.after == DOWN:
                down_at[change.cluster] = seconds

    assert down_at == {"aws-euw1-a": 625, "gcp-usw4-a": 650}
    assert health_of(steady) == HEALTHY


def test_first_run_counts_as_resumption(east, clock):
    HealthMonitor.objects.all().delete()

    report = clock.evaluate(600)

    assert report.monitor_resumed
    assert report.changes == []
    assert AuditEvent.objects.get(action="health.monitor_resumed").after["gap_s"] is None


def test_regular_runs_do_not_resume(east, clock):
    reports = clock.run(until=20)

    assert not any(report.monitor_resumed for report in reports)
    assert not AuditEvent.objects.filter(action="health.monitor_resumed").exists()


# Region and provider outages.


def take_down(clock: Clock, seconds: float, *clusters: Cluster) -> None:
    for cluster in clusters:
        reads(cluster, clock, (seconds, False), (seconds + 1, False), (seconds + 2, False))


def bring_back(clock: Clock, seconds: float, *clusters: Cluster) -> None:
    for cluster in clusters:
        reads(cluster, clock, (seconds, True), (seconds + 1, True), (seconds + 2, True))


@pytest.fixture
def watched(fleet, clock):
    return {name: watch(cluster, clock.at(0)) for name, cluster in fleet.clusters.items()}


def test_region_outage_detected_and_cleared(fleet, watched, clock):
    take_down(clock, 1, watched["aws-use1-a"], watched["aws-use1-b"])

    opened = clock.evaluate(5)

    outage = Outage.objects.get()
    assert (outage.scope, outage.region, outage.source) == (OutageScope.REGION, fleet.us_east, OutageSource.DETECTED)
    assert outage.declared_by == "health monitor"
    assert "aws-use1-a, aws-use1-b" in outage.reason
    assert opened.outages_opened == ["region aws/us-east-1"]
    assert opened.replan_needed
    assert AuditEvent.objects.filter(action="outage.detected", subject_id=str(outage.pk)).count() == 1
    alert = Alert.objects.get(kind="region.down", resolved_at__isnull=True)
    assert alert.severity == "critical"
    assert alert.subject_label == "aws/us-east-1"

    bring_back(clock, 6, watched["aws-use1-b"])
    cleared = clock.evaluate(10)

    outage.refresh_from_db()
    assert outage.cleared_at == clock.at(10)
    assert outage.cleared_by == "health"
    assert cleared.outages_cleared == ["region aws/us-east-1"]
    assert cleared.replan_needed
    assert AuditEvent.objects.filter(action="outage.cleared", subject_id=str(outage.pk)).count() == 1
    assert not Alert.objects.filter(kind="region.down", resolved_at__isnull=True).exists()


def test_one_success_keeps_region_outage_open(watched, clock):
    take_down(clock, 1, watched["aws-use1-a"], watched["aws-use1-b"])
    clock.evaluate(5)

    # One read of aws-use1-b succeeds again: not enough to be healthy.
    reads(watched["aws-use1-b"], clock, (6, True))
    clock.evaluate(10)

    assert health_of(watched["aws-use1-b"]) == DOWN
    assert Outage.objects.get().is_open


def test_provider_outage_detected_and_cleared(fleet, watched, clock):
    take_down(clock, 1, watched["aws-use1-a"], watched["aws-use1-b"], watched["aws-euw1-a"])

    opened = clock.evaluate(5)
    again = clock.evaluate(10)

    assert sorted(opened.outages_opened) == ["provider aws", "region aws/eu-west-1", "region aws/us-east-1"]
    assert again.outages_opened == []
    assert Outage.objects.filter(cleared_at__isnull=True).count() == 3
    provider_outage = Outage.objects.get(scope=OutageScope.PROVIDER)
    assert provider_outage.provider == fleet.aws
    assert Alert.objects.filter(kind="provider.down", resolved_at__isnull=True).count() == 1
    assert health_of(watched["gcp-usw4-a"]) == HEALTHY

    bring_back(clock, 11, watched["aws-euw1-a"])
    clock.evaluate(15)

    provider_outage.refresh_from_db()
    assert provider_outage.cleared_by == "health"
    assert not Outage.objects.get(scope=OutageScope.REGION, region=fleet.eu_west).is_open
    assert Outage.objects.get(scope=OutageScope.REGION, region=fleet.us_east).is_open
    assert not Alert.objects.filter(kind="provider.down", resolved_at__isnull=True).exists()


def test_region_with_one_healthy_cluster_has_no_outage(watched, clock):
    take_down(clock, 1, watched["aws-use1-a"])

    report = clock.evaluate(5)

    assert report.outages_opened == []
    assert not Outage.objects.exists()


def test_declared_outage_not_cleared_by_health(fleet, watched, clock):
    declared = Outage.objects.create(
        scope=OutageScope.REGION,
        region=fleet.us_east,
        source=OutageSource.DECLARED,
        reason="provider maintenance",
        declared_by="ops",
    )

    reports = clock.run(until=20)

    declared.refresh_from_db()
    assert declared.is_open
    assert declared.cleared_by == ""
    assert not any(report.outages_cleared for report in reports)


# Replan signal and the task.


def test_replan_needed_only_for_down_changes(east, clock):
    reads(east, clock, (3, False))
    suspect = clock.evaluate(5)
    reads(east, clock, (13, False), (14, False))
    down = clock.evaluate(15)

    assert suspect.changes and not suspect.replan_needed
    assert down.replan_needed


def test_evaluate_task_enqueues_health_replan(monkeypatch, django_capture_on_commit_callbacks, east, clock):
    from fleet.tasks import evaluate_health as evaluate_task
    from tasks.tasks import plan_placements

    enqueued = []
    monkeypatch.setattr(plan_placements, "apply_async", lambda *args, **kwargs: enqueued.append(kwargs))
    # The task evaluates at the real time: make the cluster down by reads.
    HealthMonitor.objects.update(last_run_at=timezone.now())
    reads(east, clock, (1, False), (2, False), (3, False))

    with django_capture_on_commit_callbacks(execute=True):
        summary = evaluate_task.apply().get()

    assert summary["replan_needed"] is True
    assert [change["after"] for change in summary["changes"]] == [DOWN]
    assert enqueued == [{"kwargs": {"trigger": "health"}, "queue": None}]
    run = TaskRun.objects.get(task_name="evaluate_health")
    assert run.status == TaskRunStatus.SUCCEEDED
    assert run.summary["judged"] == 1


def test_evaluate_task_without_change_enqueues_nothing(monkeypatch, django_capture_on_commit_callbacks, east):
    from fleet.tasks import evaluate_health as evaluate_task
    from tasks.tasks import plan_placements

    enqueued = []
    monkeypatch.setattr(plan_placements, "apply_async", lambda *args, **kwargs: enqueued.append(kwargs))
    Cluster.objects.filter(pk=east.pk).update(last_heartbeat_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        summary = evaluate_task.apply().get()

    assert summary["replan_needed"] is False
    assert enqueued == []


def test_plan_placements_records_health_trigger(acme_chat):
    from placements.models import PlacementPlan
    from tasks.tasks import plan_placements

    version = plan_placements.apply(kwargs={"dry_run": True, "trigger": "health"}).get()

    assert PlacementPlan.objects.get(version=version).trigger == "health"


def test_plan_placements_rejects_unknown_trigger(acme_chat):
    from placements.models import PlacementPlan
    from tasks.tasks import plan_placements

    result = plan_placements.apply(kwargs={"trigger": "whim"})

    with pytest.raises(ValueError, match="trigger must be one of .*got 'whim'"):
        result.get()
    assert not PlacementPlan.objects.exists()
    assert not TaskRun.objects.filter(task_name="plan_placements").exists()


def test_setup_schedules_adds_health_schedule(settings, db):
    from django_celery_beat.models import PeriodicTask

    settings.MCM_HEARTBEAT_INTERVAL_S = 10
    call_command("setup_schedules", stdout=StringIO())

    task = PeriodicTask.objects.get(name="evaluate health")
    assert task.task == "fleet.evaluate_health"
    assert task.interval.every == 5

    call_command("setup_schedules", "--health-every", "2", stdout=StringIO())
    assert PeriodicTask.objects.get(name="evaluate health").interval.every == 2
    assert PeriodicTask.objects.get(name="collect telemetry").interval.every == 10


# Reading many clusters at once.


@pytest.fixture
def sites(fleet):
    started = [
        start_site(fleet.clusters[name], [(f"{name}-h100", H100_LABEL, 8)])
        for name in ("aws-use1-a", "aws-euw1-a", "gcp-usw4-a")
    ]
    yield {site.cluster.name: site for site in started}
    for site in started:
        site.emulated.stop()


def test_collect_many_reads_clusters_and_records_failure(sites, fleet):
    sites["aws-euw1-a"].emulated.set_unreachable(True)
    ids = [site.cluster.pk for site in sites.values()]
    catalog_only = fleet.clusters["aws-use1-b"].pk

    snapshots = collect_many([*ids, catalog_only, 999_999], max_workers=4)

    by_name = {snapshot.cluster.name: snapshot for snapshot in snapshots}
    assert list(by_name) == ["aws-use1-a", "aws-euw1-a", "gcp-usw4-a", "aws-use1-b"]
    assert by_name["aws-use1-a"].ok
    assert by_name["aws-use1-a"].gpus_by_sku == {"H100": {"allocatable": 8, "nodes": 1, "largest_node": 8}}
    assert not by_name["aws-euw1-a"].ok
    assert "list nodes" in by_name["aws-euw1-a"].error
    assert not by_name["aws-use1-b"].ok
    assert "no API endpoint" in by_name["aws-use1-b"].error

    clusters = {cluster.name: cluster for cluster in Cluster.objects.all()}
    assert clusters["aws-use1-a"].consecutive_successes == 1
    assert clusters["aws-use1-a"].last_heartbeat_at == by_name["aws-use1-a"].taken_at
    assert clusters["gcp-usw4-a"].consecutive_successes == 1
    assert clusters["aws-euw1-a"].consecutive_failures == 1
    assert clusters["aws-euw1-a"].last_heartbeat_at is None
    assert clusters["aws-euw1-a"].first_missed_heartbeat_at == by_name["aws-euw1-a"].taken_at
    assert clusters["aws-use1-a"].capacities.get(sku__name="H100").allocatable_gpus == 8


def test_collect_many_stores_in_chunks(monkeypatch, sites):
    monkeypatch.setattr(telemetry, "STORE_CHUNK", 2)
    ids = [site.cluster.pk for site in sites.values()]

    snapshots = collect_many(ids)

    assert [snapshot.cluster_id for snapshot in snapshots] == ids
    assert all(snapshot.ok for snapshot in snapshots)
    heartbeats = dict(Cluster.objects.filter(pk__in=ids).values_list("pk", "last_heartbeat_at"))
    assert heartbeats == {snapshot.cluster_id: snapshot.taken_at for snapshot in snapshots}


def test_collect_many_failures_feed_health(sites, settings):
    settings.MCM_HEALTH_MONITOR_GAP_S = 3600
    sites["gcp-usw4-a"].emulated.set_unreachable(True)
    ids = [site.cluster.pk for site in sites.values()]

    for _ in range(3):
        collect_many(ids)
    report = evaluate_health()

    assert [(change.cluster, change.after) for change in report.changes] == [("gcp-usw4-a", DOWN)]
    assert Outage.objects.get(scope=OutageScope.PROVIDER).provider.name == "gcp"
