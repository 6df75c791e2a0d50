"""Pulled telemetry from emulated clusters, and cluster registration."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from compliance.models import AuditEvent
from emulator import EmulatedCluster
from fleet.clusters import register_cluster
from fleet.credentials import decrypt_credentials
from fleet.models import ClusterCapacity
from fleet.telemetry import collect_cluster
from tests.placements.execution_factories import H100_LABEL, L4_LABEL, TOKEN, start_site

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000


@pytest.fixture
def east(fleet):
    site = start_site(fleet.clusters["aws-use1-a"], [("h100-a", H100_LABEL, 8), ("h100-b", H100_LABEL, 8)])
    yield site
    site.emulated.stop()


def capacity(cluster, sku_name: str) -> ClusterCapacity:
    return ClusterCapacity.objects.get(cluster=cluster, sku__name=sku_name)


def test_collect_records_snapshot_and_heartbeat(east, acme_chat):
    east.run_directly(acme_chat, 2)

    snapshot = collect_cluster(east.cluster.pk)

    east.cluster.refresh_from_db()
    assert snapshot.ok
    assert snapshot.gpus_by_sku == {"H100": {"allocatable": 16, "nodes": 2, "largest_node": 8}}
    assert snapshot.deployments[str(acme_chat.pk)]["replicas"] == 2
    assert east.cluster.last_heartbeat_at == snapshot.taken_at


def test_collect_sets_allocatable_and_keeps_price(east):
    east.emulated.lose_capacity("h100-b")

    collect_cluster(east.cluster.pk)

    row = capacity(east.cluster, "H100")
    assert row.allocatable_gpus == 8
    assert row.total_gpus == 16
    assert row.in_use_gpus == 4
    assert row.hourly_price_per_gpu == Decimal("2.50")


def test_collect_zeroes_sku_no_node_reports(east):
    collect_cluster(east.cluster.pk)

    row = capacity(east.cluster, "L4")
    assert row.allocatable_gpus == 0
    assert row.in_use_gpus == 0
    assert row.total_gpus == 8


def test_collect_raises_total_to_allocatable(fleet):
    nodes = [(f"h100-{index}", H100_LABEL, 8) for index in range(3)]
    site = start_site(fleet.clusters["aws-use1-a"], nodes)
    try:
        collect_cluster(site.cluster.pk)
    finally:
        site.emulated.stop()

    row = capacity(site.cluster, "H100")
    assert row.allocatable_gpus == 24
    assert row.total_gpus == 24


def test_collect_prices_new_sku_from_cheapest_cluster(fleet):
    site = start_site(fleet.clusters["aws-euw1-a"], [("h100-a", H100_LABEL, 8), ("l4-a", L4_LABEL, 4)])
    try:
        collect_cluster(site.cluster.pk)
    finally:
        site.emulated.stop()

    row = capacity(site.cluster, "L4")
    assert row.allocatable_gpus == 4
    assert row.hourly_price_per_gpu == Decimal("0.70")


def test_collect_records_unknown_gpu_product(fleet):
    nodes = [("h100-a", H100_LABEL, 8), ("odd-a", "Acme-Matrix-9000", 4)]
    site = start_site(fleet.clusters["aws-euw1-a"], nodes)
    try:
        snapshot = collect_cluster(site.cluster.pk)
    finally:
        site.emulated.stop()

    assert snapshot.unknown_gpu_products == ["Acme-Matrix-9000"]
    assert set(snapshot.gpus_by_sku) == {"H100"}


def test_unreachable_cluster_records_failure_without_heartbeat(east):
    east.emulated.set_unreachable(True)

    snapshot = collect_cluster(east.cluster.pk)

    east.cluster.refresh_from_db()
    assert not snapshot.ok
    assert "list nodes" in snapshot.error
    assert east.cluster.last_heartbeat_at is None
    assert capacity(east.cluster, "H100").allocatable_gpus == 16


def test_wrong_token_failure_hides_token(east):
    register_cluster(
        actor="test", cluster=east.cluster, api_endpoint=east.emulated.url, credentials={"token": "wrong-token"}
    )

    snapshot = collect_cluster(east.cluster.pk)

    assert not snapshot.ok
    assert "401" in snapshot.error
    assert "wrong-token" not in snapshot.error


def test_unregistered_cluster_records_failure(fleet):
    snapshot = collect_cluster(fleet.clusters["gcp-usw4-a"].pk)

    assert not snapshot.ok
    assert "register_cluster" in snapshot.error


def test_register_cluster_encrypts_and_audits_without_secret(fleet, ops):
    with EmulatedCluster("reg", [], token=TOKEN) as emulated:
        cluster = register_cluster(
            actor=ops, cluster=fleet.clusters["gcp-usw4-a"], api_endpoint=emulated.url, credentials={"token": TOKEN}
        )

    event = AuditEvent.objects.get(action="cluster.registered")
    assert TOKEN not in cluster.credentials_encrypted
    assert decrypt_credentials(cluster.credentials_encrypted).token == TOKEN
    assert TOKEN not in str(event.after)
    assert event.after["credentials"]["kind"] == "token"
    assert event.actor == ops


@pytest.mark.parametrize(
    ("endpoint", "credentials", "field"),
    [
        ("not a url", {"token": TOKEN}, "api_endpoint"),
        ("ftp://127.0.0.1:1", {"token": TOKEN}, "api_endpoint"),
        ("http://127.0.0.1:1", {}, "credentials"),
        ("http://127.0.0.1:1", {"token": TOKEN, "password": "x"}, "credentials"),
    ],
)
def test_register_cluster_rejects_invalid_input(fleet, endpoint, credentials, field):
    cluster = fleet.clusters["gcp-usw4-a"]

    with pytest.raises(ValidationError) as caught:
        register_cluster(actor="test", cluster=cluster, api_endpoint=endpoint, credentials=credentials)

    cluster.refresh_from_db()
    assert field in caught.value.message_dict
    assert cluster.api_endpoint == ""
    assert not AuditEvent.objects.filter(action="cluster.registered").exists()
