"""The autoscaler pass on the database: decisions stored and audited, one autoscale plan, placement by demand."""

from datetime import timedelta

import pytest
from django.utils import timezone

from compliance.models import AuditEvent
from placements.autoscaling import autoscale_pass
from placements.models import AutoscalingPolicy, Deployment, PlacementPlan, PlanTrigger, ScalingDecision
from placements.planning import load_deployments
from placements.services import create_deployment
from placements.traffic import record_traffic
from tests.placements.failover_factories import NEW_YORK, build_fleet, placed_on, plan

pytestmark = pytest.mark.django_db

AMSTERDAM = {"name": "Amsterdam", "country_code": "NL", "latitude": 52.4, "longitude": 4.9, "share": 0.5}
EU_CLUSTERS = {"aws-euw1-a", "gcp-euw4-a"}


@pytest.fixture
def exact_solver(settings):
    settings.MCM_SCHEDULER_GAP_TARGET = 0.0
    settings.MCM_SCHEDULER_TIME_LIMIT_S = 10


def make_scaled(customer, name, *, replicas, max_replicas=12, origins=None, **policy) -> Deployment:
    deployment = create_deployment(
        actor="test",
        customer=customer,
        data={
            "name": name,
            "sku": "H100",
            "min_replicas": 1,
            "desired_replicas": replicas,
            "max_replicas": max_replicas,
            "demand_origins": origins or [NEW_YORK],
        },
    )
    defaults = {"target_concurrency": 10.0, "target_utilization": 1.0, "scale_down_delay_s": 0}
    AutoscalingPolicy.objects.create(deployment=deployment, **{**defaults, **policy})
    return deployment


def send_traffic(deployment, now, *, rps, origin="New York", cluster=None, samples=3):
    """Store ``samples`` samples of ``rps`` over the 30 s before ``now``."""
    rows = [
        {
            "deployment_id": deployment.pk,
            "cluster_id": cluster.pk if cluster else None,
            "origin": origin,
            "requests_per_second": rps,
            "in_flight": None,
            "observed_at": now - timedelta(seconds=10 * index),
        }
        for index in range(samples)
    ]
    record_traffic(rows, source="push")


def test_pass_scales_up_records_decision_and_plans(acme, exact_solver):
    fleet = build_fleet({name: 16 for name in ("aws-use1-a", "gcp-use4-a")})
    deployment = make_scaled(acme, "chat", replicas=2)
    plan()
    now = timezone.now()
    send_traffic(deployment, now, rps=45.0, cluster=fleet.clusters["aws-use1-a"])

    decisions = autoscale_pass(now=now)

    assert len(decisions) == 1
    decision = ScalingDecision.objects.get(deployment=deployment)
    assert (decision.direction, decision.from_replicas, decision.to_replicas) == ("up", 2, 5)
    assert decision.measurements["requests_per_second"] == pytest.approx(45.0)
    # Keyed by cluster name, as /traffic/ shows it.
    assert decision.measurements["by_cluster"] == {"aws-use1-a": pytest.approx(45.0)}
    assert decision.measurements["by_origin"] == {"New York": pytest.approx(45.0)}
    assert decision.measurements["recommendation"] == 5
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 5
    assert decision.plan is not None
    assert decision.plan.trigger == PlanTrigger.AUTOSCALE
    assert sum(placed_on(decision.plan, deployment).values()) == 5
    event = AuditEvent.objects.get(action="deployment.scaled")
    assert event.subject_id == str(deployment.pk)
    assert event.before == {"desired_replicas": 2}
    assert event.after["desired_replicas"] == 5


def test_pass_without_change_makes_no_plan(acme, exact_solver):
    fleet = build_fleet({"aws-use1-a": 16, "gcp-use4-a": 16})
    deployment = make_scaled(acme, "chat", replicas=2)
    now = timezone.now()
    send_traffic(deployment, now, rps=15.0, cluster=fleet.clusters["aws-use1-a"])

    assert autoscale_pass(now=now) == []
    assert not PlacementPlan.objects.exists()
    assert not ScalingDecision.objects.exists()
    assert AutoscalingPolicy.objects.get(deployment=deployment).state["recommendations"]


def test_pass_holds_without_telemetry(acme, exact_solver):
    build_fleet({"aws-use1-a": 16, "gcp-use4-a": 16})
    deployment = make_scaled(acme, "chat", replicas=4)

    assert autoscale_pass(now=timezone.now()) == []
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 4


def test_pass_skips_disabled_policy(acme, exact_solver):
    fleet = build_fleet({"aws-use1-a": 16, "gcp-use4-a": 16})
    deployment = make_scaled(acme, "chat", replicas=2, enabled=False)
    now = timezone.now()
    send_traffic(deployment, now, rps=90.0, cluster=fleet.clusters["aws-use1-a"])

    assert autoscale_pass(now=now) == []
    deployment.refresh_from_db()
    assert deployment.desired_replicas == 2


