"""Deployment reads and writes: optimistic concurrency, selectors and the three patch formats."""

import pytest
from kubernetes.client.rest import ApiException

from tests.emulator.helpers import TIMEOUT, deployment_body


def create(apps, name, namespace="default", **kwargs):
    return apps.create_namespaced_deployment(namespace, deployment_body(name, **kwargs), _request_timeout=TIMEOUT)


def test_create_sets_server_metadata(apps):
    created = create(apps, "llama")

    assert created.metadata.uid
    assert created.metadata.generation == 1
    assert created.metadata.creation_timestamp is not None
    assert int(created.metadata.resource_version) > 0
    assert created.kind == "Deployment"


def test_create_existing_name_gets_409_already_exists(apps):
    create(apps, "llama")

    with pytest.raises(ApiException) as raised:
        create(apps, "llama")

    assert raised.value.status == 409
    assert '"reason": "AlreadyExists"' in raised.value.body


def test_same_name_in_other_namespace_is_allowed(apps):
    create(apps, "llama")

    created = create(apps, "llama", namespace="tenant-b")

    assert created.metadata.namespace == "tenant-b"


def test_create_with_mismatched_selector_gets_422(apps):
    body = deployment_body("llama")
    body["spec"]["selector"]["matchLabels"] = {"app": "other"}

    with pytest.raises(ApiException) as raised:
        apps.create_namespaced_deployment("default", body, _request_timeout=TIMEOUT)

    assert raised.value.status == 422


def test_read_missing_deployment_gets_404(apps):
    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment("missing", "default", _request_timeout=TIMEOUT)

    assert raised.value.status == 404


def test_list_filters_by_equality_and_inequality(apps):
    create(apps, "a", labels={"mcm.io/managed": "true", "tier": "gold"})
    create(apps, "b", labels={"mcm.io/managed": "true", "tier": "bronze"})
    create(apps, "c")

    managed = apps.list_namespaced_deployment("default", label_selector="mcm.io/managed=true", _request_timeout=TIMEOUT)
    not_gold = apps.list_namespaced_deployment(
        "default", label_selector="mcm.io/managed=true,tier!=gold", _request_timeout=TIMEOUT
    )

    assert [item.metadata.name for item in managed.items] == ["a", "b"]
    assert [item.metadata.name for item in not_gold.items] == ["b"]


def test_list_filters_by_set_and_existence(apps):
    create(apps, "a", labels={"tier": "gold"})
    create(apps, "b", labels={"tier": "bronze"})
    create(apps, "c")

    in_set = apps.list_namespaced_deployment(
        "default", label_selector="tier in (gold,silver)", _request_timeout=TIMEOUT
    )
    without = apps.list_namespaced_deployment("default", label_selector="!tier", _request_timeout=TIMEOUT)

    assert [item.metadata.name for item in in_set.items] == ["a"]
    assert [item.metadata.name for item in without.items] == ["c"]


def test_list_for_all_namespaces_returns_every_namespace(apps):
    create(apps, "a", namespace="one")
    create(apps, "b", namespace="two")

    listed = apps.list_deployment_for_all_namespaces(_request_timeout=TIMEOUT)

    assert [(item.metadata.namespace, item.metadata.name) for item in listed.items] == [("one", "a"), ("two", "b")]


def test_list_pages_with_limit_and_continue(apps):
    for name in ("a", "b", "c"):
        create(apps, name)

    first = apps.list_namespaced_deployment("default", limit=2, _request_timeout=TIMEOUT)
    rest = apps.list_namespaced_deployment(
        "default", limit=2, _continue=first.metadata._continue, _request_timeout=TIMEOUT
    )

    assert [item.metadata.name for item in first.items] == ["a", "b"]
    assert [item.metadata.name for item in rest.items] == ["c"]
    assert rest.metadata._continue is None


def test_every_write_increases_resource_version(apps):
    versions = [int(create(apps, "llama").metadata.resource_version)]
    patch = {"metadata": {"labels": {"step": "one"}}}
    versions.append(
        int(
            apps.patch_namespaced_deployment(
                "llama", "default", patch, _request_timeout=TIMEOUT
            ).metadata.resource_version
        )
    )
    patch = {"metadata": {"labels": {"step": "two"}}}
    versions.append(
        int(
            apps.patch_namespaced_deployment(
                "llama", "default", patch, _request_timeout=TIMEOUT
            ).metadata.resource_version
        )
    )

    assert versions == sorted(set(versions))


