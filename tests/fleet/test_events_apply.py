"""apply_events: stored events change capacity and heartbeats in sequence order, once each."""

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone
from kombu.exceptions import OperationalError

from compliance.models import AuditEvent
from fleet.events import apply_events, ingest_events
from fleet.models import CatalogOffer, Cluster, ClusterCapacity, ClusterEvent
from fleet.tasks import apply_cluster_events, apply_pending_events
from tasks.models import TaskRun

CLUSTER = "aws-use1-a"  # the fleet fixture gives it 16 H100 (4 in use) and 8 L4


def capacity(number: int, gpus: dict, *, cluster: str = CLUSTER, minute: int = 0, **payload) -> dict:
    return {
        "event_id": f"{cluster}-{number}",
        "cluster": cluster,
        "sequence": number,
        "kind": "capacity",
        "occurred_at": f"2026-12-04T10:{minute:02d}:{number % 60:02d}Z",
        "payload": {"gpus": gpus, **payload},
    }


def health(number: int, status: str = "ok", *, cluster: str = CLUSTER) -> dict:
    return {
        "event_id": f"{cluster}-{number}",
        "cluster": cluster,
        "sequence": number,
        "kind": "health",
        "occurred_at": f"2026-12-04T10:00:{number % 60:02d}Z",
        "payload": {"status": status},
    }


def ingest(*events: dict):
    return ingest_events(actor="test agent", batch=list(events))


def cluster_state(name: str = CLUSTER) -> dict:
    cluster = Cluster.objects.get(name=name)
    rows = ClusterCapacity.objects.filter(cluster=cluster).order_by("sku__name")
    return {
        "last_applied_sequence": cluster.last_applied_sequence,
        "last_heartbeat_at": cluster.last_heartbeat_at,
        "capacity": [(row.sku.name, row.total_gpus, row.allocatable_gpus, row.in_use_gpus) for row in rows],
        "unapplied": list(ClusterEvent.objects.filter(applied_at__isnull=True).values_list("sequence", flat=True)),
    }


def three_events() -> list[dict]:
    return [
        capacity(1, {"H100": {"allocatable": 12, "in_use": 2}}),
        health(2, "degraded"),
        capacity(3, {"H100": {"allocatable": 14, "in_use": 5}}),
    ]


def cluster_id(name: str = CLUSTER) -> int:
    return Cluster.objects.get(name=name).pk


@pytest.mark.django_db
def test_in_order_events_update_capacity(fleet):
    ingest(*three_events())

    applied = apply_events(cluster_id())

    assert applied == 3
    state = cluster_state()
    assert state["last_applied_sequence"] == 3
    assert state["capacity"] == [("H100", 16, 14, 5), ("L4", 8, 8, 0)]
    assert state["unapplied"] == []


@pytest.mark.django_db
def test_applied_events_get_applied_at(fleet):
    ingest(*three_events())

    apply_events(cluster_id())

    assert ClusterEvent.objects.filter(applied_at__isnull=False).count() == 3


@pytest.mark.django_db
def test_reordered_batch_matches_in_order(fleet):
    first, second, third = three_events()
    ingest(first, second, third)
    apply_events(cluster_id())
    in_order = cluster_state()
    ClusterEvent.objects.all().delete()
    Cluster.objects.filter(pk=cluster_id()).update(last_applied_sequence=0, last_heartbeat_at=None)
    ClusterCapacity.objects.filter(cluster__name=CLUSTER, sku__name="H100").update(allocatable_gpus=16, in_use_gpus=4)

    ingest(third, first, second)
    apply_events(cluster_id())

    assert cluster_state() == in_order


@pytest.mark.django_db
def test_out_of_order_batches_match_in_order(fleet):
    first, second, third = three_events()

    ingest(third)
    apply_events(cluster_id())
    ingest(first, second)
    apply_events(cluster_id())

    state = cluster_state()
    assert state["last_applied_sequence"] == 3
    assert state["capacity"] == [("H100", 16, 14, 5), ("L4", 8, 8, 0)]


