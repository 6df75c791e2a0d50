"""Emulated traffic: set through Python or HTTP, served through the custom metrics API, read by MCM's adapter."""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest

from emulator import EmulatedCluster
from emulator.hub import start_hub
from fleet.kube import ClusterAdapter, ClusterError, Credentials, ObservedTraffic
from tests.emulator.helpers import TIMEOUT, TOKEN, deployment_body

METRICS = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/mcm/deployments.apps"


def request(url: str, method: str = "GET", body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    outgoing = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(outgoing, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def adapter(cluster: EmulatedCluster) -> Iterator[ClusterAdapter]:
    adapter = ClusterAdapter(cluster.name, cluster.url, Credentials(token=TOKEN), timeout_s=2.0)
    yield adapter
    adapter.close()


def managed(name: str, deployment_id: int) -> dict:
    labels = {"app.kubernetes.io/managed-by": "mcm", "mcm.io/deployment-id": str(deployment_id)}
    return deployment_body(name, replicas=0, labels=labels)


def test_metric_lists_one_item_per_origin(cluster):
    cluster.set_traffic("chat", {"DE": (12.5, 3.0), "": (1.0, None)})

    status, body = request(f"{cluster.url}{METRICS}/*/mcm_requests_per_second")

    assert status == 200
    assert body["kind"] == "MetricValueList"
    assert [(item["describedObject"]["name"], item["value"]) for item in body["items"]] == [
        ("chat", "1000m"),
        ("chat", "12500m"),
    ]
    assert [item["metric"]["selector"]["matchLabels"] for item in body["items"]] == [{}, {"origin": "DE"}]


def test_in_flight_omits_origins_without_it(cluster):
    cluster.set_traffic("chat", {"DE": (12.5, 3.0), "FR": (2.0, None)})

    _, body = request(f"{cluster.url}{METRICS}/chat/mcm_in_flight_requests")

    assert [(item["metric"]["selector"]["matchLabels"], item["value"]) for item in body["items"]] == [
        ({"origin": "DE"}, "3000m")
    ]


def test_metric_label_selector_filters_origins(cluster):
    cluster.set_traffic("chat", {"DE": (12.5, 3.0), "FR": (2.0, None)})

    _, body = request(f"{cluster.url}{METRICS}/*/mcm_requests_per_second?metricLabelSelector=origin%3DFR")

    assert [item["value"] for item in body["items"]] == ["2000m"]


def test_unknown_metric_or_deployment_gets_404(cluster):
    cluster.set_traffic("chat", {"DE": (1.0, None)})

    unknown_metric, _ = request(f"{cluster.url}{METRICS}/*/gpu_temperature")
    unknown_deployment, _ = request(f"{cluster.url}{METRICS}/search/mcm_requests_per_second")

    assert unknown_metric == 404
    assert unknown_deployment == 404


def test_discovery_lists_custom_metrics_group(api_client):
    groups = kubernetes.client.ApisApi(api_client).get_api_versions(_request_timeout=TIMEOUT)
    resources = kubernetes.client.CustomObjectsApi(api_client).get_api_resources(
        "custom.metrics.k8s.io", "v1beta2", _request_timeout=TIMEOUT
    )

    assert "custom.metrics.k8s.io" in [group.name for group in groups.groups]
    assert sorted(resource.name for resource in resources.resources) == [
        "deployments.apps/mcm_in_flight_requests",
        "deployments.apps/mcm_requests_per_second",
    ]


def test_http_control_sets_and_clears_traffic(cluster):
    body = {"deployment": "chat", "origins": {"DE": {"requests_per_second": 4, "in_flight": 1}}}

    status, table = request(f"{cluster.url}/_emulator/traffic", "POST", body)
    _, metrics = request(f"{cluster.url}{METRICS}/*/mcm_requests_per_second")
    cleared_status, cleared = request(f"{cluster.url}/_emulator/traffic", "DELETE")
    _, after = request(f"{cluster.url}{METRICS}/*/mcm_requests_per_second")

    assert status == 200
    assert table["deployments"] == [
        {"namespace": "mcm", "deployment": "chat", "origins": {"DE": {"requests_per_second": 4.0, "in_flight": 1.0}}}
    ]
    assert [item["value"] for item in metrics["items"]] == ["4000m"]
    assert cleared_status == 200
    assert cleared == {"deployments": []}
    assert after["items"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"deployment": "chat", "origins": {"DE": {"requests_per_second": -1}}}, "requests_per_second of origin 'DE'"),
        ({"deployment": "chat", "origins": {"DE": {"requests_per_second": 1, "in_flight": "x"}}}, "in_flight"),
        ({"deployment": "", "origins": {}}, "namespace and deployment must be non-empty strings"),
        ({"deployment": "chat", "origins": [1]}, "origins must be an object"),
    ],
)
def test_http_control_rejects_bad_traffic(cluster, body, message):
    status, error = request(f"{cluster.url}/_emulator/traffic", "POST", body)

    assert status == 400
    assert message in error["message"]
    assert cluster.traffic.as_dict() == {"deployments": []}


def test_control_route_needs_the_token(cluster):
    status, _ = request(f"{cluster.url}/_emulator/traffic", "POST", {"deployment": "chat", "origins": {}}, token=None)

    assert status == 401


def test_hub_forwards_traffic_routes(cluster):
    hub = start_hub([cluster])
    url = f"http://127.0.0.1:{hub.server_address[1]}/clusters/{cluster.name}/traffic"
    try:
        status, table = request(url, "POST", {"deployment": "chat", "origins": {"US": {"requests_per_second": 2}}})
        _, cleared = request(url, "DELETE")
    finally:
        hub.shutdown()
        hub.server_close()

    assert status == 200
    assert table["deployments"][0]["origins"] == {"US": {"requests_per_second": 2.0, "in_flight": None}}
    assert cleared == {"deployments": []}


def test_adapter_reads_traffic_with_deployment_ids(cluster, apps, adapter):
    apps.create_namespaced_deployment("mcm", managed("acme-chat", 7), _request_timeout=TIMEOUT)
    cluster.set_traffic("acme-chat", {"DE": (12.5, 3.0), "FR": (2.0, None)})
    cluster.set_traffic("unmanaged", {"": (5.0, 5.0)})

    traffic = adapter.read_traffic()

    assert traffic == [
        ObservedTraffic("acme-chat", 7, "DE", 12.5, 3.0),
        ObservedTraffic("acme-chat", 7, "FR", 2.0, None),
        ObservedTraffic("unmanaged", None, "", 5.0, 5.0),
    ]


def test_adapter_reads_nothing_without_traffic(adapter):
    assert adapter.read_traffic(deployments=[]) == []


def test_metrics_not_served_is_no_traffic(cluster, adapter):
    cluster.set_traffic("chat", {"DE": (1.0, None)})
    cluster.set_errors(1.0, status=503)

    assert adapter.read_traffic(deployments=[]) == []


def test_server_error_on_metrics_raises(cluster, adapter):
    cluster.set_traffic("chat", {"DE": (1.0, None)})
    cluster.set_errors(1.0, status=500)

    with pytest.raises(ClusterError) as raised:
        adapter.read_traffic(deployments=[])

    assert raised.value.status == 500
    assert raised.value.retryable
