"""Planning on the database: inputs read from the models, plans stored, applied and audited."""

import pytest
from django.core.management import CommandError, call_command

from compliance.models import AuditEvent, PlacementLock
from placements.models import Assignment, DeploymentOutcome, PlacementPlan, PlanStatus, PlanTrigger
from placements.planning import Exclusions, build_problem, current_plan, diff_plans, digest_problem, run_plan
from placements.scheduler.problem import SchedulerOptions

FAST = SchedulerOptions(time_limit_s=10, gap_target=0.0)

pytestmark = pytest.mark.django_db


def placed_on(plan, deployment) -> dict[str, int]:
    rows = Assignment.objects.filter(plan=plan, deployment=deployment).select_related("cluster")
    return {row.cluster.name: row.replicas for row in rows}


def test_apply_stores_assignments_and_outcomes(acme_chat, globex_search):
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    assert plan.status == PlanStatus.APPLIED
    assert plan.version == 1
    assert plan.applied_at is not None
    assert sum(placed_on(plan, acme_chat).values()) == 3
    assert DeploymentOutcome.objects.filter(plan=plan).count() == 2
    assert plan.summary["requested_replicas"] == 5


def test_apply_respects_free_capacity_per_cluster_and_sku(acme_chat, globex_search, fleet):
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    for capacity in fleet.clusters["aws-use1-a"].capacities.all():
        used = sum(
            row.replicas * row.deployment.gpus_per_replica
            for row in Assignment.objects.filter(plan=plan, cluster=capacity.cluster, sku=capacity.sku)
        )
        assert used <= capacity.free_gpus


def test_apply_never_uses_cordoned_cluster(acme_chat, globex_search):
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    assert not Assignment.objects.filter(plan=plan, cluster__name="aws-use1-b").exists()


def test_apply_spreads_multi_replica_deployment(acme_chat):
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    assert len(placed_on(plan, acme_chat)) >= 2


def test_apply_writes_audit_event(acme_chat):
    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    event = AuditEvent.objects.get(action="plan.applied")
    assert event.subject_id == str(plan.pk)
    assert event.actor_label == "test"
    assert event.after["version"] == plan.version


def test_second_apply_supersedes_and_keeps_placement(acme_chat, globex_search):
    first = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)
    second = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    first.refresh_from_db()
    assert first.status == PlanStatus.SUPERSEDED
    assert current_plan() == second
    assert diff_plans(first, second).added == 0
    assert diff_plans(first, second).removed == 0


def test_dry_run_leaves_current_plan(acme_chat, globex_search):
    applied = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)
    dry = run_plan(
        actor="test",
        trigger=PlanTrigger.MANUAL,
        dry_run=True,
        exclusions=Exclusions(providers=frozenset({"aws"})),
        options=FAST,
    )

    assert dry.status == PlanStatus.DRY_RUN
    assert current_plan() == applied
    assert not Assignment.objects.filter(plan=dry, cluster__region__provider__name="aws").exists()
    assert AuditEvent.objects.filter(action="plan.dry_run", subject_id=str(dry.pk)).exists()


def test_exclusions_rejected_outside_dry_run(acme_chat):
    with pytest.raises(ValueError, match="only for dry runs"):
        run_plan(
            actor="test",
            trigger=PlanTrigger.MANUAL,
            exclusions=Exclusions(regions=frozenset({"us-east-1"})),
            options=FAST,
        )

    assert PlacementPlan.objects.count() == 0


def test_customer_lock_is_never_broken(acme, acme_chat, fleet):
    lock = PlacementLock.objects.create(customer=acme, allowed_jurisdictions=["eu"], reason="EU data residency")

    plan = run_plan(actor="test", trigger=PlanTrigger.MANUAL, options=FAST)

    # One EU cluster cannot hold a spread deployment, so nothing is placed rather than breaking the lock.
    assert placed_on(plan, acme_chat) == {}
    outcome = DeploymentOutcome.objects.get(plan=plan, deployment=acme_chat)
    assert outcome.unmet_replicas == 3
    assert f"lock {lock.pk}" in str(outcome.explanation)


def test_digest_stable_for_same_state(acme_chat, globex_search):
    assert digest_problem(build_problem()) == digest_problem(build_problem())


def test_plan_command_prints_report(acme_chat, globex_search, capsys):
    call_command("plan", "--time-limit", "10")

    output = capsys.readouterr().out
    assert "Replicas by provider" in output
    assert "Unmet demand by tier" in output
    assert "Change against the previous plan" in output


def test_plan_command_rejects_without_outside_dry_run(acme_chat):
    with pytest.raises(CommandError, match="--without needs --dry-run"):
        call_command("plan", "--without", "provider=aws")


def test_plan_command_rejects_malformed_without(acme_chat):
    with pytest.raises(CommandError, match="provider=NAME or region=CODE"):
        call_command("plan", "--dry-run", "--without", "aws")


def test_plan_command_rejects_unknown_provider(acme_chat):
    with pytest.raises(CommandError, match="provider 'nosuch' not found"):
        call_command("plan", "--dry-run", "--without", "provider=nosuch")

    assert PlacementPlan.objects.count() == 0


def test_plan_command_rejects_unknown_region(acme_chat):
    with pytest.raises(CommandError, match="region 'xx-nowhere-9' not found"):
        call_command("plan", "--dry-run", "--without", "region=xx-nowhere-9")

    assert PlacementPlan.objects.count() == 0


def test_plan_command_accepts_provider_and_code_region(acme_chat, capsys):
    call_command("plan", "--dry-run", "--without", "region=aws/us-east-1", "--time-limit", "10")

    assert "treated as down" in capsys.readouterr().out
