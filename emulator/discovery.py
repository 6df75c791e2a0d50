"""Discovery documents (`/version`, `/api`, `/apis`) for the resources the emulator serves."""

from emulator import traffic

EMULATED_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-emulated"}


def version() -> dict:
    return {
        **EMULATED_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def core_versions(address: str) -> dict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _resource(name: str, kind: str, namespaced: bool, verbs: list[str], group: str = "", version: str = "") -> dict:
    resource = {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}
    if group:
        resource.update(group=group, version=version)
    return resource


_WRITE_VERBS = ["create", "delete", "get", "list", "patch", "update"]

CORE_RESOURCES = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        _resource("namespaces", "Namespace", False, ["create", "get", "list"]),
        _resource("nodes", "Node", False, ["get", "list"]),
    ],
}

APPS_RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "apps/v1",
    "resources": [
        _resource("deployments", "Deployment", True, _WRITE_VERBS),
        _resource("deployments/scale", "Scale", True, ["get", "patch", "update"], "autoscaling", "v1"),
        _resource("deployments/status", "Deployment", True, ["get", "patch", "update"]),
    ],
}

APPS_GROUP = {
    "kind": "APIGroup",
    "apiVersion": "v1",
    "name": "apps",
    "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
    "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"},
}

_METRICS_GROUP_VERSION = f"{traffic.GROUP}/{traffic.VERSION}"

CUSTOM_METRICS_GROUP = {
    "kind": "APIGroup",
    "apiVersion": "v1",
    "name": traffic.GROUP,
    "versions": [{"groupVersion": _METRICS_GROUP_VERSION, "version": traffic.VERSION}],
    "preferredVersion": {"groupVersion": _METRICS_GROUP_VERSION, "version": traffic.VERSION},
}

# A metrics adapter lists each metric as "<resource>/<metric>", with the kind MetricValueList.
CUSTOM_METRICS_RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": _METRICS_GROUP_VERSION,
    "resources": [
        _resource(f"deployments.apps/{metric}", "MetricValueList", True, ["get"]) for metric in traffic.METRICS
    ],
}

GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [APPS_GROUP, CUSTOM_METRICS_GROUP]}
