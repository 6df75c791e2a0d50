"""Kubernetes object shapes: Status errors, Nodes, Deployment defaults and status, Scale."""

import math
import re
from datetime import UTC, datetime

from emulator.controller import GPU_RESOURCE, DeploymentRecord, NodeState

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ApiError(Exception):
    """An error that the API returns as a `Status` object with this HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(kind: str, group: str, name: str) -> ApiError:
    resource = f"{kind}.{group}" if group else kind
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "group": group, "kind": kind})


def conflict(kind: str, group: str, name: str) -> ApiError:
    resource = f"{kind}.{group}" if group else kind
    message = (
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, {"name": name, "group": group, "kind": kind})


def invalid(kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    summary = "; ".join(f"{field}: {message}" for field, message in causes)
    details = {
        "name": name,
        "group": "apps",
        "kind": "Deployment",
        "causes": [{"reason": "FieldValueInvalid", "field": field, "message": message} for field, message in causes],
    }
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details)


def timestamp() -> str:
    """Return the current time in the RFC 3339 form that Kubernetes uses, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(node: NodeState, resource_version: str) -> dict:
    gpus = str(node.gpu_capacity)
    resources = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU_RESOURCE: gpus}
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": node.name,
            "uid": node.uid,
            "resourceVersion": resource_version,
            "creationTimestamp": node.created,
            "labels": dict(node.labels),
        },
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": node.created,
                    "lastTransitionTime": node.created,
                }
            ],
        },
    }


def apply_deployment_defaults(obj: dict) -> None:
    """Fill in the defaults that the API server sets on an apps/v1 Deployment."""
    obj["kind"] = "Deployment"
    obj["apiVersion"] = "apps/v1"
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy["type"] = "RollingUpdate"
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    pod_spec = spec.setdefault("template", {}).setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Always")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("schedulerName", "default-scheduler")
    obj.setdefault("status", {})


def validate_deployment(obj: dict, name: str) -> None:
    """Raise 422 Invalid for the mistakes the real API server rejects most often."""
    causes: list[tuple[str, str]] = []
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(("metadata.name", f"Invalid value: {name!r}: must be a lowercase RFC 1123 subdomain"))
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(("spec.replicas", f"Invalid value: {replicas!r}: must be a non-negative integer"))

    match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
    template_labels = (spec.get("template") or {}).get("metadata", {}).get("labels") or {}
    if not match_labels and not (spec.get("selector") or {}).get("matchExpressions"):
        causes.append(("spec.selector", "Required value"))
    elif any(template_labels.get(key) != value for key, value in match_labels.items()):
        causes.append(("spec.template.metadata.labels", "Invalid value: `selector` does not match template `labels`"))

    containers = (spec.get("template") or {}).get("spec", {}).get("containers") or []
    if not containers:
        causes.append(("spec.template.spec.containers", "Required value"))
    for index, container in enumerate(containers):
        if not _DNS_LABEL.match(str(container.get("name", ""))):
            causes.append((f"spec.template.spec.containers[{index}].name", "Required value: a DNS-1123 label"))
        if not container.get("image"):
            causes.append((f"spec.template.spec.containers[{index}].image", "Required value"))
    if causes:
        raise invalid("Deployment.apps", name, causes)


def _max_unavailable(spec: dict) -> int:
    strategy = spec.get("strategy") or {}
    if strategy.get("type") != "RollingUpdate":
        return 0
    value = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    replicas = spec.get("replicas", 1)
    if isinstance(value, str) and value.endswith("%"):
        return math.floor(replicas * int(value[:-1]) / 100)
    return int(value)


def _condition(previous: list[dict], type_: str, status: str, reason: str, message: str) -> dict:
    """Build a condition, keeping the old timestamps when nothing about it changed."""
    old = next((condition for condition in previous if condition.get("type") == type_), None)
    now = timestamp()
    condition = {
        "type": type_,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }
    if old and old.get("status") == status:
        condition["lastTransitionTime"] = old.get("lastTransitionTime", now)
        if old.get("reason") == reason:
            condition["lastUpdateTime"] = old.get("lastUpdateTime", now)
    return condition


def deployment_status(record: DeploymentRecord, now: float) -> dict:
    """Compute `.status` of a Deployment from its pods, as the Deployment controller reports it.

    Zero counts are left out, as the API server omits them, so a client reads them as None.
    """
    obj = record.obj
    spec = obj["spec"]
    desired = spec.get("replicas", 1)
    available = sum(1 for pod in record.pods if pod.ready)
    counts = {
        "replicas": len(record.pods),
        "updatedReplicas": len(record.pods),
        "readyReplicas": available,
        "availableReplicas": available,
        "unavailableReplicas": max(desired - available, 0),
    }
    status: dict = {"observedGeneration": obj["metadata"]["generation"]}
    status.update({key: value for key, value in counts.items() if value})

    previous = (obj.get("status") or {}).get("conditions") or []
    replica_set = f"{obj['metadata']['name']}-{record.pods[0].template_hash if record.pods else 'none'}"
    if available >= desired - _max_unavailable(spec):
        available_condition = _condition(
            previous, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."
        )
    else:
        available_condition = _condition(
            previous,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )

    complete = len(record.pods) == desired and available == desired
    if complete:
        progressing = _condition(
            previous,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{replica_set}" has successfully progressed.',
        )
    elif now - record.progress_at > spec.get("progressDeadlineSeconds", 600):
        progressing = _condition(
            previous,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            f'ReplicaSet "{replica_set}" has timed out progressing.',
        )
    else:
        progressing = _condition(
            previous, "Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{replica_set}" is progressing.'
        )
    status["conditions"] = [available_condition, progressing]
    return status


def selector_string(spec: dict) -> str:
    """Render a Deployment's `matchLabels` as the label-selector string in `Scale.status.selector`."""
    match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))


def scale_object(obj: dict) -> dict:
    """Build the autoscaling/v1 Scale view of a Deployment."""
    metadata = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"].get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": selector_string(obj["spec"])},
    }