@pytest.mark.django_db
def test_gap_stops_application(fleet):
    first, _, third = three_events()
    ingest(first, third)

    applied = apply_events(cluster_id())

    state = cluster_state()
    assert applied == 1
    assert state["last_applied_sequence"] == 1
    assert state["capacity"] == [("H100", 16, 12, 2), ("L4", 8, 8, 0)]
    assert state["unapplied"] == [3]


@pytest.mark.django_db
def test_stale_gap_is_skipped_and_audited(fleet, settings):
    settings.MCM_EVENT_GAP_TIMEOUT_S = 60
    first, _, third = three_events()
    ingest(first, third)
    ClusterEvent.objects.filter(sequence=3).update(received_at=timezone.now() - timedelta(seconds=61))

    applied = apply_events(cluster_id())

    state = cluster_state()
    assert applied == 2
    assert state["last_applied_sequence"] == 3
    assert state["unapplied"] == []
    event = AuditEvent.objects.get(action="events.gap_skipped")
    assert event.after == {"first_missing": 2, "last_missing": 2}


@pytest.mark.django_db
def test_recent_gap_still_waits(fleet, settings):
    settings.MCM_EVENT_GAP_TIMEOUT_S = 60
    first, _, third = three_events()
    ingest(first, third)

    apply_events(cluster_id())

    assert cluster_state()["last_applied_sequence"] == 1
    assert not AuditEvent.objects.filter(action="events.gap_skipped").exists()


@pytest.mark.django_db
def test_filled_gap_resumes_application(fleet):
    first, second, third = three_events()
    ingest(first, third)
    apply_events(cluster_id())

    ingest(second)
    applied = apply_events(cluster_id())

    state = cluster_state()
    assert applied == 2
    assert state["last_applied_sequence"] == 3
    assert state["capacity"] == [("H100", 16, 14, 5), ("L4", 8, 8, 0)]


@pytest.mark.django_db
def test_second_apply_applies_nothing(fleet):
    ingest(*three_events())
    apply_events(cluster_id())
    before = cluster_state()

    applied = apply_events(cluster_id())

    assert applied == 0
    assert cluster_state() == before


@pytest.mark.django_db
def test_long_backlog_is_applied_in_chunks(fleet):
    ingest(*[capacity(number, {"H100": {"allocatable": number % 16}}) for number in range(1, 1201)])

    applied = apply_events(cluster_id())

    assert applied == 1200
    assert cluster_state()["capacity"][0] == ("H100", 16, 1200 % 16, 0)


@pytest.mark.django_db
def test_new_sku_gets_a_capacity_row(fleet):
    ingest(capacity(1, {"L4": {"allocatable": 4}}, cluster="aws-euw1-a"))

    apply_events(cluster_id("aws-euw1-a"))

    row = ClusterCapacity.objects.get(cluster__name="aws-euw1-a", sku__name="L4")
    assert (row.total_gpus, row.allocatable_gpus, row.in_use_gpus) == (4, 4, 0)
    assert row.hourly_price_per_gpu == Decimal("0")


@pytest.mark.django_db
def test_new_sku_is_priced_from_the_catalog(fleet):
    CatalogOffer.objects.create(
        region=fleet.eu_west,
        instance_type="g6.12xlarge",
        sku=fleet.l4,
        gpu_count=4,
        price=Decimal("4.6"),
        source_file="x",
    )
    ingest(capacity(1, {"L4": {"allocatable": 4}}, cluster="aws-euw1-a"))

    apply_events(cluster_id("aws-euw1-a"))

    row = ClusterCapacity.objects.get(cluster__name="aws-euw1-a", sku__name="L4")
    assert row.hourly_price_per_gpu == Decimal("1.15")


@pytest.mark.django_db
def test_allocatable_above_total_raises_total(fleet):
    ingest(capacity(1, {"H100": {"allocatable": 24}}))

    apply_events(cluster_id())

    assert cluster_state()["capacity"][0] == ("H100", 24, 24, 4)


@pytest.mark.django_db
def test_in_use_above_allocatable_is_clamped(fleet):
    ingest(capacity(1, {"H100": {"allocatable": 6, "in_use": 9}}))

    apply_events(cluster_id())

    assert cluster_state()["capacity"][0] == ("H100", 16, 6, 6)


