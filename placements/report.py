"""Plain-text report of a placement plan, for the terminal."""

from placements.models import TIER_ORDER, PlacementPlan
from placements.planning import PlanDiff


def format_table(headers: list[str], rows: list[list], align: str = "") -> str:
    """Render rows as a fixed-width table; ``align`` has one 'l' or 'r' per column (default: text left)."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [
        max(len(headers[i]), *(len(row[i]) for row in cells)) if cells else len(headers[i]) for i in range(len(headers))
    ]
    align = align or "l" * len(headers)

    def line(values: list[str]) -> str:
        parts = [
            value.rjust(width) if side == "r" else value.ljust(width)
            for value, width, side in zip(values, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in cells)])


def format_plan(plan: PlacementPlan, diff: PlanDiff | None, top_regions: int = 25) -> str:
    summary = plan.summary
    gap = "n/a" if plan.gap is None else f"{plan.gap:.2%}"
    lines = [
        f"Plan v{plan.version} ({plan.get_status_display()}, trigger {plan.trigger})",
        f"  deployments {summary['deployments']}, clusters {summary['schedulable_clusters']} schedulable of "
        f"{summary['clusters']}, candidates {plan.parameters.get('candidates', 'n/a')}",
        f"  replicas requested {summary['requested_replicas']}, placed {summary['placed_replicas']}, "
        f"unmet {summary['unmet_replicas']}",
        f"  solver {plan.solver} ({plan.solver_status}), model build {plan.build_seconds:.2f} s, "
        f"solve {plan.solve_seconds:.2f} s, gap to bound {gap}",
        f"  objective {plan.objective:.2f}, greedy placement's objective {plan.greedy_objective:.2f}",
    ]
    exclusions = plan.parameters.get("exclusions") or {}
    if exclusions.get("providers") or exclusions.get("regions"):
        lines.append(f"  treated as down: {exclusions}")

    lines += [
        "",
        "Replicas by provider",
        format_table(
            ["provider", "replicas"], [[name, count] for name, count in summary["replicas_by_provider"].items()], "lr"
        ),
    ]
    regions = sorted(summary["replicas_by_region"].items(), key=lambda item: -item[1])
    shown = regions[:top_regions]
    lines += [
        "",
        f"Replicas by region (top {len(shown)} of {len(regions)})",
        format_table(["region", "replicas"], [[name, count] for name, count in shown], "lr"),
    ]
    tier_rows = [
        [tier.value, summary["requested_by_tier"].get(tier.value, 0), summary["unmet_by_tier"].get(tier.value, 0)]
        for tier in TIER_ORDER
    ]
    lines += ["", "Unmet demand by tier (replicas)", format_table(["tier", "requested", "unmet"], tier_rows, "lrr")]

    if diff is not None:
        lines += [
            "",
            f"Change against the previous plan: +{diff.added} / -{diff.removed} replicas, "
            f"{diff.deployments_changed} deployments changed",
        ]
        if diff.by_location:
            moved = sorted(diff.by_location.items(), key=lambda item: -abs(item[1]))[:top_regions]
            lines.append(format_table(["region", "net change"], [[name, f"{delta:+d}"] for name, delta in moved], "lr"))
    return "\n".join(lines)
