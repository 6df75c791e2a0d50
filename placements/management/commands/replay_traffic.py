"""Replay a request-rate trace against emulated clusters and report what the autoscaler made of it."""

import json
import logging
import os
import random
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from compliance.services import record_event
from placements import demo_loop
from placements.drill import DrillError, start_converged_fleet
from placements.models import Assignment, AutoscalingPolicy, Deployment
from placements.replay import ReplayError, build_targets, format_trace_time, run_replay
from placements.services import current_plan
from placements.traces import LANGUAGE_MODELS, SERVEGEN_RATES, Trace, TraceError, parse_duration, read_trace

ACTOR = "traffic replay"
# Deployments replayed when none has an enabled policy and --deployments is not given.
DEFAULT_DEPLOYMENTS = 3


class Command(BaseCommand):
    help = (
        "Drive deployments with a request-rate trace (default: the ServeGen rates under MCM_DATA_DIR), compressed "
        "in time, against one emulated Kubernetes cluster per fleet cluster, with MCM's loop and autoscaler running "
        "in this process; then report per deployment the demand offered and served within capacity, replica-hours "
        "and scaling actions. With no applied plan it first seeds the demo fleet and deployments as mcm_demo does."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--trace",
            type=Path,
            help="Trace CSV file with the columns category, model, window_start_s, total_rate_rps "
            f"(default: MCM_DATA_DIR/{SERVEGEN_RATES}).",
        )
        parser.add_argument(
            "--model",
            help=f"Model of the trace every deployment follows (default: {', '.join(LANGUAGE_MODELS)} in turn).",
        )
        parser.add_argument(
            "--deployments",
            nargs="+",
            metavar="NAME_OR_ID",
            help="Deployments to replay: ids, names, or customer/name. Default: every deployment with an enabled "
            f"autoscaling policy, else {DEFAULT_DEPLOYMENTS} placed deployments picked with --seed. A deployment "
            "without a policy gets one with the default values for the run; it is removed afterwards.",
        )
        parser.add_argument(
            "--start", default="0", help="Trace offset to start at: seconds, or e.g. 30m, 6h, 2d (default %(default)s)."
        )
        parser.add_argument(
            "--duration", default="1d", help="Trace time to replay: seconds, or e.g. 6h, 1d (default %(default)s)."
        )
        parser.add_argument(
            "--factor",
            type=float,
            default=360.0,
            help="Trace seconds per wall second (default 360: one trace day in 4 minutes).",
        )
        parser.add_argument(
            "--rate-scale",
            default="auto",
            help="Multiply the trace's requests per second by this number; 'auto' (default) scales each "
            "deployment so that the trace's peak needs 80 %% of its max replicas.",
        )
        parser.add_argument(
            "--start-delay-s",
            type=float,
            default=120.0,
            help="Seconds of trace time a new replica takes to become ready (default 120, a GPU model server's cold "
            "start); the emulated clusters get it divided by --factor.",
        )
        parser.add_argument(
            "--tick-s", type=float, default=1.0, help="Wall seconds between ticks of the loop (default %(default)g)."
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=7,
            help="Seed for the default deployments and demo seeding (default %(default)s).",
        )
        parser.add_argument("--json", type=Path, metavar="FILE", help="Also write the report to this JSON file.")
        parser.add_argument(
            "--converge-timeout",
            type=float,
            default=600.0,
            help="Seconds to wait for the clusters to run the applied plan before the replay (default %(default)g).",
        )

    def handle(self, *args, **options):
        if options["verbosity"] < 2 and "LOG_LEVEL" not in os.environ:
            # The report is the output; per-cluster INFO lines would bury it (-v 2 shows them).
            logging.getLogger().setLevel(logging.WARNING)
        values = self.check_options(options)
        call_command("migrate", verbosity=0, interactive=False)
        if current_plan() is None:
            self.stdout.write("No applied plan: seeding the demo fleet and deployments first.")
            call_command("mcm_demo", stdout=self.stdout, headless=True, no_clusters=True, seed=options["seed"])
        deployments = self.pick_deployments(options["deployments"], options["seed"])
        models, traces = values["models"], values["traces"]
        desired_before = {deployment.pk: deployment.desired_replicas for deployment in deployments}

        with temporary_policies(deployments) as added:
            added_ids = {deployment.pk for deployment in added}
            if added:
                names = ", ".join(str(deployment) for deployment in added)
                self.stdout.write(f"Autoscaling policies with default values added for the run: {names}")
            deployments = list(
                Deployment.objects.filter(pk__in=[d.pk for d in deployments])
                .select_related("autoscaling", "customer")
                .prefetch_related("demand_origins")
                .order_by("pk")
            )
            try:
                targets = build_targets(deployments, traces, models, values["rate_scale"])
            except ReplayError as error:
                raise CommandError(str(error)) from error
            report = self.replay(targets, values, options)

        self.stdout.write("")
        self.stdout.write(restoration_text(desired_before, added_ids))
        self.stdout.write("")
        self.stdout.write(report.format())
        if options["json"]:
            options["json"].write_text(json.dumps(report.as_dict(), indent=2) + "\n")
            self.stdout.write(f"Report written to {options['json']}")

    def check_options(self, options) -> dict:
        values = {}
        for option in ("start", "duration"):
            try:
                values[option] = parse_duration(options[option])
            except ValueError as error:
                raise CommandError(f"--{option} {options[option]} is invalid: {error}") from error
        if values["duration"] <= 0:
            raise CommandError(f"--duration {options['duration']} is invalid: use a positive duration")
        for option in ("factor", "tick_s"):
            if not options[option] > 0:
                raise CommandError(f"--{option.replace('_', '-')} {options[option]} is invalid: use a positive number")
        if not options["start_delay_s"] >= 0:
            raise CommandError(f"--start-delay-s {options['start_delay_s']} is invalid: use 0 or more seconds")
        rate_scale = options["rate_scale"]
        values["rate_scale"] = None
        if rate_scale != "auto":
            try:
                values["rate_scale"] = float(rate_scale)
            except ValueError:
                values["rate_scale"] = -1.0
            if not values["rate_scale"] > 0:
                raise CommandError(f"--rate-scale {rate_scale} is invalid: use a positive number or 'auto'")
        values["trace"] = options["trace"] or settings.MCM_DATA_DIR / SERVEGEN_RATES
        if not values["trace"].is_file():
            raise CommandError(
                f"--trace {values['trace']} is invalid: no such file; set MCM_DATA_DIR or give a trace file"
            )
        values["models"], values["traces"] = self.read_traces(values, options["model"])
        return values

    def read_traces(self, values: dict, model: str | None) -> tuple[list[str], dict[str, Trace]]:
        """Read the trace file; check the models and that their traces cover --start and --duration."""
        try:
            traces = read_trace(values["trace"])
        except TraceError as error:
            raise CommandError(f"--trace {values['trace']} is invalid: {error}") from error
        models = [model] if model else list(LANGUAGE_MODELS)
        for name in models:
            if name not in traces:
                option = f"--model {name}" if model else f"--trace {values['trace']}"
                raise CommandError(
                    f"{option} is invalid: model {name!r} is not in the trace file; it has {', '.join(sorted(traces))}"
                )
            end_s = values["start"] + values["duration"]
            if end_s > traces[name].duration_s:
                raise CommandError(
                    f"--start {values['start']:g} s with --duration {values['duration']:g} s is invalid: it ends "
                    f"at {end_s:g} s, after the end of model {name}'s trace at {traces[name].duration_s} s"
                )
        return models, {name: traces[name] for name in models}

    def pick_deployments(self, specs: list[str] | None, seed: int) -> list[Deployment]:
        if specs:
            return [find_deployment(spec) for spec in specs]
        with_policy = list(Deployment.objects.filter(autoscaling__enabled=True).order_by("pk"))
        if with_policy:
            return with_policy
        plan = current_plan()
        placed = (
            Assignment.objects.filter(plan=plan).values_list("deployment_id", flat=True).distinct().order_by()
            if plan
            else []
        )
        candidates = sorted(set(placed))
        if not candidates:
            raise CommandError("no deployment has placed replicas to replay; plan the fleet first")
        picked = random.Random(seed).sample(candidates, min(DEFAULT_DEPLOYMENTS, len(candidates)))
        return list(Deployment.objects.filter(pk__in=picked).order_by("pk"))

    def replay(self, targets, values: dict, options: dict):
        factor = options["factor"]
        for target in targets:
            self.stdout.write(
                f"{target.deployment}: follows {target.trace.model} x {target.rate_scale:.4g} "
                f"(peak {target.trace.peak_rps * target.rate_scale:.1f} req/s), "
                f"{target.capacity_per_replica_rps:g} req/s per replica, "
                f"replicas {target.deployment.min_replicas} to {target.deployment.max_replicas}"
            )
        emulated = self.start_fleet(options["start_delay_s"] / factor, options["converge_timeout"])
        try:
            wall = values["duration"] / factor
            self.stdout.write(
                f"\nReplaying trace {format_trace_time(values['start'])} to "
                f"{format_trace_time(values['start'] + values['duration'])} at {factor:g}x: about {wall:.0f} s"
            )
            report = run_replay(
                targets,
                emulated={cluster.name: cluster for cluster in emulated},
                start_s=values["start"],
                duration_s=values["duration"],
                factor=factor,
                start_delay_s=options["start_delay_s"],
                tick_s=options["tick_s"],
                progress=self.stdout.write,
            )
        except (ReplayError, TraceError) as error:
            raise CommandError(str(error)) from error
        finally:
            self.stdout.write(f"Stopping {len(emulated)} emulated clusters...")
            demo_loop.stop_emulated_fleet(emulated)
        for deployment_id, used in report.policy_overrides.items():
            self.stdout.write(
                f"  deployment {deployment_id}: policy window {used['window_s']} s and scale-down delay "
                f"{used['scale_down_delay_s']} s of wall time during the run "
                f"({used['window_s'] * factor:g} and {used['scale_down_delay_s'] * factor:g} s of trace time)"
            )
        self.stdout.write(
            f"{report.ticks} ticks in {report.wall_seconds:.1f} s "
            f"({report.duration_s / max(report.ticks - 1, 1):.0f} trace s per tick, "
            f"the longest tick {report.max_tick_seconds:.1f} s), {report.plans} plans"
        )
        return report

    def start_fleet(self, ready_delay_s: float, converge_timeout: float) -> list:
        """Start the emulated fleet and converge the applied plan; return the clusters."""
        self.stdout.write("")
        try:
            return start_converged_fleet(
                ready_delay_s=ready_delay_s,
                converge_timeout_s=converge_timeout,
                progress=self.stdout.write,
                verbose=False,
            )
        except DrillError as error:
            raise CommandError(str(error)) from error


