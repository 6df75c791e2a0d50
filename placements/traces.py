"""Request-rate traces: read and validate a trace file, and look up a model's rate at a trace time.

The format is the ServeGen aggregate (Alibaba Cloud Model Studio, published by the ServeGen
project): a CSV file with a header and at least the columns ``category``, ``model``,
``window_start_s`` and ``total_rate_rps``. Each row gives one model's mean request rate over the
window that starts at ``window_start_s`` seconds from the start of the trace. Every model's
windows must be consecutive and of one length. Other columns (``active_clients`` ...) are ignored.
"""

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

REQUIRED_COLUMNS = ("category", "model", "window_start_s", "total_rate_rps")
# The window of the ServeGen aggregate, used for a model with a single row when no other model
# in the file shows the window length.
DEFAULT_WINDOW_S = 600
# The three language models of the ServeGen trace, 14 days each.
LANGUAGE_MODELS = ("m-large", "m-mid", "m-small")
SERVEGEN_RATES = Path("servegen-alibaba-bailian") / "servegen_aggregate_rate_10min.csv"
MAX_ERRORS_SHOWN = 10


class TraceError(ValueError):
    """An invalid trace file or trace option; the message names the file, line, column and value."""


@dataclass(frozen=True)
class Trace:
    """One model's request rate: ``rates[i]`` req/s over ``[i * window_s, (i + 1) * window_s)``."""

    model: str
    category: str
    window_s: int
    rates: tuple[float, ...]

    @property
    def duration_s(self) -> int:
        return self.window_s * len(self.rates)

    @property
    def peak_rps(self) -> float:
        return max(self.rates)

    def rate_at(self, t_s: float) -> float:
        """Return the rate in req/s at ``t_s`` seconds into the trace; raise ``TraceError`` outside it."""
        if not 0 <= t_s < self.duration_s:
            raise TraceError(f"trace time {t_s:g} s is outside model {self.model}'s trace (0 to {self.duration_s} s)")
        return self.rates[int(t_s // self.window_s)]

    def requests_between(self, start_s: float, end_s: float) -> float:
        """Return the requests of ``[start_s, end_s)``: the exact integral of the piecewise constant rate."""
        if start_s > end_s:
            raise TraceError(f"trace interval {start_s:g} to {end_s:g} s is invalid: the start is after the end")
        if start_s < 0 or end_s > self.duration_s:
            raise TraceError(
                f"trace interval {start_s:g} to {end_s:g} s is outside model {self.model}'s trace "
                f"(0 to {self.duration_s} s)"
            )
        total = 0.0
        index = int(start_s // self.window_s)
        position = start_s
        while position < end_s and index < len(self.rates):
            window_end = min(end_s, (index + 1) * self.window_s)
            total += self.rates[index] * (window_end - position)
            position = window_end
            index += 1
        return total


def read_trace(path: Path) -> dict[str, Trace]:
    """Read a trace file and return its traces by model name.

    Raises ``TraceError`` listing the invalid rows as ``file:line: column: value: reason`` (the
    first few of them); a file with any invalid row is rejected as a whole.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} not found")
    errors: list[str] = []
    rows: dict[str, list[tuple[int, float, int]]] = {}  # model -> (window start, rate, line)
    categories: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(
                f"{path}:1: header is missing the columns {', '.join(missing)}; "
                f"a trace needs {', '.join(REQUIRED_COLUMNS)}"
            )
        for row in reader:
            line = reader.line_num
            parsed = parse_row(row, f"{path}:{line}", errors)
            if parsed is None:
                continue
            category, model, start, rate = parsed
            rows.setdefault(model, []).append((start, rate, line))
            categories.setdefault(model, category)
    if not rows and not errors:
        errors.append(f"{path}: no rows; a trace needs at least one window")
    traces = {} if errors else build_traces(path, rows, categories, errors)
    if errors:
        shown = "\n".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise TraceError(f"trace file {path} has {len(errors)} invalid rows:\n{shown}{more}")
    return traces


def parse_row(row: dict[str, str | None], where: str, errors: list[str]) -> tuple[str, str, int, float] | None:
    """Return (category, model, window start, rate) of a CSV row, or None after adding its errors."""
    found = len(errors)
    model = (row.get("model") or "").strip()
    if not model:
        errors.append(f"{where}: model: {row.get('model')!r} is invalid: the model name is missing")
    start_text = (row.get("window_start_s") or "").strip()
    start = -1
    try:
        start = int(start_text)
    except ValueError:
        errors.append(f"{where}: window_start_s: {start_text!r} is invalid: use a whole number of seconds")
    else:
        if start < 0:
            errors.append(f"{where}: window_start_s: {start_text!r} is invalid: use 0 or more seconds")
    rate_text = (row.get("total_rate_rps") or "").strip()
    rate = 0.0
    try:
        rate = float(rate_text)
    except ValueError:
        errors.append(f"{where}: total_rate_rps: {rate_text!r} is invalid: use a number of requests per second")
    else:
        if not math.isfinite(rate) or rate < 0:
            errors.append(f"{where}: total_rate_rps: {rate_text!r} is invalid: use a finite number, 0 or more")
    if len(errors) > found:
        return None
    return (row.get("category") or "").strip(), model, start, rate


def build_traces(
    path: Path, rows: dict[str, list[tuple[int, float, int]]], categories: dict[str, str], errors: list[str]
) -> dict[str, Trace]:
    """Check that each model's windows are consecutive, start at 0 and share one length; build the traces."""
    steps = set()
    for model_rows in rows.values():
        model_rows.sort()
        steps.update(later[0] - earlier[0] for earlier, later in zip(model_rows, model_rows[1:], strict=False))
    positive = [step for step in steps if step > 0]
    window_s = min(positive) if positive else DEFAULT_WINDOW_S
    traces = {}
    for model, model_rows in rows.items():
        expected = 0
        for start, _, line in model_rows:
            if start == expected:
                expected += window_s
                continue
            if expected == 0:
                reason = f"the first window of model {model} must start at 0"
            elif start < expected:
                reason = f"it repeats or overlaps a window of model {model} (windows of {window_s} s)"
            else:
                reason = f"it leaves a gap after {expected - window_s} s (model {model}, windows of {window_s} s)"
            errors.append(f"{path}:{line}: window_start_s: {str(start)!r} is invalid: {reason}")
            break
        traces[model] = Trace(model, categories[model], window_s, tuple(rate for _, rate, _ in model_rows))
    return traces


def load_traces(path: Path, models: list[str]) -> dict[str, Trace]:
    """Read ``path`` and return the traces of ``models``; raise ``TraceError`` naming a model it lacks."""
    traces = read_trace(path)
    unknown = [model for model in models if model not in traces]
    if unknown:
        raise TraceError(f"model {unknown[0]!r} is not in trace file {path}; it has {', '.join(sorted(traces))}")
    return {model: traces[model] for model in models}


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """Return seconds of a duration such as ``90``, ``90s``, ``30m``, ``6h`` or ``2d``; raise ``ValueError``."""
    match = DURATION_PATTERN.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use seconds or a number with s, m, h or d (e.g. 2d)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]
