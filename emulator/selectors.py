"""Label and field selectors in the query-string syntax of the Kubernetes API."""

import re
from collections.abc import Callable, Mapping

Requirement = Callable[[Mapping[str, str]], bool]

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


class SelectorError(ValueError):
    """An invalid selector string; the API returns it as 400 BadRequest."""


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are outside the parentheses of `in (...)` sets."""
    terms: list[str] = []
    depth = 0
    current = ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def _parse_term(term: str) -> Requirement:
    set_match = _SET_REQUIREMENT.match(term)
    if set_match:
        key, operator, raw_values = set_match.groups()
        values = {value.strip() for value in raw_values.split(",") if value.strip()}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values

    for operator in ("!=", "==", "="):
        if operator in term:
            key, _, value = term.partition(operator)
            key, value = key.strip(), value.strip()
            if not key or any(char in key + value for char in "!=() "):
                raise SelectorError(f"invalid selector term {term!r}")
            if operator == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value

    if term.startswith("!"):
        key = term[1:].strip()
        if not key:
            raise SelectorError(f"invalid selector term {term!r}")
        return lambda labels: key not in labels
    if any(char in term for char in "() "):
        raise SelectorError(f"invalid selector term {term!r}")
    return lambda labels: term in labels


def parse_selector(selector: str | None) -> Requirement:
    """Compile a selector such as ``app=a,tier!=db,zone in (x,y),!legacy`` into a predicate.

    Supports equality (`=`, `==`), `!=`, `in`, `notin`, existence (`key`) and absence (`!key`).
    Raises SelectorError on a term it cannot parse.
    """
    requirements = [_parse_term(term) for term in _split_terms(selector or "")]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def field_values(obj: Mapping) -> dict[str, str]:
    """Return the fields of an object that a field selector can name."""
    metadata = obj.get("metadata", {})
    return {"metadata.name": metadata.get("name", ""), "metadata.namespace": metadata.get("namespace", "")}


def parse_field_selector(selector: str | None) -> Requirement:
    """Compile a field selector; only `metadata.name` and `metadata.namespace` are supported."""
    if not selector:
        return lambda fields: True
    for term in _split_terms(selector):
        key = re.split(r"!=|==|=", term)[0].strip()
        if key not in ("metadata.name", "metadata.namespace"):
            raise SelectorError(f"field selector {key!r} is not supported, only metadata.name and metadata.namespace")
    return parse_selector(selector)
