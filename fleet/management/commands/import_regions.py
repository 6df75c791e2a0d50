"""Import providers and regions with coordinates from a region table CSV."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet.regions import import_regions
from fleet.services import ImportFileError


class Command(BaseCommand):
    help = (
        "Import providers and regions from a CSV with the columns provider, region_code, display_name, "
        "city, country, country_code, latitude, longitude. Rejected rows are listed as file:line: reason."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="Region table CSV file.")

    def handle(self, *args, path, **options):
        if not Path(path).is_file():
            raise CommandError(f"region table {path!r} does not exist or is not a file")
        try:
            report = import_regions(path, actor="import_regions command")
        except ImportFileError as error:
            raise CommandError(str(error)) from error
        file_report = report.files[0]
        for row in file_report.rejected:
            self.stderr.write(str(row))
        self.stdout.write(
            f"{file_report.path}: {file_report.rows} rows, {file_report.created} regions created, "
            f"{file_report.updated} updated, {file_report.unchanged} unchanged, "
            f"{len(file_report.rejected)} rejected ({report.seconds:.2f} s)"
        )
        if file_report.rows and not (file_report.created + file_report.updated + file_report.unchanged):
            raise CommandError(f"no region of {path!r} could be imported")
