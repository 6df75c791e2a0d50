"""The state of one emulated cluster and the API operations on it, behind one lock."""

import base64
import copy
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable

from emulator import objects, patch
from emulator.controller import GPU_PRODUCT_LABEL, Controller, DeploymentRecord, NodeState
from emulator.objects import ApiError
from emulator.selectors import SelectorError, field_values, parse_field_selector, parse_selector

GROUP = "apps"
KIND = "deployments"
PATCH_TYPES = {
    patch.MERGE_PATCH: patch.merge_patch,
    patch.STRATEGIC_MERGE_PATCH: patch.strategic_merge_patch,
    patch.JSON_PATCH: patch.json_patch,
}
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")


def _selectors(label_selector: str | None, field_selector: str | None) -> tuple[Callable, Callable]:
    try:
        return parse_selector(label_selector), parse_field_selector(field_selector)
    except SelectorError as error:
        raise ApiError(400, "BadRequest", f"unable to parse requirement: {error}") from None


def _apply_patch(target: dict, body: object, content_type: str) -> dict:
    apply = PATCH_TYPES.get(content_type.split(";")[0].strip())
    if apply is None:
        supported = ", ".join(PATCH_TYPES)
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: {supported}",
        )
    try:
        result = apply(target, body)
    except (patch.PatchError, ValueError) as error:
        raise ApiError(422, "Invalid", f"the patch could not be applied: {error}") from None
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "the patch did not produce an object")
    return result


