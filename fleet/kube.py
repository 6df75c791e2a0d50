"""The one adapter between MCM and a cluster's Kubernetes API, through the official client.

Every call has a time-out, and every failure is raised as ``ClusterError`` with ``retryable`` set,
so callers retry only what is worth retrying. Credentials are never logged or put in messages.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config
from kubernetes.utils import parse_quantity

logger = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "mcm"
DEPLOYMENT_ID_LABEL = "mcm.io/deployment-id"
NAMESPACE = "mcm"

# HTTP statuses worth retrying: conflicts (re-read and try again), throttling and server errors.
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})

# Traffic comes from the Kubernetes custom metrics API (custom.metrics.k8s.io/v1beta2), as a
# metrics adapter such as prometheus-adapter serves it: one MetricValueList per metric, with an item
# per Deployment and demand origin, the origin in the item's metric selector.
CUSTOM_METRICS_PATH = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/deployments.apps/*/{metric}"
REQUESTS_METRIC = "mcm_requests_per_second"
IN_FLIGHT_METRIC = "mcm_in_flight_requests"
ORIGIN_LABEL = "origin"
# A cluster without a metrics adapter returns 404 (no such API group) or 503 (the APIService is
# registered but its backend is down).
METRICS_NOT_SERVED_STATUSES = frozenset({404, 503})


class ClusterError(Exception):
    """A failed call to a cluster's API; ``retryable`` is True when trying again may succeed."""

    def __init__(self, cluster: str, operation: str, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(f"{operation} on cluster {cluster} failed: {message}")
        self.cluster = cluster
        self.operation = operation
        self.message = message
        self.retryable = retryable
        self.status = status

    def __reduce__(self):
        # Keyword-only arguments are not in ``args``, so the default pickling would lose them;
        # Celery pickles the exception when it retries a task.
        return (_rebuild_cluster_error, (self.cluster, self.operation, self.message, self.retryable, self.status))


def _rebuild_cluster_error(cluster: str, operation: str, message: str, retryable: bool, status: int | None):
    return ClusterError(cluster, operation, message, retryable=retryable, status=status)


@dataclass(frozen=True)
class NodeGpus:
    name: str
    gpu_product: str  # value of the nvidia.com/gpu.product label, "" when absent
    allocatable_gpus: int
    ready: bool


@dataclass(frozen=True)
class ObservedDeployment:
    name: str
    deployment_id: int | None
    replicas: int
    ready_replicas: int
    gpu_product: str


@dataclass(frozen=True)
class ObservedTraffic:
    """The traffic one Deployment serves from one demand origin, as the custom metrics API reports it."""

    name: str
    deployment_id: int | None  # from the Deployment's mcm.io/deployment-id label; None when unknown
    origin: str  # "" when the metric has no origin label
    requests_per_second: float
    in_flight: float | None  # None when the cluster does not report in-flight requests


@dataclass(frozen=True)
class DesiredDeployment:
    """The Deployment that MCM requests on one cluster for one MCM deployment."""

    name: str
    deployment_id: int
    replicas: int
    gpus_per_replica: int
    gpu_product: str
    image: str = "registry.example/model-server:latest"


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to a cluster: a bearer token (with an optional CA) or a kubeconfig."""

    token: str = ""
    ca_cert_pem: str = ""
    kubeconfig: dict[str, Any] | None = None
    insecure_skip_tls_verify: bool = False

    def __repr__(self) -> str:  # keeps secrets out of logs and tracebacks
        return "Credentials(<redacted>)"


class CallRateLimiter:
    """Spaces calls at least ``1 / calls_per_second`` seconds apart; shared by the threads of one process."""

    def __init__(
        self,
        calls_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if calls_per_second <= 0:
            raise ValueError(f"calls_per_second must be greater than 0, got {calls_per_second}")
        self.interval_s = 1.0 / calls_per_second
        self.clock = clock
        self.sleep = sleep
        self._next_call_at = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until the next call may start; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            start = max(now, self._next_call_at)
            self._next_call_at = start + self.interval_s
        delay = start - now
        if delay > 0:
            self.sleep(delay)
        return delay


class ClusterAdapter:
    """Calls one cluster's Kubernetes API with time-outs; raises only ``ClusterError``."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        credentials: Credentials,
        *,
        timeout_s: float = 10.0,
        rate_limiter: CallRateLimiter | None = None,
    ):
        self.name = name
        self.rate_limiter = rate_limiter
        self.timeout = (min(timeout_s, 5.0), timeout_s)  # (connect, read) seconds
        configuration = client.Configuration()
        if credentials.kubeconfig is not None:
            kube_config.load_kube_config_from_dict(credentials.kubeconfig, client_configuration=configuration)
        else:
            configuration.host = endpoint
            if credentials.token:
                configuration.api_key = {"authorization": credentials.token}
                configuration.api_key_prefix = {"authorization": "Bearer"}
        if credentials.ca_cert_pem:
            configuration.ssl_ca_cert = None
            configuration.ca_cert_data = credentials.ca_cert_pem
        configuration.verify_ssl = not credentials.insecure_skip_tls_verify
        # The adapter's callers retry with back-off; urllib3's own retries would hide failures.
        configuration.retries = False
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def call(self, operation: str, function, *args, **kwargs):
        if self.rate_limiter is not None:
            self.rate_limiter.wait()
        try:
            return function(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as error:
            raise ClusterError(
                self.name,
                operation,
                f"HTTP {error.status} {error.reason}",
                retryable=error.status in RETRYABLE_STATUSES,
                status=error.status,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ClusterError(self.name, operation, type(error).__name__, retryable=True) from None

    def list_gpu_nodes(self) -> list[NodeGpus]:
        nodes = self.call("list nodes", self.core.list_node)
        result = []
        for node in nodes.items:
            labels = node.metadata.labels or {}
            allocatable = (node.status.allocatable or {}) if node.status else {}
            conditions = (node.status.conditions or []) if node.status else []
            ready = any(condition.type == "Ready" and condition.status == "True" for condition in conditions)
            result.append(
                NodeGpus(
                    name=node.metadata.name,
                    gpu_product=labels.get(GPU_PRODUCT_LABEL, ""),
                    allocatable_gpus=int(allocatable.get(GPU_RESOURCE, "0") or 0),
                    ready=ready,
                )
            )
        return result

    def list_managed_deployments(self) -> list[ObservedDeployment]:
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        deployments = self.call(
            "list deployments", self.apps.list_namespaced_deployment, NAMESPACE, label_selector=selector
        )
        return [observed(item) for item in deployments.items]

    def read_traffic(self, deployments: Iterable[ObservedDeployment] | None = None) -> list[ObservedTraffic]:
        """Read requests per second and in-flight requests of MCM's namespace through the custom metrics API.

        ``deployments`` (listed by the caller in the same read) map Kubernetes names to deployment
        ids; when None they are listed here. Returns [] when the cluster does not serve custom
        metrics (HTTP 404 or 503), which is not a failed read. Other failures raise ``ClusterError``.
        """
        if deployments is None:
            deployments = self.list_managed_deployments()
        ids = {deployment.name: deployment.deployment_id for deployment in deployments}
        rates = self._read_metric(REQUESTS_METRIC)
        if rates is None:
            return []
        in_flight = self._read_metric(IN_FLIGHT_METRIC) or {}
        return [
            ObservedTraffic(name, ids.get(name), origin, float(rate), _optional_float(in_flight.get((name, origin))))
            for (name, origin), rate in sorted(rates.items())
        ]

    def _read_metric(self, metric: str) -> dict[tuple[str, str], Decimal] | None:
        """Return a metric's values by (Deployment name, origin), or None when custom metrics are not served.

        Items that share a Deployment and an origin (because they differ in other labels) are summed.
        """
        try:
            document = self.call(
                f"read metric {metric}", self._get_json, CUSTOM_METRICS_PATH, namespace=NAMESPACE, metric=metric
            )
        except ClusterError as error:
            if error.status in METRICS_NOT_SERVED_STATUSES:
                logger.debug("cluster %s does not serve metric %s: %s", self.name, metric, error.message)
                return None
            raise
        values: dict[tuple[str, str], Decimal] = {}
        for item in document.get("items") or []:
            try:
                name = item["describedObject"]["name"]
                labels = ((item.get("metric") or {}).get("selector") or {}).get("matchLabels") or {}
                value = parse_quantity(item["value"])
            except (KeyError, TypeError, ValueError) as error:
                logger.warning("cluster %s: skipped a malformed %s item (%s): %.200r", self.name, metric, error, item)
                continue
            key = (str(name), str(labels.get(ORIGIN_LABEL, "")))
            values[key] = values.get(key, Decimal(0)) + value
        return values

    def _get_json(self, path: str, *, _request_timeout, **path_params: str) -> dict:
        """GET a path the typed API classes do not cover, with the client's authentication; return the JSON body."""
        request = self.api_client.param_serialize(
            method="GET",
            resource_path=path,
            path_params=path_params,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(*request, _request_timeout=_request_timeout)
        response.read()
        # Raises ApiException for a status other than 2xx.
        return self.api_client.response_deserialize(response, {"200": "object"}).data

    def apply_deployment(self, desired: DesiredDeployment) -> ObservedDeployment:
        """Create the Deployment, or patch its replicas and GPU shape; idempotent."""
        body = deployment_manifest(desired)
        try:
            current = self.call("read deployment", self.apps.read_namespaced_deployment, desired.name, NAMESPACE)
        except ClusterError as error:
            if error.status != 404:
                raise
            created = self.call("create deployment", self.apps.create_namespaced_deployment, NAMESPACE, body)
            logger.info("created deployment %s on cluster %s", desired.name, self.name)
            return observed(created)
        if observed(current).replicas == desired.replicas and current.spec.template.spec.node_selector == {
            GPU_PRODUCT_LABEL: desired.gpu_product
        }:
            return observed(current)
        patched = self.call("patch deployment", self.apps.patch_namespaced_deployment, desired.name, NAMESPACE, body)
        logger.info("patched deployment %s on cluster %s to %s replicas", desired.name, self.name, desired.replicas)
        return observed(patched)

    def delete_deployment(self, name: str) -> None:
        try:
            self.call("delete deployment", self.apps.delete_namespaced_deployment, name, NAMESPACE)
        except ClusterError as error:
            if error.status != 404:
                raise


def observed(deployment) -> ObservedDeployment:
    labels = deployment.metadata.labels or {}
    raw_id = labels.get(DEPLOYMENT_ID_LABEL)
    selector = deployment.spec.template.spec.node_selector or {}
    status = deployment.status
    return ObservedDeployment(
        name=deployment.metadata.name,
        deployment_id=int(raw_id) if raw_id and raw_id.isdigit() else None,
        replicas=deployment.spec.replicas or 0,
        ready_replicas=(status.ready_replicas or 0) if status else 0,
        gpu_product=selector.get(GPU_PRODUCT_LABEL, ""),
    )


def _optional_float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def deployment_manifest(desired: DesiredDeployment) -> dict[str, Any]:
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        DEPLOYMENT_ID_LABEL: str(desired.deployment_id),
        "app.kubernetes.io/name": desired.name,
    }
    gpus = str(desired.gpus_per_replica)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": desired.name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": desired.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": desired.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {GPU_PRODUCT_LABEL: desired.gpu_product},
                    "containers": [
                        {
                            "name": "server",
                            "image": desired.image,
                            "resources": {"requests": {GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}},
                        }
                    ],
                },
            },
        },
    }
