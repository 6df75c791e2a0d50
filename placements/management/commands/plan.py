from django.core.management.base import BaseCommand, CommandError

from fleet.models import Provider, Region
from placements.models import PlanTrigger
from placements.planning import Exclusions, current_plan, default_options, diff_plans, run_plan
from placements.report import format_plan


def parse_exclusions(values: list[str]) -> Exclusions:
    providers, regions = set(), set()
    for value in values:
        kind, _, name = value.partition("=")
        if not name or kind not in ("provider", "region"):
            raise CommandError(f"--without {value!r} is invalid: use provider=NAME or region=CODE")
        if kind == "provider" and not Provider.objects.filter(name=name).exists():
            raise CommandError(f"--without {value!r} is invalid: provider {name!r} not found")
        if kind == "region" and not region_exists(name):
            raise CommandError(
                f"--without {value!r} is invalid: region {name!r} not found (use a region code or provider/code)"
            )
        (providers if kind == "provider" else regions).add(name)
    return Exclusions(providers=frozenset(providers), regions=frozenset(regions))


def region_exists(name: str) -> bool:
    provider, _, code = name.partition("/")
    if code:
        return Region.objects.filter(provider__name=provider, code=code).exists()
    return Region.objects.filter(code=name).exists()


class Command(BaseCommand):
    help = "Plan every deployment's replicas over the global pool and print the plan and its diff."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Store the plan as a dry run; apply nothing.")
        parser.add_argument(
            "--without",
            action="append",
            default=[],
            metavar="provider=NAME|region=CODE",
            help="Treat a provider or region as down (dry runs only); repeatable.",
        )
        parser.add_argument("--time-limit", type=float, help="Solver time limit in seconds.")
        parser.add_argument("--gap", type=float, help="Relative MIP gap at which the solver stops, e.g. 0.01.")

    def handle(self, *args, dry_run: bool, without: list[str], time_limit, gap, **options):
        exclusions = parse_exclusions(without)
        if exclusions and not dry_run:
            raise CommandError("--without needs --dry-run: a what-if plan is never applied")
        scheduler_options = default_options()
        if time_limit is not None:
            if time_limit <= 0:
                raise CommandError(f"--time-limit {time_limit} is invalid: use a positive number of seconds")
            scheduler_options.time_limit_s = time_limit
        if gap is not None:
            if not 0 <= gap < 1:
                raise CommandError(f"--gap {gap} is invalid: use a fraction in [0, 1)")
            scheduler_options.gap_target = gap

        previous = current_plan()
        self.stdout.write("Solving...")
        plan = run_plan(
            actor="plan command",
            trigger=PlanTrigger.MANUAL,
            dry_run=dry_run,
            exclusions=exclusions,
            options=scheduler_options,
        )
        self.stdout.write(format_plan(plan, diff_plans(previous, plan)))
