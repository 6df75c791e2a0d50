"""Many clusters in one process, the control hub, the command line and request latency."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import kubernetes
import pytest
import urllib3

from emulator import gpu_nodes, start_clusters
from emulator.hub import start_hub
from tests.emulator.helpers import H100, TIMEOUT, client_for, deployment_body, wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fifty_clusters():
    specs = [
        {"name": f"c{index}", "nodes": gpu_nodes(f"c{index}-node", H100, 2), "ready_delay_s": 0.1, "token": "t"}
        for index in range(50)
    ]
    clusters = start_clusters(specs)
    yield clusters
    for cluster in clusters:
        cluster.stop()


def test_fifty_clusters_serve_deployments(fifty_clusters):
    clients = [kubernetes.client.AppsV1Api(client_for(cluster, token="t")) for cluster in fifty_clusters]
    for apps in clients:
        apps.create_namespaced_deployment(
            "default", deployment_body("llama", replicas=2, gpus=8), _request_timeout=TIMEOUT
        )

    def all_ready():
        return all(
            apps.read_namespaced_deployment("llama", "default", _request_timeout=TIMEOUT).status.ready_replicas == 2
            for apps in clients
        )

    assert len({cluster.port for cluster in fifty_clusters}) == 50
    assert wait_for(all_ready, timeout=10)


def test_hub_switches_one_cluster_off_and_on(fifty_clusters):
    hub = start_hub(fifty_clusters[:2])
    hub_url = f"http://127.0.0.1:{hub.server_address[1]}"
    core = kubernetes.client.CoreV1Api(client_for(fifty_clusters[0], token="t"))
    try:
        down = urllib.request.Request(
            f"{hub_url}/clusters/c0/faults", data=json.dumps({"unreachable": True}).encode(), method="POST"
        )
        urllib.request.urlopen(down, timeout=TIMEOUT).read()
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            core.list_node(_request_timeout=TIMEOUT)

        urllib.request.urlopen(
            urllib.request.Request(f"{hub_url}/clusters/c0/faults", method="DELETE"), timeout=TIMEOUT
        )
        listing = json.loads(urllib.request.urlopen(f"{hub_url}/clusters", timeout=TIMEOUT).read())
    finally:
        hub.shutdown()
        hub.server_close()

    assert len(core.list_node(_request_timeout=TIMEOUT).items) == 2
    assert [entry["name"] for entry in listing["clusters"]] == ["c0", "c1"]
    assert listing["clusters"][0]["faults"]["unreachable"] is False


def test_command_line_starts_clusters_and_hub():
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--clusters", "2", "--nodes", "1", "--token", "t"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        lines = [json.loads(process.stdout.readline()) for _ in range(3)]
        url = lines[0]["url"]
        request = urllib.request.Request(url + "/api/v1/nodes", headers={"Authorization": "Bearer t"})
        nodes = json.loads(urllib.request.urlopen(request, timeout=TIMEOUT).read())
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=10)

    assert [line.get("name") for line in lines[:2]] == ["emu-0", "emu-1"]
    assert lines[2]["hub"].startswith("http://127.0.0.1:")
    assert [node["metadata"]["name"] for node in nodes["items"]] == ["emu-0-node-0"]
    assert exit_code == 0


@pytest.mark.slow
def test_latency_does_not_grow_with_requests(apps):
    for index in range(20):
        apps.create_namespaced_deployment("default", deployment_body(f"d{index}"), _request_timeout=TIMEOUT)

    durations = []
    for index in range(2000):
        started = time.perf_counter()
        if index % 2:
            apps.list_namespaced_deployment("default", label_selector="app=d3", _request_timeout=TIMEOUT)
        else:
            apps.patch_namespaced_deployment(
                f"d{index % 20}", "default", {"metadata": {"labels": {"n": str(index)}}}, _request_timeout=TIMEOUT
            )
        durations.append(time.perf_counter() - started)

    first = statistics.median(durations[:100])
    last = statistics.median(durations[-100:])
    assert last <= 3 * first + 0.005, f"median latency grew from {first * 1000:.1f} ms to {last * 1000:.1f} ms"
