"""GET /metrics: who may scrape it, and every figure read back through Prometheus's own parser."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from compliance.roles import AUDITOR
from compliance.services import record_event
from fleet.models import ClusterHealth, Outage, OutageScope, OutageSource, TelemetrySnapshot, TelemetrySource
from placements.models import (
    DriftRecord,
    ExecutionStep,
    FailoverKind,
    FailoverRequest,
    FailoverStatus,
    PlacementPlan,
    PlanStatus,
    PlanTrigger,
    StepPhase,
    StepStatus,
)
from tasks.models import TaskRunStatus
from tests.conftest import token_client
from tests.tasks.conftest import make_run, make_schedule

pytestmark = pytest.mark.django_db

URL = "/metrics"
TOKEN = "metrics-test-token-0123456789abcdef"


@pytest.fixture
def metrics_token(settings):
    settings.MCM_METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(client, **headers) -> dict:
    """Scrape the endpoint with the metrics token and return its samples by (name, sorted labels)."""
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[name, tuple(sorted(labels.items()))]


# Access.


def test_anonymous_request_gets_401_with_challenge(client, metrics_token):
    response = client.get(URL)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="mcm-metrics"'


def test_wrong_token_gets_401(client, metrics_token):
    response = client.get(URL, HTTP_AUTHORIZATION="Bearer not-the-token")

    assert response.status_code == 401
    assert b"invalid" in response.content


def test_bearer_token_without_server_token_gets_401(client, settings):
    settings.MCM_METRICS_TOKEN = ""

    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 401
    assert b"MCM_METRICS_TOKEN is not set" in response.content


def test_token_gets_prometheus_text(client, metrics_token):
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_openmetrics_is_served_when_asked(client, metrics_token):
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT="application/openmetrics-text")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")


def test_staff_session_may_scrape(client, ops):
    client.force_login(ops)

    assert client.get(URL).status_code == 200


def test_auditor_session_may_scrape(client, django_user_model):
    auditor = django_user_model.objects.create_user(username="audrey", is_staff=True)
    auditor.groups.add(Group.objects.get(name=AUDITOR))
    client.force_login(auditor)

    assert client.get(URL).status_code == 200


def test_customer_session_gets_403(client, acme_member):
    client.force_login(acme_member)

    assert client.get(URL).status_code == 403


def test_api_token_is_not_a_metrics_token(acme_member, metrics_token):
    response = token_client(acme_member).get(URL)

    assert response.status_code == 401


def test_post_is_not_allowed(client, metrics_token):
    response = client.post(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 405


# Figures, from a known state.


@pytest.fixture
def dry_run_plan(applied_plan):
    """A dry run newer than the applied plan: 3.5 s to solve, 0.4 s to build, gap 2%."""
    return PlacementPlan.objects.create(
        version=2,
        trigger=PlanTrigger.API,
        status=PlanStatus.DRY_RUN,
        inputs_digest="1" * 64,
        objective=13.0,
        gap=0.02,
        solver="highs",
        solve_seconds=3.5,
        build_seconds=0.4,
    )


def test_latest_plan_figures(client, metrics_token, dry_run_plan):
    samples = scrape(client)

    assert value(samples, "mcm_plan_version") == 2
    assert value(samples, "mcm_plan_solve_seconds") == 3.5
    assert value(samples, "mcm_plan_build_seconds") == 0.4
    assert value(samples, "mcm_plan_gap") == 0.02


def test_recent_plan_histograms(client, metrics_token, dry_run_plan):
    samples = scrape(client)

    # The applied plan solved in 0.2 s with gap 0, the dry run in 3.5 s with gap 0.02.
    assert value(samples, "mcm_plan_solve_seconds_recent_bucket", le="0.1") == 0
    assert value(samples, "mcm_plan_solve_seconds_recent_bucket", le="0.5") == 1
    assert value(samples, "mcm_plan_solve_seconds_recent_bucket", le="5.0") == 2
    assert value(samples, "mcm_plan_solve_seconds_recent_bucket", le="+Inf") == 2
    assert value(samples, "mcm_plan_solve_seconds_recent_gsum") == pytest.approx(3.7)
    assert value(samples, "mcm_plan_gap_recent_bucket", le="0.0") == 1
    assert value(samples, "mcm_plan_gap_recent_bucket", le="0.01") == 1
    assert value(samples, "mcm_plan_gap_recent_bucket", le="0.05") == 2
    assert value(samples, "mcm_plan_gap_recent_gsum") == pytest.approx(0.02)


def test_failed_plan_is_not_the_latest(client, metrics_token, dry_run_plan):
    PlacementPlan.objects.create(
        version=3, trigger=PlanTrigger.API, status=PlanStatus.FAILED, inputs_digest="2" * 64, error="solver crashed"
    )

    assert value(scrape(client), "mcm_plan_version") == 2


def test_no_plan_leaves_plan_gauges_empty(client, metrics_token):
    samples = scrape(client)

    assert ("mcm_plan_version", ()) not in samples
    assert value(samples, "mcm_plan_solve_seconds_recent_bucket", le="+Inf") == 0


def test_unmet_and_placed_replicas_by_tier(client, metrics_token, dry_run_plan):
    samples = scrape(client)

    # Figures of the applied plan: acme (premium) gets all 3 replicas, globex (standard) 1 of 2.
    assert value(samples, "mcm_unmet_replicas", tier="premium") == 0
    assert value(samples, "mcm_unmet_replicas", tier="standard") == 1
    assert value(samples, "mcm_unmet_replicas", tier="critical") == 0
    assert value(samples, "mcm_unmet_replicas", tier="best_effort") == 0
    assert value(samples, "mcm_placed_replicas", tier="premium") == 3
    assert value(samples, "mcm_placed_replicas", tier="standard") == 1


def snapshot(cluster, *, ok: bool = True, deployments: dict | None = None, ago_s: float = 0) -> TelemetrySnapshot:
    row = TelemetrySnapshot.objects.create(
        cluster=cluster,
        source=TelemetrySource.PULL,
        ok=ok,
        error="" if ok else "connection refused",
        deployments=deployments or {},
    )
    TelemetrySnapshot.objects.filter(pk=row.pk).update(taken_at=timezone.now() - timedelta(seconds=ago_s))
    return row


def test_replicas_by_provider_and_state(client, metrics_token, fleet, applied_plan, acme_chat, globex_search):
    for name in ("aws-use1-a", "aws-euw1-a", "gcp-usw4-a"):
        fleet.clusters[name].api_endpoint = f"https://{name}.example.test"
        fleet.clusters[name].save(update_fields=["api_endpoint"])
    chat, search = str(acme_chat.pk), str(globex_search.pk)
    snapshot(fleet.clusters["aws-use1-a"], deployments={chat: {"name": "c", "replicas": 5, "ready": 5}}, ago_s=60)
    snapshot(fleet.clusters["aws-use1-a"], deployments={chat: {"name": "c", "replicas": 2, "ready": 1}})
    snapshot(fleet.clusters["aws-euw1-a"], deployments={chat: {"name": "c", "replicas": 1, "ready": 1}}, ago_s=60)
    snapshot(fleet.clusters["aws-euw1-a"], ok=False)
    snapshot(fleet.clusters["gcp-usw4-a"], deployments={search: {"name": "s", "replicas": 1, "ready": 1}})

    samples = scrape(client)

    assert value(samples, "mcm_replicas", provider="aws", state="planned") == 3
    assert value(samples, "mcm_replicas", provider="gcp", state="planned") == 1
    # The latest snapshot of each cluster counts; aws-euw1-a's latest read failed, so it reports nothing.
    assert value(samples, "mcm_replicas", provider="aws", state="requested") == 2
    assert value(samples, "mcm_replicas", provider="aws", state="ready") == 1
    assert value(samples, "mcm_replicas", provider="gcp", state="requested") == 1
    assert value(samples, "mcm_replicas", provider="gcp", state="ready") == 1
    assert value(samples, "mcm_clusters_unreported") == 1


def capacity_event(number: int) -> dict:
    return {
        "event_id": f"aws-use1-a-{number}",
        "cluster": "aws-use1-a",
        "sequence": number,
        "kind": "capacity",
        "occurred_at": "2026-12-04T10:00:00Z",
        "payload": {"gpus": {"H100": {"allocatable": 10}}},
    }


def test_ingested_and_rejected_events(client, metrics_token, ops_client, fleet):
    rejected = {**capacity_event(3), "kind": "weather"}
    first = ops_client.post(
        "/api/v1/events", {"events": [capacity_event(1), capacity_event(2), rejected]}, format="json"
    )
    again = ops_client.post("/api/v1/events", {"events": [capacity_event(1), capacity_event(2)]}, format="json")
    assert first.json()["rejected"] == 1
    assert again.json()["duplicates"] == 2

    samples = scrape(client)

    assert value(samples, "mcm_ingested_events_total", outcome="accepted") == 2
    assert value(samples, "mcm_ingested_events_total", outcome="duplicate") == 2
    assert value(samples, "mcm_ingested_events_total", outcome="rejected") == 1


def test_task_runs_and_failures_of_last_hour(client, metrics_token, broker):
    make_run("plan_placements", TaskRunStatus.SUCCEEDED, ago_s=600)
    make_run("plan_placements", TaskRunStatus.SUCCEEDED, ago_s=300)
    make_run("plan_placements", TaskRunStatus.FAILED, ago_s=30, error="SolverError: infeasible")
    make_run("plan_placements", TaskRunStatus.FAILED, ago_s=7200)
    make_run("evaluate_health", TaskRunStatus.RUNNING, ago_s=1)

    samples = scrape(client)

    assert value(samples, "mcm_task_runs_last_hour", task="plan_placements", status="succeeded") == 2
    assert value(samples, "mcm_task_runs_last_hour", task="plan_placements", status="failed") == 1
    assert value(samples, "mcm_task_runs_last_hour", task="evaluate_health", status="running") == 1


def test_schedule_lateness_and_queue_backlog(client, metrics_token, broker):
    make_schedule("plan placements", "tasks.plan_placements", 300, changed_ago_s=3600)
    make_schedule("prune traffic", "placements.prune_traffic", 3600, changed_ago_s=3 * 3600)
    run = make_run("plan_placements", TaskRunStatus.SUCCEEDED, ago_s=60)
    broker.rpush("celery", "message-1", "message-2", "message-3")

    samples = scrape(client)

    assert value(samples, "mcm_schedule_late", schedule="plan placements") == 0
    assert value(samples, "mcm_schedule_late", schedule="prune traffic") == 1
    assert value(samples, "mcm_schedule_last_run_timestamp_seconds", schedule="plan placements") == pytest.approx(
        run.started_at.timestamp()
    )
    assert value(samples, "mcm_queue_backlog") == 3


def test_backlog_absent_in_process(client, metrics_token, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True

    assert ("mcm_queue_backlog", ()) not in scrape(client)


def test_reconcile_drift(client, metrics_token, fleet, acme_chat):
    cluster = fleet.clusters["aws-use1-a"]
    drift = dict(cluster=cluster, deployment=acme_chat, kubernetes_name="acme-chat", desired_replicas=2)
    DriftRecord.objects.create(**drift, observed_replicas=1, ready_replicas=1, action="scaled")
    DriftRecord.objects.create(**drift, observed_replicas=2, ready_replicas=0, action="not_ready")
    DriftRecord.objects.create(
        **drift, observed_replicas=0, ready_replicas=0, action="scaled", repaired_at=timezone.now()
    )
    summary = {"drift_recorded": 3, "repaired": 1, "repairs_failed": 1, "steps_timed_out": 0}
    make_run(
        "reconcile_clusters", TaskRunStatus.SUCCEEDED, ago_s=20, summary={**summary, "clusters_unreachable": ["x"]}
    )
    make_run("reconcile_clusters", TaskRunStatus.FAILED, ago_s=5, error="DatabaseError")

    samples = scrape(client)

    assert value(samples, "mcm_drift_unrepaired", action="scaled") == 1
    assert value(samples, "mcm_drift_unrepaired", action="not_ready") == 1
    assert value(samples, "mcm_reconcile_last_run", result="drift_recorded") == 3
    assert value(samples, "mcm_reconcile_last_run", result="repaired") == 1
    assert value(samples, "mcm_reconcile_last_run", result="repairs_failed") == 1
    assert value(samples, "mcm_reconcile_last_run", result="steps_timed_out") == 0
    assert value(samples, "mcm_reconcile_last_run", result="clusters_unreachable") == 1


# Failovers.


def lose_cluster(cluster, first_missed_at):
    """Record the down verdict of ``cluster`` as fleet.health does, with its first missed heartbeat."""
    record_event(
        actor="health",
        action="cluster.health_changed",
        subject=cluster,
        reason="no heartbeat",
        before={"health": ClusterHealth.HEALTHY},
        after={"health": ClusterHealth.DOWN, "first_missed_heartbeat_at": first_missed_at.isoformat()},
    )


def decided_failover(deployment, cluster, *, decided_at, status=FailoverStatus.APPROVED) -> FailoverRequest:
    request = FailoverRequest.objects.create(
        deployment=deployment, kind=FailoverKind.FAILOVER, replicas=2, reason=f"{cluster.name} lost"
    )
    request.clusters.set([cluster])
    FailoverRequest.objects.filter(pk=request.pk).update(
        status=status, decided_at=decided_at, decided_by_label="automatic"
    )
    request.refresh_from_db()
    return request


def replacement_step(plan, deployment, cluster, sku, *, status=StepStatus.EXECUTED, executed_at=None) -> ExecutionStep:
    return ExecutionStep.objects.create(
        plan=plan,
        deployment=deployment,
        cluster=cluster,
        sku=sku,
        phase=StepPhase.SCALE_UP,
        desired_replicas=2,
        status=status,
        executed_at=executed_at,
    )


@pytest.fixture
def finished_failover(fleet, acme_chat, applied_plan):
    """aws-use1-a missed its first heartbeat 300 s ago; acme/chat's replacement on aws-euw1-a was ready 95 s later."""
    lost, spare = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    first_missed = timezone.now() - timedelta(seconds=300)
    lose_cluster(lost, first_missed)
    request = decided_failover(acme_chat, lost, decided_at=first_missed + timedelta(seconds=40))
    replacement_step(applied_plan, acme_chat, spare, fleet.h100, executed_at=first_missed + timedelta(seconds=95))
    # The lost cluster's own step stays pending; it is not a replacement.
    replacement_step(applied_plan, acme_chat, lost, fleet.h100, status=StepStatus.PENDING)
    return request


