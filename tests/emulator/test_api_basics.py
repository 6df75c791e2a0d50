"""Discovery, authentication and Nodes, read through the official kubernetes client."""

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from tests.emulator.helpers import H100, L4, TIMEOUT, client_for


def test_version_reports_emulated_release(api_client):
    info = kubernetes.client.VersionApi(api_client).get_code(_request_timeout=TIMEOUT)

    assert info.git_version == "v1.31.0-emulated"


def test_api_groups_list_apps(api_client):
    groups = kubernetes.client.ApisApi(api_client).get_api_versions(_request_timeout=TIMEOUT)

    assert [group.name for group in groups.groups] == ["apps", "custom.metrics.k8s.io"]


def test_request_without_token_gets_401(cluster):
    client = client_for(cluster, token=None)

    with pytest.raises(ApiException) as raised:
        kubernetes.client.CoreV1Api(client).list_node(_request_timeout=TIMEOUT)

    assert raised.value.status == 401


def test_request_with_wrong_token_gets_401(cluster):
    client = client_for(cluster, token="wrong-token")

    with pytest.raises(ApiException) as raised:
        kubernetes.client.CoreV1Api(client).list_node(_request_timeout=TIMEOUT)

    assert raised.value.status == 401


def test_cluster_without_token_accepts_any_request():
    from emulator import EmulatedCluster

    with EmulatedCluster("open", [("n", H100, 8)]) as open_cluster:
        nodes = kubernetes.client.CoreV1Api(client_for(open_cluster, token=None)).list_node(_request_timeout=TIMEOUT)

    assert [node.metadata.name for node in nodes.items] == ["n"]


def test_list_nodes_reports_gpu_product_and_count(core):
    nodes = {node.metadata.name: node for node in core.list_node(_request_timeout=TIMEOUT).items}

    assert sorted(nodes) == ["h100-a", "h100-b", "l4-a"]
    assert nodes["h100-a"].metadata.labels["nvidia.com/gpu.product"] == H100
    assert nodes["h100-a"].status.allocatable["nvidia.com/gpu"] == "8"
    assert nodes["l4-a"].status.capacity["nvidia.com/gpu"] == "4"


def test_nodes_are_ready_and_have_uid(core):
    node = core.read_node("h100-a", _request_timeout=TIMEOUT)

    ready = [condition for condition in node.status.conditions if condition.type == "Ready"]
    assert ready[0].status == "True"
    assert node.metadata.uid
    assert node.kind == "Node"


def test_list_nodes_filters_by_label_selector(core):
    nodes = core.list_node(label_selector=f"nvidia.com/gpu.product={L4}", _request_timeout=TIMEOUT)

    assert [node.metadata.name for node in nodes.items] == ["l4-a"]


def test_list_nodes_filters_by_set_selector(core):
    selector = f"nvidia.com/gpu.product in ({H100},other),kubernetes.io/hostname!=h100-b"
    nodes = core.list_node(label_selector=selector, _request_timeout=TIMEOUT)

    assert [node.metadata.name for node in nodes.items] == ["h100-a"]


def test_invalid_label_selector_gets_400(core):
    with pytest.raises(ApiException) as raised:
        core.list_node(label_selector="a in (b", _request_timeout=TIMEOUT)

    assert raised.value.status == 400


def test_read_missing_node_gets_404_status(core):
    with pytest.raises(ApiException) as raised:
        core.read_node("no-such-node", _request_timeout=TIMEOUT)

    assert raised.value.status == 404
    assert '"reason": "NotFound"' in raised.value.body


def test_namespaces_exist_once_created(core):
    core.create_namespace({"metadata": {"name": "serving"}}, _request_timeout=TIMEOUT)

    namespace = core.read_namespace("serving", _request_timeout=TIMEOUT)
    assert namespace.status.phase == "Active"
    with pytest.raises(ApiException) as raised:
        core.create_namespace({"metadata": {"name": "serving"}}, _request_timeout=TIMEOUT)
    assert raised.value.status == 409


def test_watch_request_gets_405(apps):
    with pytest.raises(ApiException) as raised:
        apps.list_namespaced_deployment("default", watch=True, _request_timeout=TIMEOUT)

    assert raised.value.status == 405