def find_deployment(spec: str) -> Deployment:
    """Return the deployment an id, a name or ``customer/name`` names; raise ``CommandError`` naming the value."""
    if spec.isdigit():
        query = Q(pk=int(spec))
    elif "/" in spec:
        customer, _, name = spec.partition("/")
        query = Q(customer__name=customer, name=name)
    else:
        query = Q(name=spec)
    found = list(Deployment.objects.filter(query)[:2])
    if not found:
        raise CommandError(f"--deployments {spec} is invalid: no such deployment")
    if len(found) > 1:
        raise CommandError(f"--deployments {spec} is invalid: several customers have it; use customer/name or the id")
    return found[0]


def restoration_text(desired_before: dict[int, int], added_ids: set[int]) -> str:
    """Say per deployment what the run left behind: what was restored and what was not."""
    lines = ["After the run:"]
    deployments = Deployment.objects.filter(pk__in=desired_before).select_related("customer", "autoscaling")
    for deployment in deployments.order_by("pk"):
        before = desired_before[deployment.pk]
        if deployment.pk in added_ids:
            lines.append(
                f"  {deployment}: the policy added for the run is removed; desired replicas restored to {before}."
            )
            continue
        text = f"  {deployment}: its policy's window_s and scale_down_delay_s are restored"
        if deployment.desired_replicas == before:
            lines.append(f"{text}; desired replicas {before}, as before the run.")
        else:
            lines.append(
                f"{text}. Desired replicas are {deployment.desired_replicas}, not restored to {before}: the "
                "autoscaler sets them while its policy is enabled, and it keeps the run's decisions."
            )
    return "\n".join(lines)


@contextmanager
def temporary_policies(deployments: list[Deployment]):
    """Give deployments without a policy one with the default values; remove it and restore replicas afterwards."""
    added = [
        deployment for deployment in deployments if not AutoscalingPolicy.objects.filter(deployment=deployment).exists()
    ]
    desired = {deployment.pk: deployment.desired_replicas for deployment in added}
    for deployment in added:
        AutoscalingPolicy.objects.create(deployment=deployment)
        record_event(
            actor=ACTOR, action="autoscaling.created", subject=deployment, reason="policy for a traffic replay"
        )
    try:
        yield added
    finally:
        for deployment in added:
            AutoscalingPolicy.objects.filter(deployment=deployment).delete()
            Deployment.objects.filter(pk=deployment.pk).update(desired_replicas=desired[deployment.pk])
            record_event(
                actor=ACTOR,
                action="autoscaling.deleted",
                subject=deployment,
                reason="traffic replay finished; desired replicas restored",
                after={"desired_replicas": desired[deployment.pk]},
            )
