"""Traffic replay: the demand split, the report arithmetic, and one short replay against emulated clusters."""

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from compliance.models import AuditEvent
from placements import demo_loop
from placements.management.commands.replay_traffic import (
    find_deployment,
    restoration_text,
    temporary_policies,
)
from placements.models import AutoscalingPolicy, Deployment, PlanTrigger, ScalingDecision, ScalingDirection
from placements.planning import run_plan
from placements.replay import (
    DeploymentReport,
    Origin,
    ReplayReport,
    Route,
    build_targets,
    compressed,
    run_replay,
    split_demand,
)
from placements.traces import read_trace
from tests.e2e.conftest import (  # noqa: F401 (fixtures used by name)
    DEFAULT_FLEET,
    LONDON,
    customers,
    deploy,
    e2e_settings,
    make_fleet,
    sites_factory,
)

LONDON_ORIGIN = Origin("London", 51.5, -0.1, 0.75)
PARIS_ORIGIN = Origin("Paris", 48.9, 2.4, 0.25)


def test_split_fills_routes_in_rank_order():
    routes = {"London": [Route(1, 30.0), Route(2, 100.0)], "Paris": [Route(2, 100.0)]}

    split = split_demand(100.0, [PARIS_ORIGIN, LONDON_ORIGIN], routes, seconds_per_request=2.0)

    assert split.offered_rps == 100.0
    assert split.served_rps == pytest.approx(100.0)
    assert split.unserved_rps == pytest.approx(0.0)
    assert split.by_cluster[1] == {"London": [30.0, 60.0]}
    assert split.by_cluster[2]["London"] == pytest.approx([45.0, 90.0])
    assert split.by_cluster[2]["Paris"] == pytest.approx([25.0, 50.0])
    assert split.unrouted == {}


def test_split_queues_unserved_at_first_route():
    routes = {"London": [Route(1, 30.0), Route(2, 20.0)], "Paris": [Route(2, 20.0)]}

    split = split_demand(100.0, [LONDON_ORIGIN, PARIS_ORIGIN], routes, seconds_per_request=1.0)

    # London (75 req/s) takes 30 on cluster 1 and 20 on cluster 2 first; Paris finds cluster 2 full.
    assert split.served_rps == pytest.approx(50.0)
    assert split.unserved_rps == pytest.approx(50.0)
    assert split.by_cluster[1]["London"] == pytest.approx([30.0 + 25.0, 30.0 + 25.0])
    assert split.by_cluster[2]["London"] == pytest.approx([20.0, 20.0])
    assert split.by_cluster[2]["Paris"] == pytest.approx([25.0, 25.0])
    reported = sum(rps for by_origin in split.by_cluster.values() for rps, _ in by_origin.values())
    assert reported == pytest.approx(100.0)


def test_split_without_routes_is_unrouted():
    split = split_demand(40.0, [LONDON_ORIGIN, PARIS_ORIGIN], {}, seconds_per_request=1.0)

    assert split.served_rps == 0.0
    assert split.by_cluster == {}
    assert split.unrouted == pytest.approx({"London": 30.0, "Paris": 10.0})


def test_report_integrates_ticks(tmp_path):
    path = Path(tmp_path) / "trace.csv"
    path.write_text("category,model,window_start_s,total_rate_rps\nc,m,0,10\nc,m,60,40\nc,m,120,10\n")
    trace = read_trace(path)["m"]
    report = DeploymentReport(1, "acme/chat", "m", 1.0)
    # Ticks every 30 trace seconds; 2 replicas of 15 req/s each, then 3 from t = 90 s.
    for t_s in range(0, 180, 30):
        rate = trace.rate_at(t_s)
        ready = 2 if t_s < 90 else 3
        report.add(offered_rps=rate, served_rps=min(rate, ready * 15.0), ready_replicas=ready, seconds=30)

    assert report.offered_requests == pytest.approx(trace.requests_between(0, 180))
    assert report.offered_requests == pytest.approx(3600)
    # 30 req/s served during the first 30 s of the peak window, 40 req/s in its second half.
    assert report.served_requests == pytest.approx(600 + 30 * 30 + 30 * 40 + 600)
    assert report.served_share == pytest.approx(3300 / 3600)
    assert report.replica_hours == pytest.approx((2 * 90 + 3 * 90) / 3600)
    assert report.max_ready_replicas == 3
    assert report.min_ready_replicas == 2


