"""CSV export of the audit trail, streamed row by row so a large export never sits in memory."""

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from compliance.models import AuditEvent

CSV_COLUMNS = [
    "id",
    "created_at",
    "actor_id",
    "actor_label",
    "action",
    "subject_type",
    "subject_id",
    "reason",
    "before",
    "after",
]

# Spreadsheets run a cell that starts with one of these as a formula; a leading quote makes it text.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# Rows fetched per database round trip while streaming.
EXPORT_CHUNK_SIZE = 2000


class _LineBuffer:
    """A file-like object whose ``write`` returns the line, so ``csv.writer`` can feed a generator."""

    def write(self, line: str) -> str:
        return line


def safe_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def event_row(event: AuditEvent) -> list[str]:
    """Return one event as CSV cells: times in ISO 8601 UTC, before and after as JSON."""
    return [
        str(event.pk),
        event.created_at.astimezone(UTC).isoformat(),
        "" if event.actor_id is None else str(event.actor_id),
        safe_cell(event.actor_label),
        safe_cell(event.action),
        safe_cell(event.subject_type),
        safe_cell(event.subject_id),
        safe_cell(event.reason),
        json.dumps(event.before, sort_keys=True, cls=DjangoJSONEncoder),
        json.dumps(event.after, sort_keys=True, cls=DjangoJSONEncoder),
    ]


def iter_csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """Yield the header line, then one CSV line per event."""
    writer = csv.writer(_LineBuffer())
    yield writer.writerow(CSV_COLUMNS)
    for event in events:
        yield writer.writerow(event_row(event))


def csv_response(events: QuerySet[AuditEvent], *, filename: str = "audit-events.csv") -> StreamingHttpResponse:
    """Stream ``events`` as a CSV download, in the queryset's order."""
    lines = iter_csv_lines(events.iterator(chunk_size=EXPORT_CHUNK_SIZE))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
