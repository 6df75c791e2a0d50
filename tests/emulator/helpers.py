"""Helpers for the emulator tests: client configuration, manifests and polling."""

import time
from collections.abc import Callable

import kubernetes

from emulator import EmulatedCluster

H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
TOKEN = "emulator-test-token"
TIMEOUT = 5
READY_DELAY_S = 0.2


def client_for(cluster: EmulatedCluster, token: str | None = TOKEN) -> kubernetes.client.ApiClient:
    """Build an ApiClient the way MCM does: one Configuration per cluster, bearer token, no TLS."""
    config = kubernetes.client.Configuration(host=cluster.url)
    if token is not None:
        config.api_key = {"authorization": f"Bearer {token}"}
    config.verify_ssl = False
    return kubernetes.client.ApiClient(config)


def deployment_body(
    name: str,
    replicas: int = 1,
    gpus: int = 1,
    sku: str = H100,
    labels: dict[str, str] | None = None,
) -> dict:
    """Return a Deployment manifest of one serving container that requests `gpus` GPUs of `sku`."""
    labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": sku},
                    "containers": [
                        {
                            "name": "server",
                            "image": "vllm/vllm-openai:v0.6.0",
                            "resources": {
                                "limits": {"nvidia.com/gpu": str(gpus)},
                                "requests": {"nvidia.com/gpu": str(gpus)},
                            },
                        }
                    ],
                },
            },
        },
    }


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` every 20 ms until it is true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
