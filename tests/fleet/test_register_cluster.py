"""The register_cluster command: credentials from files, stored encrypted, never echoed."""

from collections.abc import Iterator

import pytest
import yaml
from django.core.management import CommandError, call_command

from compliance.models import AuditEvent
from emulator import EmulatedCluster
from fleet.telemetry import collect_cluster

TOKEN = "register-test-token-5f3a"
H100 = "NVIDIA-H100-80GB-HBM3"

pytestmark = pytest.mark.django_db


@pytest.fixture
def emulated() -> Iterator[EmulatedCluster]:
    with EmulatedCluster("register-test", [("h100-a", H100, 8)], ready_delay_s=0.1, token=TOKEN) as started:
        yield started


def test_token_file_registers_reachable_cluster(fleet, emulated, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    call_command("register_cluster", "aws-use1-a", "--endpoint", emulated.url, "--token-file", str(token_file))

    cluster = fleet.clusters["aws-use1-a"]
    cluster.refresh_from_db()
    assert cluster.api_endpoint == emulated.url
    assert TOKEN not in cluster.credentials_encrypted
    assert collect_cluster(cluster.pk).ok is True
    assert TOKEN not in capsys.readouterr().out


def test_registration_audited_without_secret(fleet, emulated, monkeypatch):
    monkeypatch.setenv("REGISTER_TEST_TOKEN", TOKEN)

    call_command("register_cluster", "aws-use1-a", "--endpoint", emulated.url, "--token-env", "REGISTER_TEST_TOKEN")

    event = AuditEvent.objects.get(action="cluster.registered")
    assert TOKEN not in str(event.after)
    assert event.after["credentials"]["kind"] == "token"


def test_kubeconfig_supplies_endpoint(fleet, emulated, tmp_path):
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "emulated",
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "mcm"}}],
        "clusters": [{"name": "emulated", "cluster": {"server": emulated.url}}],
        "users": [{"name": "mcm", "user": {"token": TOKEN}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))

    call_command("register_cluster", "aws-use1-a", "--kubeconfig", str(path))

    cluster = fleet.clusters["aws-use1-a"]
    cluster.refresh_from_db()
    assert cluster.api_endpoint == emulated.url
    assert collect_cluster(cluster.pk).ok is True


def test_missing_credentials_rejected(fleet):
    with pytest.raises(CommandError, match="credentials are missing"):
        call_command("register_cluster", "aws-use1-a", "--endpoint", "http://127.0.0.1:9")

    assert AuditEvent.objects.filter(action="cluster.registered").count() == 0


def test_invalid_endpoint_names_field(fleet, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    with pytest.raises(CommandError, match="api_endpoint"):
        call_command("register_cluster", "aws-use1-a", "--endpoint", "not a url", "--token-file", str(token_file))

    fleet.clusters["aws-use1-a"].refresh_from_db()
    assert fleet.clusters["aws-use1-a"].api_endpoint == ""


def test_unknown_cluster_rejected(db):
    with pytest.raises(CommandError, match="cluster 'nope' not found"):
        call_command("register_cluster", "nope", "--endpoint", "http://127.0.0.1:9", "--token-env", "X")


def test_endpoint_port_out_of_range_rejected(fleet, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    with pytest.raises(CommandError, match="api_endpoint: must be an http or https URL"):
        call_command(
            "register_cluster", "aws-use1-a", "--endpoint", "http://127.0.0.1:99999", "--token-file", str(token_file)
        )

    fleet.clusters["aws-use1-a"].refresh_from_db()
    assert fleet.clusters["aws-use1-a"].api_endpoint == ""
