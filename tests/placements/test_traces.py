"""Reading and validating request-rate trace files."""

from pathlib import Path

import pytest
from django.conf import settings

from placements.traces import SERVEGEN_RATES, TraceError, load_traces, parse_duration, read_trace

HEADER = "category,model,window_start_s,total_rate_rps,active_clients\n"


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(header + body)
    return path


def test_read_trace_good_file(tmp_path):
    path = write(tmp_path, "language,m-a,0,10,3\nlanguage,m-a,60,20,3\nlanguage,m-b,0,5,1\nlanguage,m-a,120,0,0\n")

    traces = read_trace(path)

    assert sorted(traces) == ["m-a", "m-b"]
    assert traces["m-a"].window_s == 60
    assert traces["m-a"].rates == (10.0, 20.0, 0.0)
    assert traces["m-a"].duration_s == 180
    assert traces["m-b"].window_s == 60
    assert traces["m-a"].rate_at(59.9) == 10.0
    assert traces["m-a"].rate_at(60) == 20.0
    assert traces["m-a"].peak_rps == 20.0


def test_requests_between_integrates_windows(tmp_path):
    trace = read_trace(write(tmp_path, "c,m,0,10\nc,m,60,20\nc,m,120,40\n"))["m"]

    assert trace.requests_between(0, 180) == pytest.approx(60 * 10 + 60 * 20 + 60 * 40)
    assert trace.requests_between(30, 90) == pytest.approx(30 * 10 + 30 * 20)
    assert trace.requests_between(100, 100) == 0
    with pytest.raises(TraceError, match="outside model m's trace"):
        trace.requests_between(0, 181)
    with pytest.raises(TraceError, match="outside"):
        trace.rate_at(180)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("c,m,60,1\nc,m,abc,2\n", r":3: window_start_s: 'abc' is invalid: use a whole number"),
        ("c,m,0,1\nc,m,60,-2\n", r":3: total_rate_rps: '-2' is invalid: use a finite number, 0 or more"),
        ("c,m,0,1\nc,m,60,nan\n", r":3: total_rate_rps: 'nan' is invalid"),
        ("c,m,0,1\nc,m,60,fast\n", r":3: total_rate_rps: 'fast' is invalid: use a number"),
        ("c,,0,1\n", r":2: model: '' is invalid: the model name is missing"),
        ("c,m,0,1\nc,m,-60,1\n", r":3: window_start_s: '-60' is invalid: use 0 or more"),
    ],
)
def test_read_trace_bad_row_names_line_column_value(tmp_path, row, message):
    path = write(tmp_path, row)

    with pytest.raises(TraceError, match=message) as raised:
        read_trace(path)

    assert str(path) in str(raised.value)


def test_read_trace_gap_and_repeat(tmp_path):
    gap = write(tmp_path, "c,m,0,1\nc,m,60,1\nc,m,180,1\nc,n,0,1\nc,n,60,1\n")
    with pytest.raises(TraceError, match=r":4: window_start_s: '180' is invalid: it leaves a gap after 60 s"):
        read_trace(gap)

    repeat = write(tmp_path, "c,m,0,1\nc,m,60,1\nc,m,60,2\n")
    with pytest.raises(TraceError, match=r":4: window_start_s: '60' is invalid: it repeats"):
        read_trace(repeat)

    late = write(tmp_path, "c,m,60,1\nc,m,120,1\n")
    with pytest.raises(TraceError, match=r":2: window_start_s: '60' is invalid: the first window of model m"):
        read_trace(late)


def test_read_trace_lists_every_bad_row(tmp_path):
    path = write(tmp_path, "c,m,0,x\nc,m,60,y\nc,m,120,z\n")

    with pytest.raises(TraceError) as raised:
        read_trace(path)

    assert "has 3 invalid rows" in str(raised.value)
    for line in (2, 3, 4):
        assert f"trace.csv:{line}: total_rate_rps" in str(raised.value)


def test_read_trace_missing_column_or_file(tmp_path):
    path = write(tmp_path, "c,m,0\n", header="category,model,window_start_s\n")
    with pytest.raises(TraceError, match=r":1: header is missing the columns total_rate_rps"):
        read_trace(path)
    with pytest.raises(TraceError, match="not found"):
        read_trace(tmp_path / "absent.csv")
    with pytest.raises(TraceError, match="no rows"):
        read_trace(write(tmp_path, ""))


def test_load_traces_unknown_model(tmp_path):
    path = write(tmp_path, "c,m,0,1\n")

    with pytest.raises(TraceError, match="model 'm-large' is not in trace file .*; it has m"):
        load_traces(path, ["m-large"])


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2w", "-1d", "1.2.3", "d"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_servegen_rates_read():
    path = settings.MCM_DATA_DIR / SERVEGEN_RATES
    if not path.is_file():
        pytest.skip(f"the ServeGen rates are not under MCM_DATA_DIR ({path})")

    traces = load_traces(path, ["m-large", "m-mid", "m-small"])

    for trace in traces.values():
        assert trace.window_s == 600
        assert trace.duration_s == 14 * 86400
    assert 500 < traces["m-large"].peak_rps < 700
