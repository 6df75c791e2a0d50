"""Traffic of one emulated cluster, served through the Kubernetes custom metrics API (v1beta2).

Tests and the demo set each Deployment's requests per second and in-flight requests per demand
origin. The cluster reports them as two metrics of Deployments, `mcm_requests_per_second` and
`mcm_in_flight_requests`, with one MetricValueList item per Deployment and origin and the origin
in the item's metric selector (`matchLabels: {"origin": ...}`), as a metrics adapter would.
"""

import math
import threading
from typing import Any

from emulator.objects import ApiError, timestamp
from emulator.selectors import SelectorError, parse_selector

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
REQUESTS_METRIC = "mcm_requests_per_second"
IN_FLIGHT_METRIC = "mcm_in_flight_requests"
METRICS = (REQUESTS_METRIC, IN_FLIGHT_METRIC)
ORIGIN_LABEL = "origin"
# The resource part of a custom metrics path names Deployments with or without their group.
DEPLOYMENT_RESOURCES = ("deployments", "deployments.apps")

# (requests per second, in-flight requests or None) by origin
OriginTraffic = dict[str, tuple[float, float | None]]


def _check_rate(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")
    return float(value)


class TrafficTable:
    """Requests per second and in-flight requests by (namespace, Deployment name) and origin."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traffic: dict[tuple[str, str], OriginTraffic] = {}

    def set(self, namespace: str, deployment: str, by_origin: OriginTraffic) -> None:
        """Replace one Deployment's traffic; an empty `by_origin` removes it. Raises ValueError on bad values."""
        if not isinstance(namespace, str) or not namespace or not isinstance(deployment, str) or not deployment:
            raise ValueError(f"namespace and deployment must be non-empty strings, got {namespace!r}, {deployment!r}")
        if not isinstance(by_origin, dict):
            raise ValueError(f"origins must be an object of origin -> traffic, got {type(by_origin).__name__}")
        checked: OriginTraffic = {}
        for origin, (rate, in_flight) in by_origin.items():
            if not isinstance(origin, str):
                raise ValueError(f"origin must be a string, got {origin!r}")
            checked[origin] = (
                _check_rate(rate, f"requests_per_second of origin {origin!r}"),
                None if in_flight is None else _check_rate(in_flight, f"in_flight of origin {origin!r}"),
            )
        with self._lock:
            if checked:
                self._traffic[(namespace, deployment)] = checked
            else:
                self._traffic.pop((namespace, deployment), None)

    def clear(self) -> None:
        with self._lock:
            self._traffic.clear()

    def as_dict(self) -> dict:
        """Return the table in the shape of the `/_emulator/traffic` response."""
        with self._lock:
            items = sorted(self._traffic.items())
        return {
            "deployments": [
                {
                    "namespace": namespace,
                    "deployment": name,
                    "origins": {
                        origin: {"requests_per_second": rate, "in_flight": in_flight}
                        for origin, (rate, in_flight) in sorted(origins.items())
                    },
                }
                for (namespace, name), origins in items
            ]
        }

    def apply_request(self, body: Any) -> dict:
        """Set one Deployment's traffic from a `POST /_emulator/traffic` body; bad input raises ApiError 400."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        origins = body.get("origins")
        if not isinstance(origins, dict) or not all(isinstance(value, dict) for value in origins.values()):
            raise ApiError(
                400,
                "BadRequest",
                'origins must be an object of origin -> {"requests_per_second": number, "in_flight": number}',
            )
        try:
            by_origin = {
                origin: (value.get("requests_per_second"), value.get("in_flight")) for origin, value in origins.items()
            }
            self.set(body.get("namespace", "mcm"), body.get("deployment"), by_origin)
        except ValueError as error:
            raise ApiError(400, "BadRequest", f"invalid traffic: {error}") from None
        return self.as_dict()

    def metric_values(self, namespace: str, resource: str, name: str, metric: str, label_selector: str | None) -> dict:
        """Return the MetricValueList of `metric` for one Deployment, or for all of them when `name` is `*`."""
        if resource not in DEPLOYMENT_RESOURCES or metric not in METRICS:
            raise ApiError(404, "NotFound", f'the server could not find the metric {metric} for {resource} "{name}"')
        try:
            matches = parse_selector(label_selector)
        except SelectorError as error:
            raise ApiError(400, "BadRequest", f"unable to parse metricLabelSelector: {error}") from None
        with self._lock:
            rows = [
                (deployment, origin, values)
                for (ns, deployment), origins in sorted(self._traffic.items())
                if ns == namespace and name in ("*", deployment)
                for origin, values in sorted(origins.items())
            ]
        if name != "*" and not rows:
            raise ApiError(404, "NotFound", f'the server could not find the metric {metric} for deployments "{name}"')
        now = timestamp()
        items = []
        for deployment, origin, (rate, in_flight) in rows:
            value = rate if metric == REQUESTS_METRIC else in_flight
            labels = {ORIGIN_LABEL: origin} if origin else {}
            if value is None or not matches(labels):
                continue
            items.append(
                {
                    "describedObject": {
                        "kind": "Deployment",
                        "namespace": namespace,
                        "name": deployment,
                        "apiVersion": "apps/v1",
                    },
                    "metric": {"name": metric, "selector": {"matchLabels": labels}},
                    "timestamp": now,
                    "value": _quantity(value),
                }
            )
        return {"kind": "MetricValueList", "apiVersion": f"{GROUP}/{VERSION}", "metadata": {}, "items": items}


def _quantity(value: float) -> str:
    """Format a value as a Kubernetes quantity in thousandths, as metrics adapters do ("12500m" is 12.5)."""
    return f"{round(value * 1000)}m"
