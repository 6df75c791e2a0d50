"""The emulated scheduler and Deployment controller: pods, GPU bin-packing and readiness.

There is no background thread. The cluster calls `reconcile()` under its lock before it serves a
request that reads or writes Deployments, so every response shows the state that a controller
running continuously would have reached by that moment. Pods are internal records, not API objects.
"""

import hashlib
import json
import math
from dataclasses import dataclass, field

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass
class NodeState:
    """One emulated node: its labels, installed GPUs and how many of them a fault removed."""

    name: str
    labels: dict[str, str]
    gpus: int
    uid: str
    created: str
    gpus_lost: int = 0

    @property
    def gpu_capacity(self) -> int:
        return max(self.gpus - self.gpus_lost, 0)


@dataclass
class Pod:
    """One replica of a Deployment. `node` is None while the pod is pending (unscheduled)."""

    sequence: int
    template_hash: str
    gpus: int
    node: str | None = None
    ready_at: float = math.inf
    ready: bool = False


@dataclass
class DeploymentRecord:
    """A stored Deployment object with the pods the controller runs for it."""

    obj: dict
    sequence: int
    pods: list[Pod] = field(default_factory=list)
    progress_at: float = 0.0
    # The pod template's hash and GPUs per pod, cached for the generation they were computed at.
    template_generation: int = 0
    template_key: tuple[str, int] = ("", 0)

    def template_summary(self) -> tuple[str, int]:
        """Return the pod template's hash and GPUs per pod; the template changes only with generation."""
        generation = self.obj["metadata"]["generation"]
        if generation != self.template_generation:
            template = self.obj["spec"]["template"]
            self.template_key = (template_hash(template), pod_gpus(template))
            self.template_generation = generation
        return self.template_key


def template_hash(template: dict) -> str:
    """Return a short stable hash of a pod template, like the `pod-template-hash` label."""
    encoded = json.dumps(template, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:10]


def _quantity(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def pod_gpus(template: dict) -> int:
    """Return the GPUs one pod requests: the sum over containers of the limit, else the request."""
    total = 0
    for container in template.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = resources.get("requests") or {}
        total += _quantity(limits.get(GPU_RESOURCE, requests.get(GPU_RESOURCE, 0)))
    return total


class Controller:
    """Places pods on nodes and marks them ready; owns the pod sequence counter."""

    def __init__(self, nodes: dict[str, NodeState], ready_delay_s: float):
        self.nodes = nodes
        self.ready_delay_s = ready_delay_s
        self._next_sequence = 0

    def _new_pod(self, hash_: str, gpus: int) -> Pod:
        self._next_sequence += 1
        return Pod(sequence=self._next_sequence, template_hash=hash_, gpus=gpus)

    def reconcile(self, records: list[DeploymentRecord], now: float, never_ready: bool) -> float:
        """Bring every Deployment's pods to their desired state; return when the next change is due.

        Records are handled in creation order, so an older Deployment keeps its GPUs when a newer
        one requests the same nodes. The return value is a `time.monotonic()` instant, or inf.
        """
        ordered = sorted(records, key=lambda record: record.sequence)
        for record in ordered:
            self._set_pod_count(record)
        used = self._evict_overcommitted(ordered)
        for record in ordered:
            self._schedule_pending(record, used, now)

        next_event = math.inf
        for record in ordered:
            for pod in record.pods:
                if pod.node is None or pod.ready:
                    continue
                if pod.ready_at <= now and not never_ready:
                    pod.ready = True
                elif not never_ready:
                    next_event = min(next_event, pod.ready_at)
        return next_event

    def _set_pod_count(self, record: DeploymentRecord) -> None:
        """Replace pods of an old template (Recreate) and add or remove pods to match `replicas`."""
        hash_, gpus = record.template_summary()
        record.pods = [pod for pod in record.pods if pod.template_hash == hash_]

        desired = record.obj["spec"].get("replicas", 1)
        if len(record.pods) > desired:
            # The ReplicaSet controller deletes unscheduled pods first, then unready, then newest.
            record.pods.sort(key=lambda pod: (pod.node is None, not pod.ready, pod.sequence), reverse=True)
            del record.pods[: len(record.pods) - desired]
            record.pods.sort(key=lambda pod: pod.sequence)
        while len(record.pods) < desired:
            record.pods.append(self._new_pod(hash_, gpus))

    def _evict_overcommitted(self, records: list[DeploymentRecord]) -> dict[str, int]:
        """Unschedule the newest pods on nodes that lost GPUs; return GPUs used per node."""
        pods_by_node: dict[str, list[Pod]] = {name: [] for name in self.nodes}
        for record in records:
            for pod in record.pods:
                if pod.node is not None and pod.node not in self.nodes:
                    pod.node, pod.ready, pod.ready_at = None, False, math.inf
                elif pod.node is not None:
                    pods_by_node[pod.node].append(pod)

        used: dict[str, int] = {}
        for name, pods in pods_by_node.items():
            capacity = self.nodes[name].gpu_capacity
            pods.sort(key=lambda pod: pod.sequence)
            total = sum(pod.gpus for pod in pods)
            while total > capacity and pods:
                evicted = pods.pop()
                total -= evicted.gpus
                evicted.node, evicted.ready, evicted.ready_at = None, False, math.inf
            used[name] = total
        return used

    def _schedule_pending(self, record: DeploymentRecord, used: dict[str, int], now: float) -> None:
        """Bind pending pods, each to the matching node with the fewest free GPUs that still fit."""
        selector = record.obj["spec"]["template"].get("spec", {}).get("nodeSelector") or {}
        candidates = [
            node
            for node in self.nodes.values()
            if all(node.labels.get(key) == value for key, value in selector.items())
        ]
        for pod in record.pods:
            if pod.node is not None:
                continue
            fitting = [node for node in candidates if node.gpu_capacity - used[node.name] >= pod.gpus]
            if not fitting:
                continue
            best = min(fitting, key=lambda node: (node.gpu_capacity - used[node.name], node.name))
            pod.node = best.name
            pod.ready_at = now + self.ready_delay_s
            used[best.name] += pod.gpus
