"""The scale and status subresources of Deployments."""

import pytest
from kubernetes.client.rest import ApiException

from tests.emulator.helpers import TIMEOUT, deployment_body


@pytest.fixture
def created(apps):
    return apps.create_namespaced_deployment("default", deployment_body("llama", replicas=2), _request_timeout=TIMEOUT)


def test_read_scale_returns_autoscaling_scale(apps, created):
    scale = apps.read_namespaced_deployment_scale("llama", "default", _request_timeout=TIMEOUT)

    assert scale.kind == "Scale"
    assert scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 2
    assert scale.status.selector == "app=llama"


def test_patch_scale_changes_replicas_and_generation(apps, created):
    scale = apps.patch_namespaced_deployment_scale(
        "llama", "default", {"spec": {"replicas": 5}}, _request_timeout=TIMEOUT
    )

    deployment = apps.read_namespaced_deployment("llama", "default", _request_timeout=TIMEOUT)
    assert scale.spec.replicas == 5
    assert deployment.spec.replicas == 5
    assert deployment.metadata.generation == 2


def test_replace_scale_with_stale_version_gets_409(apps, created):
    scale = apps.read_namespaced_deployment_scale("llama", "default", _request_timeout=TIMEOUT)
    apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": 3}}, _request_timeout=TIMEOUT)

    scale.spec.replicas = 4
    with pytest.raises(ApiException) as raised:
        apps.replace_namespaced_deployment_scale("llama", "default", scale, _request_timeout=TIMEOUT)

    assert raised.value.status == 409


def test_replace_scale_with_current_version_succeeds(apps, created):
    scale = apps.read_namespaced_deployment_scale("llama", "default", _request_timeout=TIMEOUT)

    scale.spec.replicas = 4
    replaced = apps.replace_namespaced_deployment_scale("llama", "default", scale, _request_timeout=TIMEOUT)

    assert replaced.spec.replicas == 4


def test_scale_of_missing_deployment_gets_404(apps):
    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment_scale("missing", "default", _request_timeout=TIMEOUT)

    assert raised.value.status == 404


def test_read_status_returns_deployment_with_status(apps, created):
    deployment = apps.read_namespaced_deployment_status("llama", "default", _request_timeout=TIMEOUT)

    assert deployment.status.observed_generation == 1
    assert deployment.status.replicas == 2


def test_patch_status_changes_status_only(apps, created):
    patch = {"spec": {"replicas": 9}, "status": {"collisionCount": 3}}

    patched = apps.patch_namespaced_deployment_status("llama", "default", patch, _request_timeout=TIMEOUT)

    assert patched.status.collision_count == 3
    assert patched.spec.replicas == 2
    assert patched.metadata.generation == 1


def test_replace_status_keeps_spec(apps, created):
    current = apps.read_namespaced_deployment_status("llama", "default", _request_timeout=TIMEOUT)

    current.spec.replicas = 7
    current.status.collision_count = 1
    replaced = apps.replace_namespaced_deployment_status("llama", "default", current, _request_timeout=TIMEOUT)

    assert replaced.spec.replicas == 2
    assert replaced.status.collision_count == 1


def test_main_resource_write_keeps_status(apps, created):
    patch = {"spec": {"replicas": 3}, "status": {"collisionCount": 5}}

    patched = apps.patch_namespaced_deployment("llama", "default", patch, _request_timeout=TIMEOUT)

    assert patched.spec.replicas == 3
    assert patched.status.collision_count is None