def test_replace_with_stale_resource_version_gets_409(apps):
    stale = create(apps, "llama")
    apps.patch_namespaced_deployment("llama", "default", {"spec": {"replicas": 2}}, _request_timeout=TIMEOUT)

    stale.spec.replicas = 3
    with pytest.raises(ApiException) as raised:
        apps.replace_namespaced_deployment("llama", "default", stale, _request_timeout=TIMEOUT)

    assert raised.value.status == 409
    assert '"reason": "Conflict"' in raised.value.body


def test_replace_with_current_version_bumps_generation(apps):
    create(apps, "llama")
    current = apps.read_namespaced_deployment("llama", "default", _request_timeout=TIMEOUT)

    current.spec.replicas = 3
    replaced = apps.replace_namespaced_deployment("llama", "default", current, _request_timeout=TIMEOUT)

    assert replaced.spec.replicas == 3
    assert replaced.metadata.generation == 2


def test_label_change_keeps_generation(apps):
    create(apps, "llama")

    patched = apps.patch_namespaced_deployment(
        "llama", "default", {"metadata": {"labels": {"extra": "yes"}}}, _request_timeout=TIMEOUT
    )

    assert patched.metadata.generation == 1
    assert patched.metadata.labels["extra"] == "yes"


def test_patch_with_stale_resource_version_gets_409(apps):
    created = create(apps, "llama")
    apps.patch_namespaced_deployment("llama", "default", {"spec": {"replicas": 2}}, _request_timeout=TIMEOUT)

    patch = {"metadata": {"resourceVersion": created.metadata.resource_version}, "spec": {"replicas": 5}}
    with pytest.raises(ApiException) as raised:
        apps.patch_namespaced_deployment("llama", "default", patch, _request_timeout=TIMEOUT)

    assert raised.value.status == 409


def test_strategic_merge_patch_merges_containers_by_name(apps):
    create(apps, "llama", gpus=2)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:v0.7.0"}]}}}}

    patched = apps.patch_namespaced_deployment("llama", "default", patch, _request_timeout=TIMEOUT)

    container = patched.spec.template.spec.containers[0]
    assert len(patched.spec.template.spec.containers) == 1
    assert container.image == "vllm/vllm-openai:v0.7.0"
    assert container.resources.limits["nvidia.com/gpu"] == "2"


def test_strategic_merge_patch_adds_container_with_new_name(apps):
    create(apps, "llama")
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:1"}]}}}}

    patched = apps.patch_namespaced_deployment("llama", "default", patch, _request_timeout=TIMEOUT)

    assert [c.name for c in patched.spec.template.spec.containers] == ["server", "sidecar"]


def test_merge_patch_replaces_containers_list(apps):
    create(apps, "llama", gpus=2)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:v0.7.0"}]}}}}

    patched = apps.patch_namespaced_deployment(
        "llama", "default", patch, _content_type="application/merge-patch+json", _request_timeout=TIMEOUT
    )

    assert patched.spec.template.spec.containers[0].resources is None


def test_json_patch_replaces_replicas(apps):
    create(apps, "llama")
    operations = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
    ]

    patched = apps.patch_namespaced_deployment("llama", "default", operations, _request_timeout=TIMEOUT)

    assert patched.spec.replicas == 4


def test_failed_json_patch_test_gets_422(apps):
    create(apps, "llama")
    operations = [{"op": "test", "path": "/spec/replicas", "value": 9}]

    with pytest.raises(ApiException) as raised:
        apps.patch_namespaced_deployment("llama", "default", operations, _request_timeout=TIMEOUT)

    assert raised.value.status == 422


def test_selector_change_gets_422(apps):
    create(apps, "llama")
    patch = {"spec": {"selector": {"matchLabels": {"app": "llama", "extra": "x"}}}}

    with pytest.raises(ApiException) as raised:
        apps.patch_namespaced_deployment("llama", "default", patch, _request_timeout=TIMEOUT)

    assert raised.value.status == 422


def test_delete_removes_deployment(apps):
    create(apps, "llama")

    result = apps.delete_namespaced_deployment("llama", "default", _request_timeout=TIMEOUT)

    assert result["status"] == "Success"
    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment("llama", "default", _request_timeout=TIMEOUT)
    assert raised.value.status == 404


def test_delete_missing_deployment_gets_404(apps):
    with pytest.raises(ApiException) as raised:
        apps.delete_namespaced_deployment("missing", "default", _request_timeout=TIMEOUT)

    assert raised.value.status == 404


def test_dry_run_create_stores_nothing(apps):
    apps.create_namespaced_deployment("default", deployment_body("llama"), dry_run="All", _request_timeout=TIMEOUT)

    listed = apps.list_namespaced_deployment("default", _request_timeout=TIMEOUT)
    assert listed.items == []