class ClusterState:
    """Nodes, namespaces and Deployments of one cluster, with the controller that runs them.

    Every public method takes the lock, so requests from many server threads see one order of
    writes. `resourceVersion` is one counter per cluster, as etcd's revision is.
    """

    def __init__(self, nodes: list[tuple[str, str, int]], ready_delay_s: float):
        self.lock = threading.RLock()
        created = objects.timestamp()
        self.nodes = {
            name: NodeState(
                name=name,
                labels={"kubernetes.io/hostname": name, GPU_PRODUCT_LABEL: sku, "nvidia.com/gpu.count": str(gpus)},
                gpus=gpus,
                uid=str(uuid.uuid4()),
                created=created,
            )
            for name, sku, gpus in nodes
        }
        self.controller = Controller(self.nodes, ready_delay_s)
        self.never_ready = False
        self.namespaces: dict[str, str] = {name: created for name in _INITIAL_NAMESPACES}
        self.deployments: dict[tuple[str, str], DeploymentRecord] = {}
        self._resource_version = 1
        self._node_versions = {name: "1" for name in self.nodes}
        self._deployment_sequence = 0
        self._dirty = False
        self._next_event = math.inf

    def _bump(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def mark_changed(self, node_names: list[str] | tuple[str, ...] = ()) -> None:
        """Record that a fault or setting changed what the controller must do, and run the controller."""
        with self.lock:
            for name in node_names:
                self._node_versions[name] = self._bump()
            self._dirty = True
        self.reconcile()

    # Controller

    def reconcile(self) -> None:
        """Run the controller if a write or a fault changed the state or a pod timer has expired."""
        now = time.monotonic()
        with self.lock:
            if not self._dirty and now < self._next_event:
                return
            records = list(self.deployments.values())
            next_event = self.controller.reconcile(records, now, self.never_ready)
            for record in records:
                next_event = min(next_event, self._update_status(record, now))
            self._next_event = next_event
            self._dirty = False

    def _update_status(self, record: DeploymentRecord, now: float) -> float:
        """Store a changed status under a new resourceVersion; return when the progress deadline ends."""
        old_status = record.obj.get("status") or {}
        if old_status.get("readyReplicas", 0) != sum(1 for pod in record.pods if pod.ready):
            record.progress_at = now
        status = objects.deployment_status(record, now)
        if status != old_status:
            record.obj["status"] = status
            record.obj["metadata"]["resourceVersion"] = self._bump()
        progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
        if progressing["reason"] == "ReplicaSetUpdated":
            return record.progress_at + record.obj["spec"].get("progressDeadlineSeconds", 600)
        return math.inf

    # Nodes and namespaces

    def list_nodes(self, label_selector: str | None = None, field_selector: str | None = None) -> dict:
        labels_match, fields_match = _selectors(label_selector, field_selector)
        with self.lock:
            items = [
                objects.node_object(node, self._node_versions[node.name])
                for node in sorted(self.nodes.values(), key=lambda node: node.name)
            ]
            version = str(self._resource_version)
        items = [
            item for item in items if labels_match(item["metadata"]["labels"]) and fields_match(field_values(item))
        ]
        return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}

    def get_node(self, name: str) -> dict:
        with self.lock:
            if name not in self.nodes:
                raise objects.not_found("nodes", "", name)
            return objects.node_object(self.nodes[name], self._node_versions[name])

    def _namespace_object(self, name: str) -> dict:
        return {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "creationTimestamp": self.namespaces[name],
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    def list_namespaces(self) -> dict:
        with self.lock:
            items = [self._namespace_object(name) for name in sorted(self.namespaces)]
            return {
                "kind": "NamespaceList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._resource_version)},
                "items": items,
            }

    def get_namespace(self, name: str) -> dict:
        with self.lock:
            if name not in self.namespaces:
                raise objects.not_found("namespaces", "", name)
            return self._namespace_object(name)

    def create_namespace(self, body: dict) -> dict:
        name = (body.get("metadata") or {}).get("name", "")
        with self.lock:
            if name in self.namespaces:
                raise ApiError(
                    409, "AlreadyExists", f'namespaces "{name}" already exists', {"name": name, "kind": "namespaces"}
                )
            if not name:
                raise ApiError(422, "Invalid", "Namespace is invalid: metadata.name: Required value")
            self.namespaces[name] = objects.timestamp()
            return self._namespace_object(name)

    # Deployments: reads

    def _record(self, namespace: str, name: str) -> DeploymentRecord:
        record = self.deployments.get((namespace, name))
        if record is None:
            raise objects.not_found(KIND, GROUP, name)
        return record

    def get_deployment(self, namespace: str, name: str) -> dict:
        self.reconcile()
        with self.lock:
            return copy.deepcopy(self._record(namespace, name).obj)

    def list_deployments(
        self,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> dict:
        """List Deployments in one namespace, or in all when `namespace` is None, sorted by key.

        `limit` and `continue` page through the list; the token is the last key returned.
        """
        labels_match, fields_match = _selectors(label_selector, field_selector)
        self.reconcile()
        with self.lock:
            keys = sorted(key for key in self.deployments if namespace is None or key[0] == namespace)
            if continue_token:
                try:
                    after = tuple(base64.urlsafe_b64decode(continue_token.encode()).decode().split("/", 1))
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid continue token {continue_token!r}") from None
                keys = [key for key in keys if key > after]
            items: list[dict] = []
            remaining = False
            for key in keys:
                obj = self.deployments[key].obj
                if not labels_match(obj["metadata"].get("labels") or {}) or not fields_match(field_values(obj)):
                    continue
                if limit and len(items) == limit:
                    remaining = True
                    break
                items.append(copy.deepcopy(obj))
            metadata: dict = {"resourceVersion": str(self._resource_version)}
        if remaining:
            last = items[-1]["metadata"]
            metadata["continue"] = base64.urlsafe_b64encode(f"{last['namespace']}/{last['name']}".encode()).decode()
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": metadata, "items": items}

    # Deployments: writes

    def _check_version(self, record: DeploymentRecord, body: dict) -> None:
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if sent and sent != record.obj["metadata"]["resourceVersion"]:
            raise objects.conflict(KIND, GROUP, record.obj["metadata"]["name"])

    def create_deployment(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        if metadata.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        name = metadata.get("name") or ""
        objects.apply_deployment_defaults(obj)
        objects.validate_deployment(obj, name)

        self.reconcile()
        with self.lock:
            if (namespace, name) in self.deployments:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'deployments.apps "{name}" already exists',
                    {"name": name, "group": GROUP, "kind": KIND},
                )
            for key in ("resourceVersion", "deletionTimestamp"):
                metadata.pop(key, None)
            metadata.update(
                namespace=namespace, uid=str(uuid.uuid4()), generation=1, creationTimestamp=objects.timestamp()
            )
            obj["status"] = {}
            if dry_run:
                return obj
            metadata["resourceVersion"] = self._bump()
            self._deployment_sequence += 1
            record = DeploymentRecord(obj=obj, sequence=self._deployment_sequence, progress_at=time.monotonic())
            self.deployments[(namespace, name)] = record
            self.namespaces.setdefault(namespace, objects.timestamp())
            self._dirty = True
        return self.get_deployment(namespace, name)

    def _store(self, record: DeploymentRecord, new_obj: dict, dry_run: bool) -> dict:
        """Validate an updated object, keep what clients cannot change, and store it unless dry-run."""
        old = record.obj
        metadata = new_obj.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
            metadata[key] = old["metadata"][key]
        objects.apply_deployment_defaults(new_obj)
        objects.validate_deployment(new_obj, metadata["name"])
        if (new_obj["spec"].get("selector") or {}) != (old["spec"].get("selector") or {}):
            raise objects.invalid("Deployment.apps", metadata["name"], [("spec.selector", "field is immutable")])

        if new_obj["spec"] != old["spec"]:
            metadata["generation"] = old["metadata"]["generation"] + 1
        if dry_run:
            return copy.deepcopy(new_obj)
        if new_obj != old:
            metadata["resourceVersion"] = self._bump()
            if new_obj["spec"] != old["spec"]:
                record.progress_at = time.monotonic()
            record.obj = new_obj
            self._dirty = True
        return copy.deepcopy(new_obj)

    def replace_deployment(self, namespace: str, name: str, body: dict, dry_run: bool = False) -> dict:
        self._check_body_name(body, name)
        self.reconcile()
        with self.lock:
            record = self._record(namespace, name)
            self._check_version(record, body)
            new_obj = copy.deepcopy(body)
            new_obj["status"] = copy.deepcopy(record.obj.get("status", {}))
            result = self._store(record, new_obj, dry_run)
        return self.get_deployment(namespace, name) if not dry_run else result

    def patch_deployment(
        self, namespace: str, name: str, body: object, content_type: str, dry_run: bool = False
    ) -> dict:
        self.reconcile()
        with self.lock:
            record = self._record(namespace, name)
            new_obj = _apply_patch(copy.deepcopy(record.obj), body, content_type)
            self._check_version(record, new_obj)
            new_obj["status"] = copy.deepcopy(record.obj.get("status", {}))
            result = self._store(record, new_obj, dry_run)
        return self.get_deployment(namespace, name) if not dry_run else result

    def delete_deployment(self, namespace: str, name: str, options: dict | None = None) -> dict:
        preconditions = (options or {}).get("preconditions") or {}
        self.reconcile()
        with self.lock:
            record = self._record(namespace, name)
            metadata = record.obj["metadata"]
            for key in ("uid", "resourceVersion"):
                if preconditions.get(key) and preconditions[key] != metadata[key]:
                    raise objects.conflict(KIND, GROUP, name)
            del self.deployments[(namespace, name)]
            self._bump()
            self._dirty = True
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": GROUP, "kind": KIND, "uid": metadata["uid"]},
        }

    @staticmethod
    def _check_body_name(body: dict, name: str) -> None:
        sent = (body.get("metadata") or {}).get("name")
        if sent != name:
            raise ApiError(
                400, "BadRequest", f"the name of the object ({sent}) does not match the name on the URL ({name})"
            )

    # Subresources: scale and status

    def get_scale(self, namespace: str, name: str) -> dict:
        return objects.scale_object(self.get_deployment(namespace, name))

    def update_scale(
        self, namespace: str, name: str, body: object, content_type: str | None, dry_run: bool = False
    ) -> dict:
        """Replace (content_type None) or patch the Scale, which changes only `spec.replicas`."""
        self.reconcile()
        with self.lock:
            record = self._record(namespace, name)
            scale = objects.scale_object(record.obj)
            new_scale = body if content_type is None else _apply_patch(scale, body, content_type)
            if not isinstance(new_scale, dict):
                raise ApiError(400, "BadRequest", "the body must be an autoscaling/v1 Scale object")
            self._check_version(record, new_scale)
            replicas = (new_scale.get("spec") or {}).get("replicas", 0)
            new_obj = copy.deepcopy(record.obj)
            new_obj["spec"]["replicas"] = replicas
            result = self._store(record, new_obj, dry_run)
        return objects.scale_object(result if dry_run else self.get_deployment(namespace, name))

    def update_status(
        self, namespace: str, name: str, body: object, content_type: str | None, dry_run: bool = False
    ) -> dict:
        """Replace (content_type None) or patch `.status`; the spec and metadata stay as stored.

        NOTE: the controller recomputes status on its next change (a pod timer or any write), which
        overwrites a status written here, as the real Deployment controller would on its next sync.
        """
        self.reconcile()
        with self.lock:
            record = self._record(namespace, name)
            if content_type is None:
                new_obj = body if isinstance(body, dict) else {}
                self._check_body_name(new_obj, name)
            else:
                new_obj = _apply_patch(copy.deepcopy(record.obj), body, content_type)
            self._check_version(record, new_obj)
            status = copy.deepcopy(new_obj.get("status") or {})
            if dry_run:
                return {**copy.deepcopy(record.obj), "status": status}
            if status != record.obj.get("status"):
                record.obj["status"] = status
                record.obj["metadata"]["resourceVersion"] = self._bump()
            return copy.deepcopy(record.obj)
