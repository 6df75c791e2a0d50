"""Shared pieces of the fleet writers: import reports, file errors and the audit summary."""

import csv
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compliance.services import record_event


class ImportFileError(Exception):
    """A whole input file cannot be used (missing, unreadable or without the required columns)."""


@dataclass(frozen=True)
class RejectedRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class FileReport:
    """Outcome of one import for one file.

    ``created``, ``updated`` and ``unchanged`` count rows of the imported model (regions or
    offers); ``merged`` counts input rows that repeated an offer read before them.
    """

    path: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected.append(RejectedRow(Path(self.path).name, line, reason))


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)
    regions_created: int = 0
    regions_updated: int = 0
    seconds: float = 0.0

    @property
    def created(self) -> int:
        return sum(report.created for report in self.files)

    @property
    def updated(self) -> int:
        return sum(report.updated for report in self.files)

    @property
    def unchanged(self) -> int:
        return sum(report.unchanged for report in self.files)

    @property
    def rejected(self) -> list[RejectedRow]:
        return [row for report in self.files for row in report.rejected]

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.regions_created or self.regions_updated)

    def summary(self) -> dict:
        """Return counts per file and in total, small enough for an audit event."""
        return {
            "files": [
                {key: value for key, value in asdict(report).items() if key != "rejected"}
                | {"rejected": len(report.rejected)}
                for report in self.files
            ],
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": len(self.rejected),
            "regions_created": self.regions_created,
            "regions_updated": self.regions_updated,
        }


def read_csv_rows(path: Path, required_columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` for each data row of a CSV file with a header line.

    Raises ImportFileError, naming the path, when the file cannot be read or lacks a required column.
    The line number is the file line on which the row ends, counting the header as line 1.
    """
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise ImportFileError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
        except (csv.Error, UnicodeDecodeError) as error:
            raise ImportFileError(f"cannot read {path}: {error}") from error
        missing = [column for column in required_columns if column not in header]
        if missing:
            raise ImportFileError(f"{path} lacks the required column(s) {', '.join(missing)}; its header is {header}")
        try:
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as error:
            raise ImportFileError(f"cannot read {path} after line {reader.line_num}: {error}") from error


def record_import(*, actor, action: str, subject_id: str, report: ImportReport) -> None:
    """Write one audit event summarizing an import, unless the import changed nothing."""
    if report.changed:
        record_event(actor=actor, action=action, subject=("fleet.import", subject_id), after=report.summary())
