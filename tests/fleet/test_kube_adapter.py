"""The cluster adapter against an emulated cluster, through the official client."""

import time
from collections.abc import Iterator

import pytest

from emulator import EmulatedCluster
from fleet.kube import ClusterAdapter, ClusterError, Credentials, DesiredDeployment

H100 = "NVIDIA-H100-80GB-HBM3"
TOKEN = "adapter-test-token"


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    nodes = [("h100-a", H100, 8), ("h100-b", H100, 8)]
    with EmulatedCluster("adapter-test", nodes, ready_delay_s=0.1, token=TOKEN) as started:
        yield started


@pytest.fixture
def adapter(cluster) -> Iterator[ClusterAdapter]:
    adapter = ClusterAdapter(cluster.name, cluster.url, Credentials(token=TOKEN), timeout_s=2.0)
    yield adapter
    adapter.close()


def desired(replicas: int) -> DesiredDeployment:
    return DesiredDeployment(name="acme-chat", deployment_id=7, replicas=replicas, gpus_per_replica=4, gpu_product=H100)


def wait_ready(adapter: ClusterAdapter, expected: int, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    ready = -1
    while time.monotonic() < deadline:
        ready = adapter.list_managed_deployments()[0].ready_replicas
        if ready == expected:
            break
        time.sleep(0.05)
    return ready


def test_list_gpu_nodes_reads_product_and_count(adapter):
    nodes = adapter.list_gpu_nodes()

    assert {node.name for node in nodes} == {"h100-a", "h100-b"}
    assert all(node.gpu_product == H100 for node in nodes)
    assert sum(node.allocatable_gpus for node in nodes) == 16
    assert all(node.ready for node in nodes)


def test_apply_creates_then_scales(adapter):
    created = adapter.apply_deployment(desired(2))
    scaled = adapter.apply_deployment(desired(3))

    assert created.replicas == 2
    assert scaled.replicas == 3
    assert scaled.deployment_id == 7
    assert wait_ready(adapter, 3) == 3


def test_apply_is_idempotent(adapter):
    adapter.apply_deployment(desired(2))
    again = adapter.apply_deployment(desired(2))

    assert again.replicas == 2
    assert len(adapter.list_managed_deployments()) == 1


def test_ready_replicas_limited_by_gpus(adapter):
    adapter.apply_deployment(desired(5))  # 5 x 4 GPUs on 16 GPUs: 4 fit

    assert wait_ready(adapter, 4) == 4


def test_delete_missing_deployment_is_harmless(adapter):
    adapter.delete_deployment("not-there")

    assert adapter.list_managed_deployments() == []


def test_unreachable_cluster_error_is_retryable(adapter, cluster):
    cluster.set_unreachable(True)

    with pytest.raises(ClusterError) as caught:
        adapter.list_gpu_nodes()
    assert caught.value.retryable is True


def test_server_error_is_retryable(adapter, cluster):
    cluster.set_errors(1.0, status=503)

    with pytest.raises(ClusterError) as caught:
        adapter.list_gpu_nodes()
    assert caught.value.retryable is True
    assert caught.value.status == 503


def test_wrong_token_error_is_not_retryable(cluster):
    adapter = ClusterAdapter(cluster.name, cluster.url, Credentials(token="wrong"), timeout_s=2.0)

    with pytest.raises(ClusterError) as caught:
        adapter.list_gpu_nodes()
    assert caught.value.retryable is False
    assert caught.value.status == 401
    assert "wrong" not in str(caught.value)


def test_credentials_repr_hides_token():
    assert TOKEN not in repr(Credentials(token=TOKEN))
