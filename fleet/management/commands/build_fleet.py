"""Derive clusters and their GPU capacity from the imported catalog offers."""

from dataclasses import asdict

from django.core.management.base import BaseCommand, CommandError

from fleet.builder import DEFAULT_SEED, build_fleet


class Command(BaseCommand):
    help = (
        "Create or update one cluster per region that sells GPUs (two in regions selling many SKUs), with GPU "
        "counts drawn from a seeded generator. The same seed gives the same fleet."
    )

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Random seed (default {DEFAULT_SEED}).")
        parser.add_argument(
            "--max-clusters",
            type=int,
            help="Maximum number of clusters, taken in turn from each provider (default: no limit).",
        )

    def handle(self, *args, seed, max_clusters, **options):
        if max_clusters is not None and max_clusters < 1:
            raise CommandError(f"--max-clusters must be at least 1, not {max_clusters}")
        report = build_fleet(seed, max_clusters=max_clusters, actor="build_fleet command", progress=self.stdout.write)
        if not report.clusters_planned:
            raise CommandError("no region has catalog offers; run import_catalog or load_builtin_fleet first")
        for name, value in asdict(report).items():
            self.stdout.write(f"{name.replace('_', ' ')}: {value}")
