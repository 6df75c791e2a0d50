"""Benchmark the autoscaler's decision rule on the ServeGen request-rate trace, in simulated time.

Usage: .venv/bin/python bench/autoscaler.py [--models m-large,m-mid,m-small] [--start-delay-s 120]
       [--burst] [--json FILE]

For each model, every ``--step-s`` simulated seconds (default 15, ``MCM_AUTOSCALE_INTERVAL_S``) the
bench records the offered request rate as a traffic sample. Then it calls MCM's real rule,
``placements.autoscaling.decide``, with the window's mean rate, as ``autoscale_pass`` does with
samples from the pull collector. No database, cluster or scheduler is involved: replica starts are simulated.
A replica the rule adds is ready ``--start-delay-s`` later; a removed replica stops serving at once
(replicas still starting are removed first). Capacity is ready replicas x target_concurrency /
seconds_per_request req/s, and demand above it is not served.

The rate of each step is the trace's 10-minute window rate. With ``--burst``, models that have raw
per-client traces (m-small in the ServeGen files) vary within the window: each client's requests
in a step are drawn from a gamma distribution with the client's window rate x step as mean and
rate x step x cv^2 as variance, cv being the coefficient of variation of the client's
inter-arrival times that the raw trace gives for the window. That is the count variance of a
renewal process over a long interval, an approximation at a 15-second step.

References from the same demand series: the oracle runs each step's need,
ceil(rate / (capacity x target_utilization)), ready exactly when needed; static provisioning runs
the peak need for the whole time. Both use the same target utilisation as the autoscaler, so they
differ from it only in timing.
"""

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The bench reads no database; embedded mode only spares it a database and broker configuration.
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("MCM_EMBEDDED", "1")
    os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcm_site.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.conf import settings  # noqa: E402

from placements.autoscaling import decide  # noqa: E402
from placements.models import AutoscalingPolicy  # noqa: E402
from placements.traces import LANGUAGE_MODELS, SERVEGEN_RATES, load_traces  # noqa: E402
from placements.traffic import TrafficWindow  # noqa: E402

RAW_TRACES = Path("servegen-alibaba-bailian") / "raw_client_traces"


@dataclass
class Result:
    """One provisioning strategy over the whole trace: requests, replica-hours and actions."""

    strategy: str
    offered_requests: float = 0.0
    served_requests: float = 0.0
    replica_hours: float = 0.0  # ready replicas
    billed_replica_hours: float = 0.0  # ready and starting replicas
    scale_ups: int = 0
    scale_downs: int = 0
    max_replicas: int = 0
    decide_seconds: float = 0.0

    @property
    def served_share(self) -> float:
        return self.served_requests / self.offered_requests if self.offered_requests else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "served_share": self.served_share}


@dataclass
class Fleet:
    """Simulated replicas of one deployment: ready ones, and start completion times of the others."""

    ready: int
    starting: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ready + len(self.starting)

    def advance(self, now: float) -> None:
        done = [at for at in self.starting if at <= now]
        self.ready += len(done)
        self.starting = [at for at in self.starting if at > now]

    def scale_to(self, replicas: int, *, now: float, start_delay_s: float) -> None:
        if replicas > self.total:
            self.starting += [now + start_delay_s] * (replicas - self.total)
            self.advance(now)
            return
        surplus = self.total - replicas
        # Replicas still starting go first: they serve nothing yet.
        cancelled = min(surplus, len(self.starting))
        self.starting = sorted(self.starting)[: len(self.starting) - cancelled]
        self.ready -= surplus - cancelled


def demand_series(model: str, rates: tuple[float, ...], *, window_s: int, step_s: float, burst: bool, seed: int):
    """Return the offered rate of every step, and how it was made."""
    steps_per_window = round(window_s / step_s)
    base = np.repeat(np.array(rates, dtype=float), steps_per_window)
    folder = settings.MCM_DATA_DIR / RAW_TRACES
    clients = sorted(folder.glob(f"*/{model}/chunk-*-trace.csv")) if burst else []
    if not clients:
        return base, "10-minute window rates"
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(rates) * steps_per_window)
    for path in clients:
        rate, cv = read_client(path, len(rates))
        mean = np.repeat(rate, steps_per_window) * step_s
        variance = mean * np.repeat(cv, steps_per_window) ** 2
        busy = (mean > 0) & (variance > 0)
        drawn = mean.copy()
        drawn[busy] = rng.gamma(mean[busy] ** 2 / variance[busy], variance[busy] / mean[busy])
        counts += drawn
    return counts / step_s, f"within-window variation from {len(clients)} raw client traces (seed {seed})"