def test_report_totals_and_table():
    first = DeploymentReport(1, "acme/chat", "m-large", 1.0, 100.0, 90.0, 2.0, 3, 1, 4)
    second = DeploymentReport(2, "acme/bot", "m-small", 0.5, 300.0, 300.0, 1.0, 0, 0, 1)
    report = ReplayReport([first, second], start_s=0, duration_s=3600, factor=60, start_delay_s=120)

    totals = report.totals()

    assert totals.offered_requests == 400.0
    assert totals.served_share == pytest.approx(390 / 400)
    assert totals.replica_hours == 3.0
    assert (totals.scale_ups, totals.scale_downs) == (3, 1)
    assert "97.5%" in report.format()
    assert report.as_dict()["totals"]["served_share"] == pytest.approx(0.975)
    assert DeploymentReport(3, "idle", "m", 1.0).served_share is None


def test_report_totals_have_no_per_deployment_fields():
    first = DeploymentReport(1, "acme/chat", "m-large", 1.0, 100.0, 90.0, 2.0, 3, 1, 4, 1)
    report = ReplayReport([first], start_s=0, duration_s=3600, factor=60, start_delay_s=120)

    answer = report.as_dict()

    assert set(answer["deployments"][0]) >= {"deployment_id", "name", "model", "rate_scale", "min_ready_replicas"}
    assert not set(answer["totals"]) & {"deployment_id", "name", "model", "rate_scale", "min_ready_replicas"}
    assert answer["totals"]["offered_requests"] == 100.0


def test_help_shows_start_and_duration_defaults(capsys):
    with pytest.raises(SystemExit):
        call_command("replay_traffic", "--help")

    text = " ".join(capsys.readouterr().out.split())
    assert "2d (default 0)" in text
    assert "6h, 1d (default 1d)" in text


def test_compressed_durations_keep_whole_seconds():
    assert compressed(300, 60) == 5
    assert compressed(60, 360) == 1
    assert compressed(90, 20) == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factor": 0.0}, "--factor 0.0 is invalid: use a positive number"),
        ({"tick_s": -1.0}, "--tick-s -1.0 is invalid"),
        ({"rate_scale": "lots"}, "--rate-scale lots is invalid: use a positive number or 'auto'"),
        ({"rate_scale": "-2"}, "--rate-scale -2 is invalid"),
        ({"start": "2w"}, "--start 2w is invalid: '2w' is not a duration"),
        ({"duration": "0"}, "--duration 0 is invalid: use a positive duration"),
        ({"start_delay_s": -5.0}, "--start-delay-s -5.0 is invalid"),
        ({"model": "m-huge"}, "--model m-huge is invalid: model 'm-huge' is not in the trace file; it has m"),
        ({"start": "100", "duration": "100"}, "it ends at 200 s, after the end of model m's trace at 180 s"),
    ],
)
def test_command_rejects_bad_option(tmp_path, options, message):
    path = tmp_path / "trace.csv"
    path.write_text("category,model,window_start_s,total_rate_rps\nc,m,0,10\nc,m,60,40\nc,m,120,10\n")
    options = {"model": "m", "duration": "60", **options}

    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("replay_traffic", trace=path, **options)


