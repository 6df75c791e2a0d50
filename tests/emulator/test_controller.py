"""The emulated controller: readiness delay, GPU bin-packing, node selectors and status fields."""

import time

from tests.emulator.helpers import L4, READY_DELAY_S, TIMEOUT, deployment_body, wait_for


def create(apps, name, **kwargs):
    return apps.create_namespaced_deployment("default", deployment_body(name, **kwargs), _request_timeout=TIMEOUT)


def read(apps, name):
    return apps.read_namespaced_deployment(name, "default", _request_timeout=TIMEOUT)


def ready_replicas(apps, name):
    return read(apps, name).status.ready_replicas or 0


def test_replicas_not_ready_before_delay(apps):
    create(apps, "llama", replicas=2, gpus=1)

    status = read(apps, "llama").status

    assert status.ready_replicas is None
    assert status.replicas == 2
    assert status.unavailable_replicas == 2


def test_replicas_ready_after_delay(apps):
    create(apps, "llama", replicas=2, gpus=1)

    time.sleep(READY_DELAY_S + 0.05)

    status = read(apps, "llama").status
    assert status.ready_replicas == 2
    assert status.available_replicas == 2
    assert status.updated_replicas == 2
    assert status.unavailable_replicas is None


def test_complete_deployment_reports_conditions(apps):
    create(apps, "llama", replicas=1)
    time.sleep(READY_DELAY_S + 0.05)

    conditions = {condition.type: condition for condition in read(apps, "llama").status.conditions}

    assert conditions["Available"].status == "True"
    assert conditions["Progressing"].reason == "NewReplicaSetAvailable"


def test_observed_generation_follows_spec_changes(apps):
    create(apps, "llama", replicas=1)
    apps.patch_namespaced_deployment("llama", "default", {"spec": {"replicas": 2}}, _request_timeout=TIMEOUT)

    deployment = read(apps, "llama")

    assert deployment.metadata.generation == 2
    assert deployment.status.observed_generation == 2


def test_ready_replicas_limited_by_free_gpus(apps):
    create(apps, "llama", replicas=5, gpus=4)
    time.sleep(READY_DELAY_S + 0.05)

    status = read(apps, "llama").status

    assert status.replicas == 5
    assert status.ready_replicas == 4
    assert status.unavailable_replicas == 1


def test_pod_must_fit_on_one_node(apps):
    create(apps, "big", replicas=3, gpus=6)
    time.sleep(READY_DELAY_S + 0.05)

    assert ready_replicas(apps, "big") == 2


def test_wrong_sku_stays_pending(apps):
    create(apps, "on-l4", replicas=1, gpus=8, sku=L4)
    create(apps, "on-missing-sku", replicas=1, gpus=1, sku="NVIDIA-B200")
    time.sleep(READY_DELAY_S + 0.05)

    assert ready_replicas(apps, "on-l4") == 0
    assert ready_replicas(apps, "on-missing-sku") == 0


def test_matching_sku_gets_its_nodes(apps):
    create(apps, "on-l4", replicas=2, gpus=2, sku=L4)
    time.sleep(READY_DELAY_S + 0.05)

    assert ready_replicas(apps, "on-l4") == 2


def test_older_deployment_keeps_its_gpus(apps):
    create(apps, "first", replicas=4, gpus=4)
    create(apps, "second", replicas=2, gpus=4)
    time.sleep(READY_DELAY_S + 0.05)

    assert ready_replicas(apps, "first") == 4
    assert ready_replicas(apps, "second") == 0


def test_scale_down_frees_gpus_at_once(apps):
    create(apps, "first", replicas=4, gpus=4)
    create(apps, "second", replicas=2, gpus=4)
    time.sleep(READY_DELAY_S + 0.05)

    apps.patch_namespaced_deployment_scale("first", "default", {"spec": {"replicas": 2}}, _request_timeout=TIMEOUT)

    assert ready_replicas(apps, "first") == 2
    assert wait_for(lambda: ready_replicas(apps, "second") == 2, timeout=2)


def test_delete_frees_gpus(apps):
    create(apps, "first", replicas=4, gpus=4)
    create(apps, "second", replicas=2, gpus=4)
    time.sleep(READY_DELAY_S + 0.05)

    apps.delete_namespaced_deployment("first", "default", _request_timeout=TIMEOUT)

    assert wait_for(lambda: ready_replicas(apps, "second") == 2, timeout=2)


def test_scale_to_zero_clears_counts(apps):
    create(apps, "llama", replicas=2)
    time.sleep(READY_DELAY_S + 0.05)

    apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": 0}}, _request_timeout=TIMEOUT)

    status = read(apps, "llama").status
    assert status.replicas is None
    assert status.ready_replicas is None


def test_template_change_restarts_pods(apps):
    create(apps, "llama", replicas=1)
    time.sleep(READY_DELAY_S + 0.05)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:v0.7.0"}]}}}}

    apps.patch_namespaced_deployment("llama", "default", patch, _request_timeout=TIMEOUT)

    assert ready_replicas(apps, "llama") == 0
    assert wait_for(lambda: ready_replicas(apps, "llama") == 1, timeout=2)


def test_status_change_increases_resource_version(apps):
    created = create(apps, "llama", replicas=1)
    time.sleep(READY_DELAY_S + 0.05)

    ready = read(apps, "llama")

    assert int(ready.metadata.resource_version) > int(created.metadata.resource_version)


def test_unchanged_reads_keep_resource_version(apps):
    create(apps, "llama", replicas=1)
    time.sleep(READY_DELAY_S + 0.05)

    first = read(apps, "llama").metadata.resource_version
    second = read(apps, "llama").metadata.resource_version

    assert first == second
