"""Import GPU offers from SkyPilot-format catalog CSVs."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet.catalog import import_catalog
from fleet.services import ImportFileError


class Command(BaseCommand):
    help = (
        "Import GPU offers from SkyPilot-format catalog CSVs (InstanceType, AcceleratorName, AcceleratorCount, "
        "Region, Price, SpotPrice). Prints counts per file and each rejected row as file:line: reason; exits "
        "non-zero only when a file is unreadable or no row could be imported."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="PATH", help="Catalog CSV file.")
        parser.add_argument(
            "--provider",
            help="Provider name for every file; by default each file's name up to its first underscore.",
        )
        parser.add_argument(
            "--places",
            help="Natural Earth populated-places CSV used to locate regions by name; "
            "by default the copy under MCM_DATA_DIR, if any.",
        )

    def handle(self, *args, paths, provider, places, **options):
        for path in [*paths, *([places] if places else [])]:
            if not Path(path).is_file():
                raise CommandError(f"{path!r} does not exist or is not a file")
        self.stdout.write(f"importing {len(paths)} catalog file(s)")
        try:
            report = import_catalog(
                paths, provider, places_path=Path(places) if places else None, actor="import_catalog command"
            )
        except ImportFileError as error:
            raise CommandError(str(error)) from error
        for file_report in report.files:
            for row in file_report.rejected:
                self.stderr.write(str(row))
        for file_report in report.files:
            self.stdout.write(
                f"{file_report.path}: {file_report.rows} rows, {file_report.created} offers created, "
                f"{file_report.updated} updated, {file_report.unchanged} unchanged, {file_report.merged} merged, "
                f"{len(file_report.rejected)} rejected"
            )
        self.stdout.write(
            f"total: {report.created} offers created, {report.updated} updated, {report.unchanged} unchanged, "
            f"{len(report.rejected)} rows rejected, {report.regions_created} regions created ({report.seconds:.2f} s)"
        )
        if not (report.created + report.updated + report.unchanged):
            raise CommandError("no offer could be imported from the given files")
