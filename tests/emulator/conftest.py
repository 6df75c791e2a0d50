"""Fixtures: one emulated cluster and official-client APIs configured as MCM configures them."""

from collections.abc import Iterator

import kubernetes
import pytest

from emulator import EmulatedCluster
from tests.emulator.helpers import H100, L4, READY_DELAY_S, TOKEN, client_for


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    """A cluster of two 8-GPU H100 nodes and one 4-GPU L4 node; pods are ready after 0.2 s."""
    nodes = [("h100-a", H100, 8), ("h100-b", H100, 8), ("l4-a", L4, 4)]
    with EmulatedCluster("test-cluster", nodes, ready_delay_s=READY_DELAY_S, token=TOKEN) as started:
        yield started


@pytest.fixture
def api_client(cluster: EmulatedCluster) -> Iterator[kubernetes.client.ApiClient]:
    client = client_for(cluster)
    yield client
    client.close()


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture
def apps(api_client: kubernetes.client.ApiClient) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client)
