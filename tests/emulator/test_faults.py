"""Fault modes, observed through the official client as MCM will observe them."""

import json
import time
import urllib.request

import pytest
import urllib3
from kubernetes.client.rest import ApiException

from tests.emulator.helpers import READY_DELAY_S, TIMEOUT, TOKEN, deployment_body, wait_for


def create(apps, name, **kwargs):
    return apps.create_namespaced_deployment("default", deployment_body(name, **kwargs), _request_timeout=TIMEOUT)


def ready_replicas(apps, name):
    return apps.read_namespaced_deployment(name, "default", _request_timeout=TIMEOUT).status.ready_replicas or 0


def post_faults(cluster, settings):
    request = urllib.request.Request(
        cluster.url + "/_emulator/faults",
        data=json.dumps(settings).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def test_unreachable_cluster_refuses_connections(cluster, core):
    core.list_node(_request_timeout=TIMEOUT)

    cluster.set_unreachable()

    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_node(_request_timeout=TIMEOUT)


def test_unreachable_cluster_comes_back_with_state(cluster, apps):
    create(apps, "llama")
    port = cluster.port
    cluster.set_unreachable()

    cluster.set_unreachable(False)

    assert cluster.port == port
    assert apps.read_namespaced_deployment("llama", "default", _request_timeout=TIMEOUT).metadata.name == "llama"


def test_slow_cluster_delays_each_request(cluster, core):
    cluster.set_slow(0.3)

    started = time.monotonic()
    core.list_node(_request_timeout=TIMEOUT)

    assert time.monotonic() - started >= 0.3


def test_slow_cluster_times_out_short_requests(cluster, core):
    cluster.set_slow(0.5)

    with pytest.raises(urllib3.exceptions.MaxRetryError) as raised:
        core.list_node(_request_timeout=0.1)

    assert isinstance(raised.value.reason, urllib3.exceptions.ReadTimeoutError)


def test_all_requests_fail_with_error_rate_one(cluster, core):
    cluster.set_errors(1.0, status=503)

    with pytest.raises(ApiException) as raised:
        core.list_node(_request_timeout=TIMEOUT)

    assert raised.value.status == 503


def test_error_rate_fails_a_seeded_fraction(cluster, core):
    cluster.set_errors(0.5, status=500, seed=7)

    statuses = []
    for _ in range(200):
        try:
            core.list_node(_request_timeout=TIMEOUT)
            statuses.append(200)
        except ApiException as error:
            statuses.append(error.status)

    assert set(statuses) == {200, 500}
    assert 60 <= statuses.count(500) <= 140


def test_same_seed_fails_same_requests(cluster, core):
    outcomes = []
    for _ in range(2):
        cluster.set_errors(0.5, seed=3)
        run = []
        for _ in range(20):
            try:
                core.list_node(_request_timeout=TIMEOUT)
                run.append(True)
            except ApiException:
                run.append(False)
        outcomes.append(run)

    assert outcomes[0] == outcomes[1]


def test_capacity_loss_lowers_ready_replicas(cluster, apps):
    create(apps, "llama", replicas=4, gpus=4)
    assert wait_for(lambda: ready_replicas(apps, "llama") == 4)

    cluster.lose_capacity("h100-a")

    assert ready_replicas(apps, "llama") == 2


def test_capacity_loss_shows_on_node(cluster, core):
    cluster.lose_capacity("h100-a", gpus=3)

    node = core.read_node("h100-a", _request_timeout=TIMEOUT)

    assert node.status.allocatable["nvidia.com/gpu"] == "5"


def test_partial_capacity_loss_keeps_pods_that_fit(cluster, apps):
    create(apps, "llama", replicas=4, gpus=4)
    assert wait_for(lambda: ready_replicas(apps, "llama") == 4)

    cluster.lose_capacity("h100-a", gpus=4)

    assert ready_replicas(apps, "llama") == 3


def test_restored_capacity_makes_pods_ready_again(cluster, apps):
    create(apps, "llama", replicas=4, gpus=4)
    assert wait_for(lambda: ready_replicas(apps, "llama") == 4)
    cluster.lose_capacity("h100-a")

    cluster.restore_capacity()

    assert ready_replicas(apps, "llama") == 2
    assert wait_for(lambda: ready_replicas(apps, "llama") == 4)


def test_never_ready_keeps_new_replicas_pending(cluster, apps):
    cluster.set_never_ready()

    create(apps, "llama", replicas=2)
    time.sleep(READY_DELAY_S * 2)

    assert ready_replicas(apps, "llama") == 0


def test_never_ready_keeps_ready_replicas_ready(cluster, apps):
    create(apps, "llama", replicas=1)
    assert wait_for(lambda: ready_replicas(apps, "llama") == 1)

    cluster.set_never_ready()
    apps.patch_namespaced_deployment_scale("llama", "default", {"spec": {"replicas": 2}}, _request_timeout=TIMEOUT)
    time.sleep(READY_DELAY_S * 2)

    assert ready_replicas(apps, "llama") == 1


def test_clear_faults_restores_service(cluster, apps):
    create(apps, "llama", replicas=1)
    cluster.set_never_ready()
    cluster.set_errors(1.0)
    cluster.set_unreachable()

    cluster.clear_faults()

    assert wait_for(lambda: ready_replicas(apps, "llama") == 1)


def test_control_endpoint_sets_faults(cluster, core):
    result = post_faults(cluster, {"error_rate": 1.0, "error_status": 503, "capacity_lost": {"l4-a": None}})

    assert result["error_rate"] == 1.0
    assert result["capacity_lost"] == {"l4-a": 4}
    with pytest.raises(ApiException) as raised:
        core.list_node(_request_timeout=TIMEOUT)
    assert raised.value.status == 503


def test_control_endpoint_makes_cluster_unreachable(cluster, core):
    post_faults(cluster, {"unreachable": True})

    assert wait_for(lambda: cluster.is_unreachable, timeout=2)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_node(_request_timeout=TIMEOUT)


def test_control_endpoint_rejects_unknown_setting(cluster):
    with pytest.raises(urllib.error.HTTPError) as raised:
        post_faults(cluster, {"explode": True})

    assert raised.value.code == 400


def test_control_endpoint_requires_token(cluster):
    request = urllib.request.Request(cluster.url + "/_emulator/faults")

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=TIMEOUT)

    assert raised.value.code == 401
