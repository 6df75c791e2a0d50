"""Benchmark failover: time from a whole provider's first missed heartbeat to every affected replica ready elsewhere.

Usage: .venv/bin/python bench/failover.py [--catalog ../shared/data] [--deployments 300] [--drills 5]
       [--provider NAME] [--heartbeat-s 10] [--reset]

Builds the demo fleet as ``mcm_demo --catalog`` does (first run, or with ``--reset``), starts one
emulated Kubernetes cluster per fleet cluster in this process, converges the plan, then runs
``--drills`` outage drills of one provider (``placements.drill``). The provider defaults to the one
with the most placed replicas.

Between drills it brings the provider back with a failback delay of 0 s and times the failback
(``--recovery-timeout-s``), then converges the current plan (``--converge-timeout-s``). When the
fleet does not converge in that time, it stops the emulated clusters, starts an empty set and
converges the current plan on them, so that the next drill starts from a converged fleet. The
table's last column shows when that happened.

Without ``DATABASE_URL`` it runs on embedded SQLite under ``var/bench-failover`` (or
``MCM_EMBEDDED_DIR``); with it, on that database. It prints which.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
if not os.environ.get("DATABASE_URL"):
    os.environ.setdefault("MCM_EMBEDDED", "1")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("MCM_EMBEDDED_DIR", str(ROOT / "var" / "bench-failover"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcm_site.settings")
os.environ.setdefault("LOG_LEVEL", "ERROR")

import django  # noqa: E402

django.setup()

from collections import defaultdict  # noqa: E402

from django.conf import settings  # noqa: E402

from placements import demo_loop  # noqa: E402
from placements.demo import build_catalog_fleet  # noqa: E402
from placements.drill import Timeline, run_drill, settle_health  # noqa: E402
from placements.models import Assignment, Deployment  # noqa: E402
from placements.services import current_plan  # noqa: E402


def database_label() -> str:
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"embedded SQLite ({settings.DATABASES['default']['NAME']})"
    return f"PostgreSQL ({settings.DATABASES['default']['NAME']})"


def replicas_by_provider() -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    plan = current_plan()
    rows = Assignment.objects.filter(plan=plan).values_list("cluster__region__provider__name", "replicas")
    for provider, replicas in rows:
        counts[provider] += replicas
    return dict(counts)


def converge(timeout_s: float) -> demo_loop.Convergence:
    plan = current_plan()
    return demo_loop.run_loop(plan, timeout_s=timeout_s, progress=lambda line: None)


def restart_fleet(emulated: list, ready_delay_s: float) -> tuple[list, demo_loop.Convergence]:
    """Stop the emulated clusters, start an empty set, let health settle and converge the current plan."""
    print("  not converged: restarting the emulated clusters empty and converging the current plan on them")
    demo_loop.stop_emulated_fleet(emulated)
    emulated = demo_loop.start_emulated_fleet(ready_delay_s=ready_delay_s)
    lost = settle_health()
    state = converge(600.0)
    print(
        f"  restarted: lost after settling: {lost or 'none'}; {state.converged}/{state.deployments} deployments "
        f"converged in {state.seconds:.1f} s"
    )
    return emulated, state


def row(number: int, outage: Timeline, recovery: Timeline | None, reconverged: str) -> list[str]:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    plan = outage.plan
    return [
        str(number),
        str(outage.affected),
        str(outage.moved),
        str(outage.unmet),
        seconds(outage.first_heartbeat_s),
        seconds(outage.declared_s),
        "-" if plan is None else f"{plan.offset_s:.1f} (v{plan.version}, solve {plan.solve_s:.2f})",
        seconds(outage.ready_s),
        seconds(outage.heartbeat_to_ready_s),
        "-" if recovery is None else seconds(recovery.ready_s),
        reconverged,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=Path(settings.MCM_DATA_DIR), help="Data folder to build from.")
    parser.add_argument("--deployments", type=int, default=300, help="Demo deployments (default 300).")
    parser.add_argument("--drills", type=int, default=5, help="Outage drills to run (default 5).")
    parser.add_argument("--provider", help="Provider to take down (default: the one with the most placed replicas).")
    parser.add_argument("--heartbeat-s", type=float, default=10.0, help="Seconds between heartbeats (default 10).")
    parser.add_argument("--ready-delay", type=float, default=2.0, help="Seconds an emulated replica takes to be ready.")
    parser.add_argument(
        "--timeout-s", type=float, default=300.0, help="Seconds an outage drill may take (default 300)."
    )
    parser.add_argument(
        "--recovery-timeout-s", type=float, default=120.0, help="Seconds a recovery drill may take (default 120)."
    )
    parser.add_argument(
        "--converge-timeout-s",
        type=float,
        default=60.0,
        help="Seconds to wait for the fleet to converge after a recovery before restarting it (default 60).",
    )
    parser.add_argument("--reset", action="store_true", help="Empty the database and build the fleet again.")
    args = parser.parse_args()

    print(f"Database: {database_label()}")
    print(f"CPUs: {os.cpu_count()}, load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    build_catalog_fleet(catalog=args.catalog, deployments=args.deployments, reset=args.reset)
    deployments = Deployment.objects.count()
    if deployments < args.deployments:
        print(f"The database holds {deployments} deployments, fewer than {args.deployments}: run with --reset")
        return 1
    by_provider = replicas_by_provider()
    provider = args.provider or max(by_provider, key=by_provider.get)
    plan = current_plan()
    print(
        f"Fleet: {deployments} deployments, plan v{plan.version} places {sum(by_provider.values())} replicas; "
        f"provider {provider} runs {by_provider.get(provider, 0)} of them"
    )

    print(f"Starting emulated clusters (ready delay {args.ready_delay} s)...")
    emulated = demo_loop.start_emulated_fleet(ready_delay_s=args.ready_delay)
    rows = []
    results: list[float] = []
    try:
        lost = settle_health()
        print(f"  {len(emulated)} clusters; lost to placement after settling: {lost or 'none'}")
        state = converge(600.0)
        print(f"  converged: {state.converged}/{state.deployments} deployments in {state.seconds:.1f} s")
        for number in range(1, args.drills + 1):
            print(f"\nDrill {number}: provider {provider} unreachable, heartbeat {args.heartbeat_s:g} s")
            outage = run_drill(
                scope="provider",
                target=provider,
                emulated=emulated,
                heartbeat_s=args.heartbeat_s,
                timeout_s=args.timeout_s,
            )
            print(outage.format())
            if outage.heartbeat_to_ready_s is not None:
                results.append(outage.heartbeat_to_ready_s)
            recovery = run_drill(
                scope="provider",
                target=provider,
                emulated=emulated,
                recover=True,
                heartbeat_s=args.heartbeat_s,
                timeout_s=args.recovery_timeout_s,
                failback_after_s=0,
                baseline_version=outage.baseline_version,
            )
            print()
            print(recovery.format())
            state = converge(args.converge_timeout_s)
            print(
                f"Converging plan v{current_plan().version}: {state.converged}/{state.deployments} deployments "
                f"after {state.seconds:.1f} s"
            )
            converged_again = f"{state.seconds:.1f}"
            if not state.done:
                emulated, state = restart_fleet(emulated, args.ready_delay)
                converged_again = (
                    f"restarted, {state.seconds:.1f}"
                    if state.done
                    else f"not converged ({state.converged}/{state.deployments})"
                )
            rows.append(row(number, outage, recovery, converged_again))
            print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        demo_loop.stop_emulated_fleet(emulated)

    headers = [
        "drill",
        "affected",
        "re-placed",
        "unmet",
        "first miss s",
        "declared down s",
        "plan made s",
        "ready elsewhere s",
        "first miss to ready s",
        "failback ready s",
        "converged again s",
    ]
    print("\nOffsets in seconds from the moment the fault was switched on")
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    # A drill that did not finish counts as longer than any that did, so the median is over every drill.
    finished = sorted(results)
    ranked = finished + [float("inf")] * (args.drills - len(finished))
    median = statistics.median(ranked)
    median_text = f"{median:.1f} s" if median != float("inf") else f"more than {args.timeout_s:g} s"
    print(
        "\nFirst missed heartbeat to every affected replica ready elsewhere: "
        f"median of {args.drills} drills {median_text}; "
        f"{len(finished)} finished (min {min(finished, default=0):.1f} s, max {max(finished, default=0):.1f} s), "
        f"{args.drills - len(finished)} did not finish within {args.timeout_s:g} s; target < 60 s"
    )
    print(f"Database: {database_label()}; load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
