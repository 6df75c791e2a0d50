import secrets
import time
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from compliance.roles import AUDITOR, COMPLIANCE, OPS, grant_role
from fleet.builder import build_fleet
from fleet.builtin import load_builtin_fleet
from fleet.catalog import import_catalog, import_shared_catalogs
from fleet.models import Cluster, Region
from fleet.regions import import_regions
from fleet.services import ImportReport
from placements import demo_loop
from placements.demo import provider_region_counts, seed_demo
from placements.drill import SCOPES, DrillError, resolve_scope, run_drills, settle_health
from placements.models import DeploymentOutcome, PlanTrigger
from placements.planning import current_plan, default_options, diff_plans, run_plan
from placements.report import format_plan, format_table

REGIONS_FILE = Path("cloud-regions-jasonwilbur") / "regions_flat.csv"

# (username, role or None for a superuser, what the user is for)
DEMO_USERS = [
    ("admin", None, "superuser"),
    ("operator", OPS, "ops role"),
    ("officer", COMPLIANCE, "compliance role"),
    ("auditor", AUDITOR, "auditor role"),
]


class Command(BaseCommand):
    help = (
        "Run MCM's main job end to end: load a fleet, create demo customers and deployments, plan, print the "
        "report, then serve the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--catalog",
            nargs="+",
            type=Path,
            metavar="PATH",
            help="SkyPilot-format catalog CSV files, or a data folder holding the catalog folders. "
            "Without it the built-in fleet is used.",
        )
        parser.add_argument("--headless", action="store_true", help="Print the report and exit; serve nothing.")
        parser.add_argument("--deployments", type=int, default=240, help="Demo deployments to create (default 240).")
        parser.add_argument("--seed", type=int, default=7, help="Seed for the fleet and the deployments.")
        parser.add_argument("--time-limit", type=float, default=60.0, help="Solver time limit in seconds.")
        parser.add_argument("--port", type=int, default=8000, help="Port of the admin server on 127.0.0.1.")
        parser.add_argument(
            "--reset", action="store_true", help="Empty the database first (every table, not only demo rows)."
        )
        parser.add_argument(
            "--no-clusters",
            action="store_true",
            help="Plan only: start no emulated clusters and execute nothing.",
        )
        parser.add_argument(
            "--ready-delay", type=float, default=2.0, help="Seconds an emulated replica takes to become ready."
        )
        parser.add_argument(
            "--converge-timeout",
            type=float,
            default=600.0,
            help="Seconds to wait for every cluster to run what the plan decided.",
        )
        drill = parser.add_mutually_exclusive_group()
        drill.add_argument(
            "--drill-provider",
            metavar="NAME",
            help="After convergence, run an outage drill of this provider (as manage.py outage_drill --provider).",
        )
        drill.add_argument(
            "--drill-region", metavar="CODE", help="After convergence, run an outage drill of this region."
        )
        drill.add_argument(
            "--drill-cluster", metavar="NAME", help="After convergence, run an outage drill of this cluster."
        )
        parser.add_argument(
            "--drill-recover",
            action="store_true",
            help="After the drill's outage, bring the clusters back and time failback.",
        )
        parser.add_argument(
            "--drill-heartbeat-s",
            type=float,
            default=10.0,
            help="Seconds between the drill's telemetry reads (default 10).",
        )
        parser.add_argument(
            "--drill-pending-timeout-s",
            type=float,
            default=30.0,
            help="Seconds a replica may stay pending before it is placed elsewhere, for the drill only (default 30, "
            "because emulated replicas start in seconds; MCM_EXECUTION_TIMEOUT_S is for real pods).",
        )
        parser.add_argument(
            "--drill-failback-after-s",
            type=float,
            default=None,
            help="With --drill-recover: seconds a recovered cluster stays healthy before replicas return, "
            "for the drill only (default MCM_FAILBACK_AFTER_S).",
        )

    def handle(
        self,
        *args,
        catalog,
        headless,
        deployments,
        seed,
        time_limit,
        port,
        reset,
        no_clusters,
        ready_delay,
        converge_timeout,
        drill_provider,
        drill_region,
        drill_cluster,
        drill_recover,
        drill_heartbeat_s,
        drill_failback_after_s,
        drill_pending_timeout_s,
        **options,
    ):
        if deployments < 1:
            raise CommandError(f"--deployments {deployments} is invalid: use at least 1")
        drill = next(
            (
                (scope, value)
                for scope, value in zip(SCOPES, (drill_provider, drill_region, drill_cluster), strict=True)
                if value
            ),
            None,
        )
        if drill and no_clusters:
            raise CommandError(f"--drill-{drill[0]} needs emulated clusters: leave out --no-clusters")
        if drill and drill_heartbeat_s <= 0:
            raise CommandError(f"--drill-heartbeat-s {drill_heartbeat_s} is invalid: use a positive number of seconds")
        if (drill_recover or drill_failback_after_s is not None) and not drill:
            raise CommandError(
                "--drill-recover and --drill-failback-after-s need --drill-provider, --drill-region or --drill-cluster"
            )
        if drill_pending_timeout_s <= 0:
            raise CommandError(
                f"--drill-pending-timeout-s {drill_pending_timeout_s} is invalid: use a positive number of seconds"
            )
        if drill_failback_after_s is not None and drill_failback_after_s < 0:
            raise CommandError(f"--drill-failback-after-s {drill_failback_after_s} is invalid: use 0 or more seconds")
        started = time.monotonic()
        call_command("migrate", verbosity=0, interactive=False)
        if reset:
            call_command("flush", verbosity=0, interactive=False)

        self.load_fleet(catalog, seed)
        if drill:
            try:
                resolve_scope(*drill)
            except DrillError as error:
                raise CommandError(f"--drill-{drill[0]} {drill[1]} is invalid: {error}") from error
        data_dir = settings.MCM_DATA_DIR if settings.MCM_DATA_DIR.is_dir() else None
        _, created, city_source = seed_demo(count=deployments, seed=seed, data_dir=data_dir)
        self.stdout.write(f"Deployments: {created} created ({deployments} requested); users from {city_source}")

        previous = current_plan()
        self.stdout.write("Planning every deployment at once...")
        options = default_options()
        options.time_limit_s = time_limit
        plan = run_plan(actor="demo", trigger=PlanTrigger.DEMO, options=options)
        self.stdout.write("")
        self.stdout.write(format_plan(plan, diff_plans(previous, plan)))
        self.print_example(plan)

        emulated: list = []
        try:
            if not no_clusters:
                emulated = self.run_workload_planes(plan, ready_delay=ready_delay, timeout_s=converge_timeout)
            if drill:
                self.stdout.write("\nOutage drill: reading every cluster until health settles...")
                try:
                    settle_health(progress=self.stdout.write)
                    run_drills(
                        scope=drill[0],
                        target=drill[1],
                        emulated=emulated,
                        recover=drill_recover,
                        heartbeat_s=drill_heartbeat_s,
                        timeout_s=None,
                        failback_after_s=drill_failback_after_s,
                        pending_timeout_s=drill_pending_timeout_s,
                        write=self.stdout.write,
                    )
                except DrillError as error:
                    raise CommandError(f"the outage drill cannot run: {error}") from error
            self.stdout.write(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
            if headless:
                return
            password = self.ensure_demo_users()
            users = ", ".join(f"{name} ({what})" for name, _, what in DEMO_USERS)
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nAdmin: http://127.0.0.1:{port}/admin/\nUsers: {users}; password for each: {password}\n"
                    f"API docs: http://127.0.0.1:{port}/api/v1/docs/\nStop with Ctrl-C."
                )
            )
            loop = None
            if settings.MCM_EMBEDDED and emulated:
                self.stdout.write("Running MCM's control loop in this process every 5 s while serving.")
                loop = demo_loop.BackgroundLoop(interval_s=5.0).start()
            try:
                call_command("runserver", f"127.0.0.1:{port}", use_reloader=False)
            finally:
                if loop is not None:
                    loop.stop()
        finally:
            if emulated:
                self.stdout.write(f"Stopping {len(emulated)} emulated clusters...")
                demo_loop.stop_emulated_fleet(emulated)

    def run_workload_planes(self, plan, *, ready_delay: float, timeout_s: float) -> list:
        """Start an emulated cluster per fleet cluster, execute the plan and wait for convergence."""
        self.stdout.write(
            f"\nStarting one emulated Kubernetes cluster per fleet cluster (ready delay {ready_delay} s)..."
        )
        emulated = demo_loop.start_emulated_fleet(ready_delay_s=ready_delay)
        self.stdout.write(f"  {len(emulated)} clusters listening on 127.0.0.1")
        if settings.CELERY_TASK_ALWAYS_EAGER:
            self.stdout.write("Running the loop in this process: collect, execute, reconcile...")
            state = demo_loop.run_loop(plan, timeout_s=timeout_s, progress=self.stdout.write)
        else:
            self.stdout.write("Running the loop on Celery: starting a worker and beat...")
            state = demo_loop.run_loop_on_celery(plan, timeout_s=timeout_s, progress=self.stdout.write)
        rows = [[provider, desired, ready] for provider, (desired, ready) in state.by_provider.items()]
        self.stdout.write("\nDesired against observed ready replicas, by provider")
        self.stdout.write(format_table(["provider", "desired", "ready"], rows, "lrr"))
        if state.done:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Observed equals desired for all {state.deployments} placed deployments "
                    f"after {state.seconds:.1f} s ({state.rounds} reconcile rounds)."
                )
            )
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"After {state.seconds:.1f} s, {state.converged} of {state.deployments} placed deployments "
                    "run what the plan decided."
                )
            )
        return emulated

    def load_fleet(self, catalog: list[Path] | None, seed: int) -> None:
        if not catalog:
            result = load_builtin_fleet(seed=seed)
            self.stdout.write(
                f"Fleet: built-in, {result['build'].clusters_planned} clusters, {result['build'].total_gpus:,} GPUs"
            )
        else:
            for path in catalog:
                if not path.exists():
                    raise CommandError(f"--catalog {path} is invalid: no such file or folder")
            for folder in (path for path in catalog if path.is_dir()):
                self.stdout.write(f"Importing regions and catalogs under {folder} ...")
                reports = import_shared_catalogs(folder)
                self.write_import(reports["regions"], "regions")
                self.write_import(reports["catalogs"], "catalog offers")
            files = [path for path in catalog if path.is_file()]
            if files:
                regions_file = settings.MCM_DATA_DIR / REGIONS_FILE
                if regions_file.is_file():
                    self.write_import(import_regions(regions_file), "regions")
                self.write_import(import_catalog(files), "catalog offers")
            build = build_fleet(seed=seed)
            self.stdout.write(
                f"Fleet built with seed {seed}: {build.clusters_planned} clusters "
                f"({build.clusters_created} new), {build.total_gpus:,} GPUs"
            )
        regions_with_gpus = provider_region_counts()
        self.stdout.write(
            f"Pool: {len(regions_with_gpus)} providers, {sum(regions_with_gpus.values())} regions with GPUs "
            f"(of {Region.objects.count()} known), {Cluster.objects.count()} clusters"
        )

    def write_import(self, report: ImportReport, what: str) -> None:
        rejected = Counter(row.reason.split(":")[0] for row in report.rejected)
        self.stdout.write(
            f"  {what}: {len(report.files)} files, {report.created} created, {report.updated} updated, "
            f"{report.unchanged} unchanged, {len(report.rejected)} rows rejected, {report.seconds:.1f} s"
        )
        for reason, count in rejected.most_common():
            self.stdout.write(f"    rejected {count}: {reason}")

    def print_example(self, plan) -> None:
        placed = DeploymentOutcome.objects.filter(plan=plan, placed_replicas__gt=0).select_related(
            "deployment__customer"
        )
        # A deployment with a lock of its own makes the more telling example.
        outcome = placed.filter(deployment__locks__isnull=False).first() or placed.first()
        if outcome is None:
            return
        self.stdout.write(f"\nWhy {outcome.deployment} runs where it does:")
        for line in explanation_lines(outcome.explanation):
            self.stdout.write(f"  {line}")

    def ensure_demo_users(self) -> str:
        """Create or reset the demo's admin and one user per staff role; return their new password."""
        password = secrets.token_urlsafe(12)
        for username, role, _ in DEMO_USERS:
            user, _ = get_user_model().objects.get_or_create(username=username)
            user.is_staff = True
            user.is_superuser = role is None
            user.set_password(password)
            user.save()
            if role is not None:
                grant_role(user, role, actor="mcm_demo", reason="Demo user for this role.")
        return password


def explanation_lines(explanation: dict) -> list[str]:
    lines = [f"placed {explanation.get('placed', 0)} of {explanation.get('desired', 0)} replicas"]
    for chosen in explanation.get("chosen", []):
        lines.append(f"{chosen['replicas']} on {chosen['cluster']} ({chosen['sku']}): {chosen['why']}")
    for group in explanation.get("not_chosen", []):
        lines.append(f"{group['count']} other clusters not used: {group['message']}")
    return lines