def test_pass_without_plan_only_decides(acme, exact_solver):
    fleet = build_fleet({"aws-use1-a": 16, "gcp-use4-a": 16})
    deployment = make_scaled(acme, "chat", replicas=2)
    now = timezone.now()
    send_traffic(deployment, now, rps=60.0, cluster=fleet.clusters["aws-use1-a"])

    decisions = autoscale_pass(now=now, plan=False)

    assert [decision.to_replicas for decision in decisions] == [6]
    assert decisions[0].plan is None
    assert not PlacementPlan.objects.exists()


def test_new_replicas_go_toward_growing_origin(acme, exact_solver):
    build_fleet({name: 16 for name in ("aws-use1-a", "aws-euw1-a", "gcp-use4-a", "gcp-euw4-a")})
    deployment = make_scaled(acme, "chat", replicas=2, origins=[{**NEW_YORK, "share": 0.5}, AMSTERDAM])
    plan()
    now = timezone.now()
    send_traffic(deployment, now, rps=75.0, origin="new york")
    send_traffic(deployment, now, rps=5.0, origin="Amsterdam")

    decisions = autoscale_pass(now=now)

    assert decisions[0].to_replicas == 8
    placed = placed_on(decisions[0].plan, deployment)
    in_us = sum(replicas for name, replicas in placed.items() if name not in EU_CLUSTERS)
    assert sum(placed.values()) == 8
    assert in_us >= 6


def test_declared_shares_alone_put_replicas_in_europe(acme, exact_solver):
    # The control for the test above: with the declared equal shares and no traffic, most
    # replicas go to Europe, so the move to the US comes from the measured traffic.
    build_fleet({name: 16 for name in ("aws-use1-a", "aws-euw1-a", "gcp-use4-a", "gcp-euw4-a")})
    deployment = make_scaled(acme, "chat", replicas=8, origins=[{**NEW_YORK, "share": 0.5}, AMSTERDAM])

    placed = placed_on(plan(), deployment)

    assert sum(replicas for name, replicas in placed.items() if name in EU_CLUSTERS) >= 6


def test_measured_traffic_weights_origins_without_changing_them(acme, exact_solver):
    build_fleet({"aws-use1-a": 16})
    deployment = make_scaled(acme, "chat", replicas=1, origins=[{**NEW_YORK, "share": 0.5}, AMSTERDAM])
    now = timezone.now()
    send_traffic(deployment, now, rps=30.0, origin="Amsterdam")
    send_traffic(deployment, now, rps=10.0, origin="")

    (loaded,) = load_deployments(now=now)

    shares = {origin.name: origin.share for origin in loaded.origins}
    # Amsterdam: 30 matched + half of the 10 unmatched; New York: the other half.
    assert shares == {"New York": pytest.approx(5 / 40), "Amsterdam": pytest.approx(35 / 40)}
    assert sorted(deployment.demand_origins.values_list("share", flat=True)) == [0.5, 0.5]


def test_scale_down_removes_replica_serving_least(acme, exact_solver):
    fleet = build_fleet({"aws-use1-a": 2, "gcp-use4-a": 2})
    deployment = make_scaled(acme, "chat", replicas=4)
    assert placed_on(plan(), deployment) == {"aws-use1-a": 2, "gcp-use4-a": 2}
    now = timezone.now()
    # 30 req/s need 3 replicas. The cheaper aws-use1-a serves 1 req/s per replica, gcp-use4-a 14.
    send_traffic(deployment, now, rps=2.0, cluster=fleet.clusters["aws-use1-a"])
    send_traffic(deployment, now, rps=28.0, cluster=fleet.clusters["gcp-use4-a"])

    decisions = autoscale_pass(now=now)

    assert (decisions[0].from_replicas, decisions[0].to_replicas) == (4, 3)
    assert placed_on(decisions[0].plan, deployment) == {"aws-use1-a": 1, "gcp-use4-a": 2}


def test_scale_down_without_cluster_traffic_removes_pricier_replica(acme, exact_solver):
    # The control for the test above: traffic not reported per cluster leaves price to decide.
    build_fleet({"aws-use1-a": 2, "gcp-use4-a": 2})
    deployment = make_scaled(acme, "chat", replicas=4)
    plan()
    now = timezone.now()
    send_traffic(deployment, now, rps=30.0)

    decisions = autoscale_pass(now=now)

    assert placed_on(decisions[0].plan, deployment) == {"aws-use1-a": 2, "gcp-use4-a": 1}


def test_scaled_to_zero_deployment_plans_and_stays_normal(acme, exact_solver):
    build_fleet({"aws-use1-a": 16, "gcp-use4-a": 16})
    deployment = make_scaled(acme, "chat", replicas=1, scale_to_zero=True)
    Deployment.objects.filter(pk=deployment.pk).update(min_replicas=0)
    plan()
    now = timezone.now()
    send_traffic(deployment, now, rps=0.0)

    decisions = autoscale_pass(now=now)

    assert (decisions[0].from_replicas, decisions[0].to_replicas) == (1, 0)
    assert placed_on(decisions[0].plan, deployment) == {}
    deployment.refresh_from_db()
    assert deployment.condition == "normal"
    assert decisions[0].plan.summary["unmet_replicas"] == 0
