"""Execution of applied plans on emulated clusters, through the real Kubernetes client."""

from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command

from compliance.models import AuditEvent
from fleet.kube import CallRateLimiter
from placements import tasks as placement_tasks
from placements.execution import execute_plan, kubernetes_name, prepare_steps
from placements.models import Customer, Deployment, ExecutionStep, PlacementPlan, StepPhase, StepStatus
from tasks.models import TaskRun, TaskRunStatus
from tasks.tasks import plan_placements
from tests.placements.execution_factories import H100_LABEL, apply_plan, poll, start_site

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_calls(settings):
    settings.MCM_CLUSTER_CALLS_PER_SECOND = 1000
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 5


@pytest.fixture
def sites(fleet):
    nodes = [("h100-a", H100_LABEL, 8), ("h100-b", H100_LABEL, 8)]
    east = start_site(fleet.clusters["aws-use1-a"], nodes)
    west = start_site(fleet.clusters["aws-euw1-a"], nodes)
    yield SimpleNamespace(east=east, west=west)
    east.emulated.stop()
    west.emulated.stop()


def execute_until_done(plan: PlacementPlan, timeout_s: float = 5.0):
    return poll(lambda: execute_plan(plan.pk).done and execute_plan(plan.pk), timeout_s)


def steps_of(plan: PlacementPlan) -> dict[str, ExecutionStep]:
    return {step.cluster.name: step for step in ExecutionStep.objects.filter(plan=plan).select_related("cluster")}


def test_execution_converges_on_every_cluster(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])

    report = execute_until_done(plan)

    assert report.done
    assert sites.east.ready(acme_chat) == 2
    assert sites.west.ready(acme_chat) == 1
    assert {step.status for step in steps_of(plan).values()} == {StepStatus.EXECUTED}
    assert AuditEvent.objects.filter(action="execution_step.executed").count() == 2


def test_second_execution_changes_nothing(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, sites.west.cluster, 1)])
    execute_until_done(plan)
    adapter = sites.east.adapter()
    version_before = adapter.apps.read_namespaced_deployment(kubernetes_name(acme_chat), "mcm").metadata
    steps_before = list(ExecutionStep.objects.filter(plan=plan).values())
    events_before = AuditEvent.objects.count()

    report = execute_plan(plan.pk)

    version_after = adapter.apps.read_namespaced_deployment(kubernetes_name(acme_chat), "mcm").metadata
    adapter.close()
    assert report.applied == 0
    assert version_after.resource_version == version_before.resource_version
    assert list(ExecutionStep.objects.filter(plan=plan).values()) == steps_before
    assert AuditEvent.objects.count() == events_before


def test_move_keeps_old_replicas_until_new_ones_ready(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 3)])
    execute_until_done(first)
    sites.west.emulated.ready_delay_s = 0.3
    second = apply_plan([(acme_chat, sites.west.cluster, 3)])

    report = execute_plan(second.pk)

    assert report.blocked == 1
    assert sites.west.replicas(acme_chat) == 3
    assert sites.west.ready(acme_chat) < 3
    assert sites.east.ready(acme_chat) == 3
    assert steps_of(second)["aws-use1-a"].phase == StepPhase.SCALE_DOWN
    assert execute_until_done(second).done
    assert sites.east.observed(acme_chat) is None
    assert sites.west.ready(acme_chat) == 3


def test_scale_down_after_replacements_executed(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 3)])
    execute_until_done(first)
    sites.west.emulated.ready_delay_s = 0.3
    second = apply_plan([(acme_chat, sites.west.cluster, 3)])
    assert execute_plan(second.pk).blocked == 1
    # A pass that finds the new replicas ready also removes the old ones. Failing the old
    # cluster's API for one pass makes the old step wait a pass longer, as a failed attempt would.
    poll(lambda: sites.west.ready(acme_chat) == 3)
    sites.east.emulated.set_errors(1.0, status=503)
    execute_plan(second.pk)
    assert steps_of(second)["aws-euw1-a"].status == StepStatus.EXECUTED
    sites.east.emulated.set_errors(0.0)

    # Only the old cluster has a pending step now; the gate must still read the new cluster.
    report = execute_plan(second.pk)

    assert report.blocked == 0
    assert sites.east.observed(acme_chat) is None


def test_preempted_lower_tier_leaves_first(sites, acme_chat, globex):
    batch = Deployment.objects.create(
        customer=globex, name="batch", sku=acme_chat.sku, gpus_per_replica=2, desired_replicas=8, max_replicas=8
    )
    first = apply_plan([(batch, sites.east.cluster, 8)])  # all 16 GPUs of east
    execute_until_done(first)
    # The premium deployment takes east; the standard one moves west, where it never becomes ready.
    sites.west.emulated.set_never_ready(True)
    second = apply_plan([(acme_chat, sites.east.cluster, 8), (batch, sites.west.cluster, 8)])

    poll(lambda: execute_plan(second.pk) and sites.east.ready(acme_chat) == 8)

    assert sites.east.observed(batch) is None
    removal = ExecutionStep.objects.get(plan=second, deployment=batch, cluster=sites.east.cluster)
    assert removal.status == StepStatus.EXECUTED


