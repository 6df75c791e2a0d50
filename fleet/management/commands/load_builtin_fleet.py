"""Load the small built-in fleet, which needs no catalog file."""

from dataclasses import asdict

from django.core.management.base import BaseCommand

from fleet.builder import DEFAULT_SEED
from fleet.builtin import load_builtin_fleet


class Command(BaseCommand):
    help = "Create the built-in providers, regions and offers, and build their clusters."

    def add_arguments(self, parser):
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Random seed (default {DEFAULT_SEED}).")

    def handle(self, *args, seed, **options):
        result = load_builtin_fleet(seed, actor="load_builtin_fleet command")
        self.stdout.write(
            f"regions created: {result['regions_created']}, offers created: {result['offers_created']}, "
            f"offers updated: {result['offers_updated']}"
        )
        for name, value in asdict(result["build"]).items():
            self.stdout.write(f"{name.replace('_', ' ')}: {value}")
