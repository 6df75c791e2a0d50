"""A cluster's bearer token never reaches a log record, an API response, an admin page or the audit trail.

The cluster is an emulated Kubernetes API on 127.0.0.1 reached through the real ``kubernetes`` client.
Every logger runs at DEBUG, the ``kubernetes`` client's and urllib3's included. Meanwhile MCM registers
the cluster and reads it with the right token. It then reads it again after the token was replaced by a
wrong one, because that authentication failure takes the error path, which logs the most. Finally, staff
open its pages.
"""

import logging
from collections.abc import Iterator

import pytest
from django.core.management import call_command

from compliance.models import AuditEvent
from emulator import EmulatedCluster
from fleet.credentials import encrypt_credentials
from fleet.kube import Credentials
from fleet.models import Cluster
from fleet.telemetry import collect_cluster
from tests.conftest import token_client

TOKEN = "cluster-secret-7d1e9a2c"
WRONG = "wrong-secret-4b8f0e61"
H100 = "NVIDIA-H100-80GB-HBM3"

pytestmark = pytest.mark.django_db


@pytest.fixture
def emulated() -> Iterator[EmulatedCluster]:
    with EmulatedCluster("secrets-test", [("h100-a", H100, 8)], ready_delay_s=0.1, token=TOKEN) as started:
        yield started


def test_cluster_token_never_exposed(fleet, emulated, tmp_path, superuser_client, ops, caplog):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    cluster = fleet.clusters["aws-use1-a"]

    with caplog.at_level(logging.DEBUG):
        call_command("register_cluster", cluster.name, "--endpoint", emulated.url, "--token-file", str(token_file))
        assert collect_cluster(cluster.pk).ok is True
        Cluster.objects.filter(pk=cluster.pk).update(
            credentials_encrypted=encrypt_credentials(Credentials(token=WRONG))
        )
        failed = collect_cluster(cluster.pk)
        pages = [
            superuser_client.get(f"/admin/fleet/cluster/{cluster.pk}/change/"),
            superuser_client.get("/admin/fleet/cluster/"),
            superuser_client.get("/admin/compliance/auditevent/"),
            token_client(ops).get(f"/api/v1/clusters/{cluster.pk}/"),
            token_client(ops).get("/api/v1/audit-events/"),
            token_client(ops).get("/api/v1/audit-events/export.csv"),
        ]

    assert failed.ok is False  # the wrong token was rejected, so the error path ran
    assert [page.status_code for page in pages] == [200] * len(pages)
    # The run logged enough to make the check mean something: the kubernetes client's own requests.
    assert any(record.name.startswith("urllib3") for record in caplog.records)
    for secret in (TOKEN, WRONG):
        assert secret not in caplog.text
        for page in pages:
            body = b"".join(page) if getattr(page, "streaming", False) else page.content
            assert secret.encode() not in body, page.request["PATH_INFO"]
        for event in AuditEvent.objects.all():
            assert secret not in f"{event.reason} {event.before} {event.after}"
    assert AuditEvent.objects.filter(action="cluster.registered").exists()