def test_same_tier_removal_still_waits_for_replacements(sites, acme_chat):
    other = Deployment.objects.create(
        customer=acme_chat.customer,
        name="other",
        sku=acme_chat.sku,
        gpus_per_replica=2,
        desired_replicas=8,
        max_replicas=8,
    )
    first = apply_plan([(other, sites.east.cluster, 8)])
    execute_until_done(first)
    sites.west.emulated.set_never_ready(True)
    second = apply_plan([(acme_chat, sites.east.cluster, 8), (other, sites.west.cluster, 8)])

    for _ in range(3):
        execute_plan(second.pk)

    assert sites.east.ready(other) == 8


def test_execute_plan_task_in_process_makes_one_pass(monkeypatch, sites, acme_chat):
    enqueued = []
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", lambda *args, **kwargs: enqueued.append(args))
    sites.west.emulated.set_never_ready(True)
    plan = apply_plan([(acme_chat, sites.west.cluster, 2)])
    conf = placement_tasks.execute_plan.app.conf
    eager = conf.task_always_eager
    conf.task_always_eager = True  # as in embedded mode
    try:
        report = placement_tasks.execute_plan.apply(args=(plan.pk,)).get()
    finally:
        conf.task_always_eager = eager

    assert report["waiting"] == 1
    assert enqueued == []


def test_move_waits_while_new_replicas_never_ready(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    execute_until_done(first)
    sites.west.emulated.set_never_ready(True)
    second = apply_plan([(acme_chat, sites.west.cluster, 2)])

    for _ in range(3):
        execute_plan(second.pk)

    assert sites.east.ready(acme_chat) == 2
    assert steps_of(second)["aws-use1-a"].status == StepStatus.PENDING


def test_retryable_error_retried_after_fault_clears(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])
    sites.east.emulated.set_errors(1.0, status=503)

    failing = execute_plan(plan.pk)
    step = steps_of(plan)["aws-use1-a"]
    sites.east.emulated.set_errors(0)
    report = execute_until_done(plan)

    assert failing.retryable_error is not None
    assert step.status == StepStatus.PENDING
    assert step.attempts == 1
    assert "503" in step.last_error
    assert report.done
    assert steps_of(plan)["aws-use1-a"].status == StepStatus.EXECUTED
    assert sites.east.ready(acme_chat) == 2


def test_retryable_error_fails_step_after_max_attempts(settings, sites, acme_chat):
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 2
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])
    sites.east.emulated.set_errors(1.0, status=503)

    execute_plan(plan.pk)
    report = execute_plan(plan.pk)

    step = steps_of(plan)["aws-use1-a"]
    assert report.failed == 1
    assert step.status == StepStatus.FAILED
    assert step.attempts == 2
    assert AuditEvent.objects.filter(action="execution_step.failed", subject_id=str(step.pk)).exists()


def test_wrong_token_fails_step_with_audit_event(sites, acme_chat):
    from fleet.clusters import register_cluster

    register_cluster(
        actor="test",
        cluster=sites.east.cluster,
        api_endpoint=sites.east.emulated.url,
        credentials={"token": "wrong-token"},
    )
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])

    report = execute_plan(plan.pk)

    step = steps_of(plan)["aws-use1-a"]
    event = AuditEvent.objects.get(action="execution_step.failed")
    assert report.retryable_error is None
    assert step.status == StepStatus.FAILED
    assert step.attempts == 1
    assert "401" in step.last_error
    assert "wrong-token" not in step.last_error
    assert event.subject_id == str(step.pk)
    assert event.actor_label == "executor"


def test_prepare_adds_removal_for_previous_plan_clusters(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    second = apply_plan([(acme_chat, sites.west.cluster, 2)])
    first.refresh_from_db()

    prepare_steps(second)

    steps = steps_of(second)
    assert steps["aws-use1-a"].desired_replicas == 0
    assert steps["aws-use1-a"].phase == StepPhase.SCALE_DOWN
    assert steps["aws-euw1-a"].phase == StepPhase.SCALE_UP


def test_prepare_supersedes_older_pending_steps(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    prepare_steps(first)
    second = apply_plan([(acme_chat, sites.east.cluster, 3)])

    prepare_steps(second)

    assert steps_of(first)["aws-use1-a"].status == StepStatus.SUPERSEDED
    assert steps_of(second)["aws-use1-a"].status == StepStatus.PENDING


def test_prepare_skips_superseded_plan(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    apply_plan([(acme_chat, sites.east.cluster, 3)])
    first.refresh_from_db()

    created = prepare_steps(first)

    assert created == 0
    assert not ExecutionStep.objects.filter(plan=first).exists()


def test_prepare_skips_clusters_without_endpoint(sites, acme_chat, fleet):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2), (acme_chat, fleet.clusters["gcp-usw4-a"], 1)])

    prepare_steps(plan)

    assert set(steps_of(plan)) == {"aws-use1-a"}


def test_prepare_is_idempotent(sites, acme_chat):
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])

    first = prepare_steps(plan)
    second = prepare_steps(plan)

    assert first == 1
    assert second == 0
    assert ExecutionStep.objects.filter(plan=plan).count() == 1


