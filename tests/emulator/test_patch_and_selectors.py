"""Patch formats and selector parsing, tested directly on dictionaries."""

import pytest

from emulator.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from emulator.selectors import SelectorError, parse_selector

CONTAINERS = {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}


def test_merge_patch_null_deletes_key():
    assert merge_patch({"a": 1, "b": 2}, {"a": None}) == {"b": 2}


def test_strategic_merge_updates_element_by_key():
    patched = strategic_merge_patch(CONTAINERS, {"containers": [{"name": "b", "image": "b:2"}]})

    assert patched["containers"] == [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]


def test_strategic_merge_deletes_element_by_directive():
    patched = strategic_merge_patch(CONTAINERS, {"containers": [{"name": "a", "$patch": "delete"}]})

    assert patched["containers"] == [{"name": "b", "image": "b:1"}]


def test_strategic_merge_replaces_list_without_merge_key():
    patched = strategic_merge_patch({"args": ["--a", "--b"]}, {"args": ["--c"]})

    assert patched["args"] == ["--c"]


def test_strategic_merge_ignores_set_element_order():
    patch = {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
        "containers": [{"name": "a", "image": "a:2"}],
    }

    patched = strategic_merge_patch(CONTAINERS, patch)

    assert [container["image"] for container in patched["containers"]] == ["a:2", "b:1"]


def test_strategic_merge_element_without_key_is_rejected():
    with pytest.raises(PatchError):
        strategic_merge_patch(CONTAINERS, {"containers": [{"image": "c:1"}]})


def test_json_patch_appends_with_dash():
    patched = json_patch(CONTAINERS, [{"op": "add", "path": "/containers/-", "value": {"name": "c"}}])

    assert [container["name"] for container in patched["containers"]] == ["a", "b", "c"]


def test_json_patch_replace_in_list_keeps_length():
    patched = json_patch(CONTAINERS, [{"op": "replace", "path": "/containers/0/image", "value": "a:9"}])

    assert patched["containers"][0]["image"] == "a:9"
    assert len(patched["containers"]) == 2


def test_json_patch_remove_and_move():
    operations = [{"op": "move", "from": "/containers/1", "path": "/first"}, {"op": "remove", "path": "/containers/0"}]

    patched = json_patch(CONTAINERS, operations)

    assert patched == {"containers": [], "first": {"name": "b", "image": "b:1"}}


def test_json_patch_missing_path_is_rejected():
    with pytest.raises(PatchError):
        json_patch(CONTAINERS, [{"op": "replace", "path": "/nothing/here", "value": 1}])


def test_json_patch_leaves_input_unchanged():
    json_patch(CONTAINERS, [{"op": "remove", "path": "/containers/0"}])

    assert len(CONTAINERS["containers"]) == 2


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=a", {"app": "a"}, True),
        ("app==a", {"app": "b"}, False),
        ("app!=a", {}, True),
        ("app in (a, b),tier notin (db)", {"app": "b", "tier": "web"}, True),
        ("app in (a,b),tier notin (db)", {"app": "b", "tier": "db"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "a"}, False),
        ("", {"any": "thing"}, True),
    ],
)
def test_label_selector_matches(selector, labels, expected):
    assert parse_selector(selector)(labels) is expected


@pytest.mark.parametrize("selector", ["a in (b", "=b", "a=b=c", "!"])
def test_invalid_label_selector_is_rejected(selector):
    with pytest.raises(SelectorError):
        parse_selector(selector)