@pytest.mark.django_db
def test_lower_allocatable_clamps_kept_in_use(fleet):
    ingest(capacity(1, {"H100": {"allocatable": 2}}))

    apply_events(cluster_id())

    assert cluster_state()["capacity"][0] == ("H100", 16, 2, 2)


@pytest.mark.django_db
def test_complete_report_zeroes_missing_skus(fleet):
    ingest(capacity(1, {"H100": {"allocatable": 16, "in_use": 0}}, complete=True))

    apply_events(cluster_id())

    assert cluster_state()["capacity"] == [("H100", 16, 16, 0), ("L4", 8, 0, 0)]


@pytest.mark.django_db
def test_partial_report_keeps_missing_skus(fleet):
    ingest(capacity(1, {"H100": {"allocatable": 16, "in_use": 0}}))

    apply_events(cluster_id())

    assert cluster_state()["capacity"] == [("H100", 16, 16, 0), ("L4", 8, 8, 0)]


@pytest.mark.django_db
def test_other_kinds_leave_capacity_unchanged(fleet, acme_chat):
    before = cluster_state()["capacity"]
    ingest(
        health(1, "failing"),
        {**health(2), "kind": "utilization", "payload": {"gpus_in_use": {"H100": 3}}},
        {**health(3), "kind": "traffic", "payload": {"deployment_id": acme_chat.pk, "requests_per_second": 3.0}},
    )

    applied = apply_events(cluster_id())

    assert applied == 3
    assert cluster_state()["capacity"] == before


@pytest.mark.django_db
def test_heartbeat_is_the_newest_event_time(fleet):
    ingest(capacity(1, {}, minute=5), capacity(2, {}, minute=3))

    apply_events(cluster_id())

    assert cluster_state()["last_heartbeat_at"] == datetime(2026, 12, 4, 10, 5, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_heartbeat_never_moves_back(fleet):
    ingest(capacity(1, {}, minute=5))
    ingest(capacity(2, {}, minute=3))

    apply_events(cluster_id())

    assert cluster_state()["last_heartbeat_at"] == datetime(2026, 12, 4, 10, 5, 1, tzinfo=UTC)


@pytest.mark.django_db
def test_heartbeat_moves_even_behind_a_gap(fleet):
    ingest(capacity(2, {}, minute=7))

    assert cluster_state()["last_heartbeat_at"] == datetime(2026, 12, 4, 10, 7, 2, tzinfo=UTC)


@pytest.mark.django_db
def test_future_heartbeat_capped_at_now(fleet):
    future = timezone.now() + timedelta(days=1)
    ingest({**capacity(1, {}), "occurred_at": future.isoformat()})

    apply_events(cluster_id())

    assert cluster_state()["last_heartbeat_at"] <= timezone.now()


@pytest.mark.django_db
def test_pending_sweep_applies_every_cluster(fleet):
    ingest(*three_events(), capacity(1, {"L4": {"allocatable": 30}}, cluster="gcp-usw4-a"))

    applied = apply_pending_events()

    assert applied == 4
    assert ClusterEvent.objects.filter(applied_at__isnull=True).count() == 0
    assert TaskRun.objects.get(task_name="apply_pending_events").summary == {"clusters": 2, "events_applied": 4}


@pytest.fixture
def broker_down(monkeypatch):
    """Make every enqueue fail as it does when Redis is unreachable."""

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(apply_cluster_events, "apply_async", refuse)


@pytest.mark.django_db(transaction=True)
def test_concurrent_appliers_apply_each_event_once(fleet, broker_down):
    ingest(*[capacity(number, {"H100": {"allocatable": number % 16}}) for number in range(1, 1501)])
    counts: list[int] = []
    barrier = threading.Barrier(4)

    def applier():
        try:
            barrier.wait()
            counts.append(apply_events(cluster_id()))
        finally:
            connection.close()

    threads = [threading.Thread(target=applier) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(counts) == 1500
    assert cluster_state()["last_applied_sequence"] == 1500
