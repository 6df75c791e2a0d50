"""Autoscaling end to end: traffic served by emulated clusters, pulled, decided, planned, executed and ready."""

import pytest

from placements.autoscaling import autoscale_pass
from placements.models import AutoscalingPolicy, PlanTrigger, ScalingDecision
from placements.observation import kubernetes_name
from tests.e2e.conftest import deploy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def set_traffic(world, deployment, rps: float) -> None:
    """Report ``rps`` from New York on every cluster that runs the deployment, split evenly."""
    running = [name for name, replicas in world.replicas(deployment).items() if replicas > 0]
    for name, site in world.sites.items():
        share = rps / len(running) if name in running else 0.0
        site.emulated.set_traffic(kubernetes_name(deployment), {"New York": (share, None)} if share else {})


def test_traffic_scales_up_then_down_on_emulated_clusters(world, customers):
    world.plan_every_s = None
    deployment = deploy(customers["acme"], "chat", replicas=2, max_replicas=6)
    AutoscalingPolicy.objects.create(
        deployment=deployment,
        target_concurrency=10.0,
        target_utilization=1.0,
        window_s=2,
        scale_down_delay_s=0,
        max_scale_down_fraction=0.5,
    )
    world.start()

    set_traffic(world, deployment, 45.0)
    world.run_for(2.5)  # reads before the traffic count as 0 in the window, so let the 2 s window fill
    up = autoscale_pass()

    assert [(decision.from_replicas, decision.to_replicas) for decision in up] == [(2, 5)]
    assert up[0].plan.trigger == PlanTrigger.AUTOSCALE
    assert up[0].measurements["requests_per_second"] == pytest.approx(45.0)
    ready = world.run_until(lambda: sum(world.ready(deployment).values()) == 5, timeout_s=20)
    assert ready, world.describe()

    set_traffic(world, deployment, 8.0)
    world.run_for(2.5)  # the 2 s window holds only the lower rate
    down = autoscale_pass()

    # One replica is needed, but at most half of 5 (2) go per minute.
    assert [(decision.from_replicas, decision.to_replicas) for decision in down] == [(5, 3)]
    assert "scale_down_rate" in down[0].measurements["limits"]
    converged = world.run_until(lambda: world.converged() and sum(world.ready(deployment).values()) == 3, 20)
    assert converged, world.describe()
    assert ScalingDecision.objects.filter(deployment=deployment).count() == 2
