"""The violations of a run: counted by dialect and route, then each one, grouped by request."""

from __future__ import annotations

from collections import Counter

from speclib.check import NULLABLE
from speclib.run import Result


def table(results: list[Result]) -> str:
    """Counts by dialect and route (violations, and required-but-nullable apart), then every
    finding of each request."""
    violations: Counter[tuple[str, str]] = Counter()
    nullable: Counter[tuple[str, str]] = Counter()
    requests: Counter[tuple[str, str]] = Counter()
    for result in results:
        key = (result.case.dialect, result.route)
        requests[key] += 1
        for v in result.violations:
            (nullable if v.kind == NULLABLE else violations)[key] += 1
    width = max((len(r) for _, r in requests), default=5)
    lines = [
        f"{'dialect':<10} {'route':<{width}} {'requests':>8} {'violations':>10} {'nullable':>8}"
    ]
    for dialect, route in sorted(requests):
        key = (dialect, route)
        lines.append(
            f"{dialect:<10} {route:<{width}} {requests[key]:>8} {violations[key]:>10} "
            f"{nullable[key]:>8}"
        )
    total_v, total_n = sum(violations.values()), sum(nullable.values())
    lines.append(f"{'all':<10} {'':<{width}} {len(results):>8} {total_v:>10} {total_n:>8}")
    lines.append("")
    for result in results:
        if not result.violations:
            continue
        case = result.case
        lines.append(f"{case.dialect} | {result.route} | {case.name} | {result.status}")
        for v in sorted(result.violations, key=lambda v: (v.kind == NULLABLE, v.path)):
            kind = "required but nullable" if v.kind == NULLABLE else v.kind
            lines.append(f"    [{kind}] {v.path}: {v.what}")
    return "\n".join(lines)


def failing(results: list[Result]) -> int:
    """How many findings are violations (required-but-nullable ones aside)."""
    return sum(1 for r in results for v in r.violations if v.kind != NULLABLE)
