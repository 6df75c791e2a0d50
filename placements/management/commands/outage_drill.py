"""Take the emulated clusters of a provider, region or cluster down (and back up) and print MCM's timeline."""

import logging
import os
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from fleet.models import Cluster
from placements import demo_loop
from placements.drill import SCOPES, DrillError, resolve_scope, run_drills, start_converged_fleet
from placements.services import current_plan


class Command(BaseCommand):
    help = (
        "Outage drill: start one emulated Kubernetes cluster per fleet cluster, converge the applied plan, "
        "make the clusters of a provider, region or cluster unreachable, and print the timeline of MCM's "
        "failover: first missed heartbeat, declared down, plan made, replicas ready elsewhere, per tier. "
        "With no applied plan it first seeds the demo fleet and deployments as mcm_demo does."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--provider", metavar="NAME", help="Take down every cluster of this provider.")
        target.add_argument(
            "--region",
            metavar="CODE",
            help="Take down every cluster of this region: its code, or provider/code when several providers use it.",
        )
        target.add_argument("--cluster", metavar="NAME", help="Take down this one cluster.")
        parser.add_argument(
            "--recover",
            action="store_true",
            help="After the outage, bring the clusters back and print the failback timeline too.",
        )
        parser.add_argument(
            "--heartbeat-s", type=float, default=10.0, help="Seconds between telemetry reads (default 10)."
        )
        parser.add_argument(
            "--timeout-s",
            type=float,
            default=None,
            help="Seconds each timeline may take before the drill gives up (default 300, plus the failback "
            "delay for the recovery).",
        )
        parser.add_argument(
            "--pending-timeout-s",
            type=float,
            default=30.0,
            help="Seconds a replica may stay pending before it is placed elsewhere, for the drill only (default 30, "
            "because emulated replicas start in seconds; MCM_EXECUTION_TIMEOUT_S is for real pods).",
        )
        parser.add_argument(
            "--failback-after-s",
            type=float,
            default=None,
            help="With --recover: seconds a recovered cluster must stay healthy before replicas return, for this "
            "drill only (default MCM_FAILBACK_AFTER_S).",
        )
        parser.add_argument(
            "--catalog",
            nargs="+",
            type=Path,
            metavar="PATH",
            help="Without an applied plan: seed from these catalogs, as mcm_demo --catalog does "
            "(default: the built-in fleet).",
        )
        parser.add_argument(
            "--deployments", type=int, default=240, help="Without an applied plan: demo deployments to create."
        )
        parser.add_argument(
            "--ready-delay", type=float, default=2.0, help="Seconds an emulated replica takes to become ready."
        )
        parser.add_argument(
            "--converge-timeout",
            type=float,
            default=600.0,
            help="Seconds to wait for the clusters to run the applied plan before the drill.",
        )

    def handle(
        self,
        *args,
        provider,
        region,
        cluster,
        recover,
        heartbeat_s,
        timeout_s,
        failback_after_s,
        pending_timeout_s,
        catalog,
        deployments,
        ready_delay,
        converge_timeout,
        **options,
    ):
        scope, target = next(
            (scope, value) for scope, value in zip(SCOPES, (provider, region, cluster), strict=True) if value
        )
        if heartbeat_s <= 0:
            raise CommandError(f"--heartbeat-s {heartbeat_s} is invalid: use a positive number of seconds")
        if timeout_s is not None and timeout_s <= 0:
            raise CommandError(f"--timeout-s {timeout_s} is invalid: use a positive number of seconds")
        if pending_timeout_s <= 0:
            raise CommandError(f"--pending-timeout-s {pending_timeout_s} is invalid: use a positive number of seconds")
        if failback_after_s is not None and failback_after_s < 0:
            raise CommandError(f"--failback-after-s {failback_after_s} is invalid: use 0 or more seconds")
        if failback_after_s is not None and not recover:
            raise CommandError("--failback-after-s needs --recover")

        if options["verbosity"] < 2 and "LOG_LEVEL" not in os.environ:
            # The timeline is the output; per-cluster INFO lines would bury it (-v 2 shows them).
            logging.getLogger().setLevel(logging.WARNING)
        call_command("migrate", verbosity=0, interactive=False)
        # Check the name before the long seeding when there is a fleet to check it against.
        if Cluster.objects.exists():
            self.check_target(scope, target)
        if current_plan() is None:
            self.stdout.write("No applied plan: seeding the demo fleet and deployments first.")
            seed_options = {"headless": True, "no_clusters": True, "deployments": deployments}
            if catalog:
                seed_options["catalog"] = catalog
            call_command("mcm_demo", stdout=self.stdout, **seed_options)
        self.check_target(scope, target)

        database = "embedded SQLite" if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") else "PostgreSQL"
        self.stdout.write(f"Database: {database}")
        emulated = []
        try:
            emulated = self.start_fleet(ready_delay, converge_timeout)
            self.stdout.write("")
            run_drills(
                scope=scope,
                target=target,
                emulated=emulated,
                recover=recover,
                heartbeat_s=heartbeat_s,
                timeout_s=timeout_s,
                failback_after_s=failback_after_s,
                pending_timeout_s=pending_timeout_s,
                write=self.stdout.write,
            )
        except DrillError as error:
            raise CommandError(str(error)) from error
        finally:
            if emulated:
                self.stdout.write(f"Stopping {len(emulated)} emulated clusters...")
                demo_loop.stop_emulated_fleet(emulated)

    def check_target(self, scope: str, target: str) -> None:
        try:
            resolve_scope(scope, target)
        except DrillError as error:
            raise CommandError(f"--{scope} {target} is invalid: {error}") from error

    def start_fleet(self, ready_delay: float, converge_timeout: float) -> list:
        """Start the emulated fleet and converge the applied plan; return the clusters."""
        try:
            return start_converged_fleet(
                ready_delay_s=ready_delay, converge_timeout_s=converge_timeout, progress=self.stdout.write
            )
        except DrillError as error:
            raise CommandError(f"{error}: the drill needs a converged fleet") from error