def test_kubernetes_name_is_dns_label(acme_chat):
    acme_chat.name = "Chat_" + "x" * 80

    name = kubernetes_name(acme_chat)

    assert len(name) <= 63
    assert name == name.lower()
    assert name.endswith(f"-{acme_chat.pk}")
    assert "_" not in name
    assert kubernetes_name(acme_chat) == name


def test_kubernetes_name_differs_for_ambiguous_slugs():
    first = Deployment(pk=1, customer=Customer(name="a-b"), name="c")
    second = Deployment(pk=2, customer=Customer(name="a"), name="b-c")

    assert kubernetes_name(first) == "a-b-c-1"
    assert kubernetes_name(second) == "a-b-c-2"


def test_rate_limiter_spaces_calls():
    clock = SimpleNamespace(now=0.0)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    limiter = CallRateLimiter(4, clock=lambda: clock.now, sleep=sleep)
    for _ in range(3):
        limiter.wait()

    assert waits == [0.25, 0.25]


def test_execute_plan_task_records_run(monkeypatch, sites, acme_chat):
    enqueued = []
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", lambda *args, **kwargs: enqueued.append(args))
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])

    placement_tasks.execute_plan.apply(args=(plan.pk,))

    run = TaskRun.objects.get(task_name="execute_plan")
    assert run.status == TaskRunStatus.SUCCEEDED
    assert run.summary["applied"] == 1
    assert enqueued == [((plan.pk,),)]


def test_plan_placements_enqueues_execution_on_commit(monkeypatch, django_capture_on_commit_callbacks, acme_chat):
    enqueued = []
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", lambda *args, **kwargs: enqueued.append(args))

    with django_capture_on_commit_callbacks(execute=True):
        version = plan_placements.apply().get()

    plan = PlacementPlan.objects.get(version=version)
    assert enqueued == [((plan.pk,),)]


# Beat schedules.


def schedules() -> dict[str, tuple[str, int, bool]]:
    from django_celery_beat.models import PeriodicTask

    return {task.name: (task.task, task.interval.every, task.enabled) for task in PeriodicTask.objects.all()}


def test_setup_schedules_creates_periodic_tasks():
    call_command("setup_schedules", stdout=StringIO())

    assert schedules() == {
        "collect telemetry": ("placements.collect_telemetry", 10, True),
        "reconcile clusters": ("placements.reconcile_clusters", 15, True),
        "evaluate health": ("fleet.evaluate_health", 5, True),
        "expire failover requests": ("placements.expire_failover_requests", 15, True),
        "plan placements": ("tasks.plan_placements", 300, True),
        "apply pending events": ("fleet.apply_pending_events", 30, True),
        "autoscale": ("placements.autoscale", 15, True),
        "prune traffic": ("placements.prune_traffic", 3600, True),
    }


def test_setup_schedules_twice_changes_nothing():
    call_command("setup_schedules", stdout=StringIO())
    output = StringIO()

    call_command("setup_schedules", stdout=output)

    assert output.getvalue().count("(unchanged)") == 8
    assert len(schedules()) == 8


def test_setup_schedules_updates_interval_and_keeps_enabled():
    from django_celery_beat.models import PeriodicTask

    call_command("setup_schedules", stdout=StringIO())
    PeriodicTask.objects.filter(name="reconcile clusters").update(enabled=False)

    call_command("setup_schedules", "--reconcile-every", "30", stdout=StringIO())

    assert schedules()["reconcile clusters"] == ("placements.reconcile_clusters", 30, False)


def test_setup_schedules_rejects_zero_interval():
    with pytest.raises(CommandError):
        call_command("setup_schedules", "--plan-every", "0", stdout=StringIO())


def test_execute_plan_task_retries_retryable_error(settings, monkeypatch, sites, acme_chat):
    settings.MCM_EXECUTION_MAX_ATTEMPTS = 2
    monkeypatch.setattr(placement_tasks.execute_plan, "apply_async", lambda *args, **kwargs: None)
    plan = apply_plan([(acme_chat, sites.east.cluster, 2)])
    sites.east.emulated.set_errors(1.0, status=503)

    placement_tasks.execute_plan.apply(args=(plan.pk,))

    runs = TaskRun.objects.filter(task_name="execute_plan").order_by("started_at")
    assert [run.status for run in runs] == [TaskRunStatus.FAILED, TaskRunStatus.SUCCEEDED]
    assert "503" in runs[0].error
    assert steps_of(plan)["aws-use1-a"].status == StepStatus.FAILED


def test_unchanged_step_executes_without_audit_event(sites, acme_chat):
    first = apply_plan([(acme_chat, sites.east.cluster, 2)])
    execute_until_done(first)
    events_before = AuditEvent.objects.filter(action="execution_step.executed").count()
    second = apply_plan([(acme_chat, sites.east.cluster, 2)])

    report = execute_plan(second.pk)

    assert report.executed == 1
    assert report.applied == 0
    assert AuditEvent.objects.filter(action="execution_step.executed").count() == events_before
