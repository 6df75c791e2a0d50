"""The three PATCH formats of the Kubernetes API: JSON merge, strategic merge and JSON patch."""

import copy
from typing import Any

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# Strategic-merge keys (`patchMergeKey` in the Kubernetes OpenAPI schema) of the lists that can
# occur in a Deployment or a Scale. Lists not named here are replaced whole, as Kubernetes does
# for lists without a merge key (for example `tolerations` and `args`).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "hostAliases": "ip",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
}


class PatchError(ValueError):
    """A patch that cannot be applied; the API returns it as 422 Invalid."""


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch.

    Differs from a merge patch in that lists named in MERGE_KEYS merge element by element on their
    key, and that an element `{"$patch": "delete", <key>: ...}` removes the matching element.
    Other `$` directives (`$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList`) are
    ignored.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {key: copy.deepcopy(value) for key, value in patch.items() if not key.startswith("$")}
    if patch.get("$patch") == "delete":
        return None

    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, MERGE_KEYS[key])
        elif isinstance(value, list):
            result[key] = [_strip_directives(item) for item in value]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _merge_list(current: list, patch: list, merge_key: str) -> list:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"every element of a list merged on {merge_key!r} needs that key, got {item!r}")
        index = next(
            (i for i, existing in enumerate(merged) if existing.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(_strip_directives(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip_directives(item) for key, item in value.items() if not key.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(item) for item in value]
    return value


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid JSON patch operation {operation!r}: it needs 'op' and 'path'")
        document = _apply_operation(document, operation)
    return document


def _apply_operation(document: Any, operation: dict) -> Any:
    op, path = operation["op"], operation["path"]
    if op == "test":
        if _get(document, path) != operation.get("value"):
            raise PatchError(f"JSON patch test failed at {path!r}")
        return document
    if op == "remove":
        return _remove(document, path)
    if op in ("add", "replace"):
        if op == "replace":
            _get(document, path)
        return _add(document, path, copy.deepcopy(operation.get("value")), replace=op == "replace")
    if op in ("move", "copy"):
        value = copy.deepcopy(_get(document, operation.get("from", "")))
        if op == "move":
            document = _remove(document, operation["from"])
        return _add(document, path, value)
    raise PatchError(f"unknown JSON patch operation {op!r}")


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _child(container: Any, token: str, path: str) -> Any:
    try:
        if isinstance(container, list):
            return container[int(token)]
        return container[token]
    except (KeyError, IndexError, ValueError, TypeError):
        raise PatchError(f"JSON pointer {path!r} does not exist") from None


def _get(document: Any, path: str) -> Any:
    for token in _tokens(path):
        document = _child(document, token, path)
    return document


def _parent_path(tokens: list[str]) -> str:
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in tokens[:-1])


def _add(document: Any, path: str, value: Any, replace: bool = False) -> Any:
    tokens = _tokens(path)
    if not tokens:
        return value
    parent = _get(document, _parent_path(tokens))
    last = tokens[-1]
    if isinstance(parent, list):
        if last == "-":
            index = len(parent)
        elif last.isdigit():
            index = int(last)
        else:
            index = -1
        if not 0 <= index <= len(parent):
            raise PatchError(f"JSON pointer {path!r} is out of range")
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"JSON pointer {path!r} does not name a member of an object or array")
    return document


def _remove(document: Any, path: str) -> Any:
    tokens = _tokens(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _get(document, _parent_path(tokens))
    _child(parent, tokens[-1], path)
    if isinstance(parent, list):
        del parent[int(tokens[-1])]
    else:
        del parent[tokens[-1]]
    return document