def test_command_rejects_missing_or_bad_trace(tmp_path):
    with pytest.raises(CommandError, match=r"--trace .*absent.csv is invalid: no such file"):
        call_command("replay_traffic", trace=tmp_path / "absent.csv")

    path = tmp_path / "trace.csv"
    path.write_text("category,model,window_start_s,total_rate_rps\nc,m,0,fast\n")
    with pytest.raises(CommandError, match=r"trace.csv:2: total_rate_rps: 'fast' is invalid"):
        call_command("replay_traffic", trace=path, model="m")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_replay_scales_up_and_down(sites_factory, customers, tmp_path):  # noqa: F811
    sites = sites_factory(DEFAULT_FLEET[:2])
    chat = deploy(customers["acme"], "chat", replicas=1, gpus_per_replica=1, demand_origins=[LONDON], max_replicas=8)
    # One replica serves 2 req/s and the autoscaler aims at 1 in-flight request per replica.
    AutoscalingPolicy.objects.create(
        deployment=chat,
        target_concurrency=2,
        target_utilization=0.5,
        seconds_per_request=1,
        window_s=20,
        scale_down_delay_s=40,
        max_scale_down_fraction=1.0,
    )
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL)
    assert demo_loop.run_loop(plan, timeout_s=20, progress=lambda line: None).done
    # Windows of 20 trace seconds: quiet, a burst of 6 req/s for 80 s, quiet again.
    path = tmp_path / "trace.csv"
    rates = [1, 1, 6, 6, 6, 6, 1, 1, 1, 1, 1, 1]
    path.write_text(
        "category,model,window_start_s,total_rate_rps\n"
        + "".join(f"c,burst,{index * 20},{rate}\n" for index, rate in enumerate(rates))
    )
    trace = read_trace(path)["burst"]
    targets = build_targets(
        [Deployment.objects.select_related("autoscaling").get(pk=chat.pk)], {"burst": trace}, ["burst"], 1.0
    )

    report = run_replay(
        targets,
        emulated={name: site.emulated for name, site in sites.items()},
        start_s=0,
        duration_s=trace.duration_s,
        factor=20,
        start_delay_s=10,
        tick_s=0.25,
    )

    result = report.deployments[0]
    decisions = list(ScalingDecision.objects.filter(deployment=chat).order_by("decided_at"))
    assert result.offered_requests == pytest.approx(trace.requests_between(0, trace.duration_s), rel=0.1)
    assert result.max_ready_replicas >= 4, decisions
    assert result.scale_ups >= 1
    assert result.scale_downs >= 1
    assert decisions[0].direction == ScalingDirection.UP
    assert decisions[-1].direction == ScalingDirection.DOWN
    assert decisions[-1].to_replicas < max(decision.to_replicas for decision in decisions)
    assert 0.5 < result.served_share <= 1.0
    assert result.replica_hours > 0
    policy = AutoscalingPolicy.objects.get(deployment=chat)
    assert (policy.window_s, policy.scale_down_delay_s) == (20, 40)
    assert report.policy_overrides[chat.pk] == {"window_s": 1, "scale_down_delay_s": 2}


@pytest.mark.django_db
def test_temporary_policy_removed_and_replicas_restored(customers):  # noqa: F811
    make_fleet(DEFAULT_FLEET[:1])
    chat = deploy(customers["acme"], "chat", replicas=2, max_replicas=6)
    kept = deploy(customers["globex"], "search", replicas=3, max_replicas=6)
    AutoscalingPolicy.objects.create(deployment=kept, window_s=30)

    with temporary_policies([chat, kept]) as added:
        assert added == [chat]
        assert AutoscalingPolicy.objects.filter(deployment=chat).exists()
        Deployment.objects.filter(pk__in=[chat.pk, kept.pk]).update(desired_replicas=5)

    chat.refresh_from_db()
    kept.refresh_from_db()
    assert not AutoscalingPolicy.objects.filter(deployment=chat).exists()
    assert chat.desired_replicas == 2
    assert AutoscalingPolicy.objects.get(deployment=kept).window_s == 30
    assert kept.desired_replicas == 5
    text = restoration_text({chat.pk: 2, kept.pk: 3}, {chat.pk})
    assert "acme/chat: the policy added for the run is removed; desired replicas restored to 2." in text
    assert "globex/search: its policy's window_s and scale_down_delay_s are restored" in text
    assert "Desired replicas are 5, not restored to 3: the autoscaler sets them" in text
    actions = list(AuditEvent.objects.filter(subject_id=str(chat.pk)).values_list("action", flat=True))
    assert "autoscaling.created" in actions
    assert "autoscaling.deleted" in actions


@pytest.mark.django_db
def test_find_deployment_by_id_name_or_customer(customers):  # noqa: F811
    make_fleet(DEFAULT_FLEET[:1])
    chat = deploy(customers["acme"], "chat")
    other = deploy(customers["globex"], "chat")

    assert find_deployment(str(chat.pk)) == chat
    assert find_deployment("globex/chat") == other
    with pytest.raises(CommandError, match="--deployments chat is invalid: several customers have it"):
        find_deployment("chat")
    with pytest.raises(CommandError, match="--deployments acme/nope is invalid: no such deployment"):
        find_deployment("acme/nope")