def test_failover_duration_from_first_missed_heartbeat(client, metrics_token, finished_failover):
    samples = scrape(client)

    assert value(samples, "mcm_failover_last_duration_seconds") == pytest.approx(95.0)
    assert value(samples, "mcm_failover_duration_seconds_bucket", le="60.0") == 0
    assert value(samples, "mcm_failover_duration_seconds_bucket", le="120.0") == 1
    assert value(samples, "mcm_failover_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "mcm_failover_duration_seconds_gsum") == pytest.approx(95.0)
    assert value(samples, "mcm_failovers_unfinished") == 0


def test_failover_duration_from_declared_outage(client, metrics_token, fleet, acme_chat, applied_plan):
    lost, spare = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    declared_at = timezone.now() - timedelta(seconds=500)
    Outage.objects.create(
        scope=OutageScope.REGION,
        region=lost.region,
        source=OutageSource.DECLARED,
        reason="The provider announced an outage.",
        declared_by="ops",
        started_at=declared_at,
    )
    decided_failover(acme_chat, lost, decided_at=declared_at + timedelta(seconds=5))
    replacement_step(applied_plan, acme_chat, spare, fleet.h100, executed_at=declared_at + timedelta(seconds=130))

    assert value(scrape(client), "mcm_failover_last_duration_seconds") == pytest.approx(130.0)


def test_failover_waiting_for_replicas_is_unfinished(client, metrics_token, fleet, acme_chat, applied_plan):
    lost, spare = fleet.clusters["aws-use1-a"], fleet.clusters["aws-euw1-a"]
    decided_failover(acme_chat, lost, decided_at=timezone.now() - timedelta(seconds=60))
    replacement_step(applied_plan, acme_chat, spare, fleet.h100, status=StepStatus.PENDING)

    samples = scrape(client)

    assert value(samples, "mcm_failovers_unfinished") == 1
    assert value(samples, "mcm_failover_duration_seconds_bucket", le="+Inf") == 0
    assert ("mcm_failover_last_duration_seconds", ()) not in samples


def test_failover_awaiting_approval_is_counted(client, metrics_token, fleet, globex_search):
    request = FailoverRequest.objects.create(
        deployment=globex_search, kind=FailoverKind.FAILOVER, replicas=1, reason="gcp-usw4-a lost"
    )
    request.clusters.set([fleet.clusters["gcp-usw4-a"]])

    assert value(scrape(client), "mcm_failovers_awaiting_approval") == 1


def test_scrape_queries_do_not_grow_with_history(client, metrics_token, dry_run_plan, broker):
    with CaptureQueriesContext(connection) as before:
        scrape(client)
    for version in range(3, 33):
        PlacementPlan.objects.create(
            version=version, trigger=PlanTrigger.SCHEDULE, status=PlanStatus.SUPERSEDED, inputs_digest="3" * 64
        )
        make_run("plan_placements", TaskRunStatus.SUCCEEDED, ago_s=version)
    with CaptureQueriesContext(connection) as after:
        scrape(client)

    assert len(after.captured_queries) == len(before.captured_queries)


def test_short_metrics_token_stops_start():
    environment = {**os.environ, "MCM_METRICS_TOKEN": "short"}
    command = [sys.executable, "-c", "import django; django.setup()"]
    environment["DJANGO_SETTINGS_MODULE"] = "mcm_site.settings"

    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert "MCM_METRICS_TOKEN is 5 characters long, which is too short" in result.stderr