def read_client(path: Path, windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Return one client's rate and inter-arrival cv per window from a raw ServeGen trace (no header)."""
    rate = np.zeros(windows)
    cv = np.zeros(windows)
    with path.open(newline="") as handle:
        for row in csv.reader(handle):
            index = int(float(row[0])) // 600
            if index < windows:
                rate[index] = float(row[1])
                cv[index] = float(row[2] or 0)
    return rate, cv


def simulate(policy, offered: np.ndarray, *, step_s: float, start_delay_s: float, min_r: int, max_r: int) -> Result:
    """Run ``decide`` every step over the demand series; see the module docstring."""
    capacity = policy.target_concurrency / policy.seconds_per_request
    samples_per_window = max(1, round(policy.window_s / step_s))
    first_need = needs(offered[:1], policy, min_r, max_r)[0]
    fleet = Fleet(ready=int(first_need))
    desired = fleet.total
    state: dict = {}
    result = Result("autoscaler")
    started = time.perf_counter()
    for index, rate in enumerate(offered):
        now = index * step_s
        fleet.advance(now)
        window = offered[max(0, index - samples_per_window + 1) : index + 1]
        traffic = TrafficWindow(requests_per_second=float(window.mean()), in_flight=None, samples=len(window))
        decision = decide(
            policy, current=desired, min_replicas=min_r, max_replicas=max_r, traffic=traffic, state=state, now=now
        )
        state = decision.state
        if decision.replicas != desired:
            result.scale_ups += decision.replicas > desired
            result.scale_downs += decision.replicas < desired
            desired = decision.replicas
            fleet.scale_to(desired, now=now, start_delay_s=start_delay_s)
        # This step's demand is served by what is ready now, until the next step.
        result.offered_requests += rate * step_s
        result.served_requests += min(rate, fleet.ready * capacity) * step_s
        result.replica_hours += fleet.ready * step_s / 3600
        result.billed_replica_hours += fleet.total * step_s / 3600
        result.max_replicas = max(result.max_replicas, fleet.total)
    result.decide_seconds = time.perf_counter() - started
    return result


def needs(offered: np.ndarray, policy, min_r: int, max_r: int) -> np.ndarray:
    per_replica = policy.target_concurrency * policy.target_utilization / policy.seconds_per_request
    return np.clip(np.ceil(offered / per_replica - 1e-9), max(min_r, 1), max_r)


def reference(name: str, replicas: np.ndarray, offered: np.ndarray, policy, step_s: float) -> Result:
    capacity = policy.target_concurrency / policy.seconds_per_request
    hours = float(replicas.sum()) * step_s / 3600
    changes = np.diff(replicas)
    return Result(
        name,
        offered_requests=float(offered.sum() * step_s),
        served_requests=float(np.minimum(offered, replicas * capacity).sum() * step_s),
        replica_hours=hours,
        billed_replica_hours=hours,
        scale_ups=int((changes > 0).sum()),
        scale_downs=int((changes < 0).sum()),
        max_replicas=int(replicas.max()),
    )


def run_model(model: str, trace, args) -> dict:
    policy = AutoscalingPolicy(
        target_concurrency=args.target_concurrency,
        target_utilization=args.target_utilization,
        seconds_per_request=args.seconds_per_request,
        window_s=args.window_s,
        scale_down_delay_s=args.scale_down_delay_s,
        max_scale_down_fraction=args.max_scale_down_fraction,
    )
    offered, source = demand_series(
        model, trace.rates, window_s=trace.window_s, step_s=args.step_s, burst=args.burst, seed=args.seed
    )
    first = int(args.start_s // args.step_s)
    last = len(offered) if args.duration_s is None else first + int(args.duration_s // args.step_s)
    offered = offered[first:last] * rate_scale(args.rate_scale, model)
    min_r = 1
    # Twice the peak need, so that max_replicas never binds and the comparison is about timing.
    max_r = int(2 * needs(offered, policy, 1, 10**9).max())
    oracle_replicas = needs(offered, policy, min_r, max_r)
    results = [
        simulate(policy, offered, step_s=args.step_s, start_delay_s=args.start_delay_s, min_r=min_r, max_r=max_r),
        reference("oracle", oracle_replicas, offered, policy, args.step_s),
        reference("static peak", np.full_like(oracle_replicas, oracle_replicas.max()), offered, policy, args.step_s),
    ]
    return {
        "model": model,
        "demand": source,
        "days": round(len(offered) * args.step_s / 86400, 2),
        "mean_rps": float(offered.mean()),
        "peak_rps": float(offered.max()),
        "max_replicas": max_r,
        "results": [result.as_dict() for result in results],
    }


def rate_scale(text: str, model: str) -> float:
    """Return the rate scale of ``model`` from "2.5" or "m-large=0.37,m-mid=0.018"; 1 for an unlisted model."""
    if "=" not in text:
        return float(text)
    scales = dict(item.split("=", 1) for item in text.split(",") if item)
    return float(scales.get(model, 1.0))


def format_model(entry: dict) -> list[str]:
    oracle = next(result for result in entry["results"] if result["strategy"] == "oracle")
    lines = [
        f"{entry['model']}: {entry['days']} days, mean {entry['mean_rps']:.0f} req/s, peak {entry['peak_rps']:.0f} "
        f"req/s ({entry['demand']})",
        f"  {'strategy':<12} {'served':>8} {'replica-h':>10} {'vs oracle':>9} {'billed h':>10} {'up':>6} "
        f"{'down':>6} {'max':>5}",
    ]
    for result in entry["results"]:
        ratio = result["replica_hours"] / oracle["replica_hours"] if oracle["replica_hours"] else math.nan
        lines.append(
            f"  {result['strategy']:<12} {result['served_share']:>8.3%} {result['replica_hours']:>10,.0f} "
            f"{ratio:>8.2f}x {result['billed_replica_hours']:>10,.0f} {result['scale_ups']:>6} "
            f"{result['scale_downs']:>6} {result['max_replicas']:>5}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, help=f"Trace CSV (default: MCM_DATA_DIR/{SERVEGEN_RATES}).")
    parser.add_argument("--models", default=",".join(LANGUAGE_MODELS), help="Comma-separated models of the trace.")
    parser.add_argument("--step-s", type=float, default=15.0, help="Simulated seconds between decisions.")
    parser.add_argument("--start-delay-s", type=float, default=120.0, help="Seconds a new replica takes to be ready.")
    parser.add_argument(
        "--rate-scale",
        default="1",
        help="Multiply the trace's rates by this number, or per model: m-large=0.37,m-mid=0.018,...",
    )
    parser.add_argument("--start-s", type=float, default=0.0, help="Trace second to start at (default 0).")
    parser.add_argument("--duration-s", type=float, help="Trace seconds to simulate (default: to the end).")
    parser.add_argument("--burst", action="store_true", help="Vary the rate within windows where raw traces exist.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the within-window variation.")
    defaults = AutoscalingPolicy()
    for name in ("target_concurrency", "target_utilization", "seconds_per_request", "max_scale_down_fraction"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("window_s", "scale_down_delay_s"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    args = parser.parse_args()
    if 600 % args.step_s:
        parser.error(f"--step-s {args.step_s} is invalid: use a divisor of the trace's 600-second windows")

    path = args.trace or settings.MCM_DATA_DIR / SERVEGEN_RATES
    models = [model.strip() for model in args.models.split(",") if model.strip()]
    traces = load_traces(path, models)
    print(f"Machine: {platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; trace {path}")
    print(
        f"Policy: target_concurrency {args.target_concurrency:g}, target_utilization {args.target_utilization:g}, "
        f"seconds_per_request {args.seconds_per_request:g}, window {args.window_s} s, scale-down delay "
        f"{args.scale_down_delay_s} s, max scale-down {args.max_scale_down_fraction:g}/min; step {args.step_s:g} s, "
        f"replica start {args.start_delay_s:g} s, rate x {args.rate_scale}"
    )
    entries = []
    for model in models:
        entry = run_model(model, traces[model], args)
        entries.append(entry)
        print("\n".join(format_model(entry)))
    if args.json:
        args.json.write_text(
            json.dumps({"arguments": vars(args) | {"json": str(args.json)}, "models": entries}, indent=2, default=str)
            + "\n"
        )
        print(f"Results written to {args.json}")


if __name__ == "__main__":
    main()
