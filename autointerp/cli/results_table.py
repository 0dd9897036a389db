"""The result tables that ``autointerp explain`` and ``autointerp score`` print, laid out to read in an
80-column terminal.

Width does not grow with the number of scores: the per-feature table has three columns (feature, label,
scores) and stacks one line per score inside the scores cell (``name  value / baseline``); labels wrap.
The run-level table stacks each mean over its 95% CI and its n, so the CI and the baseline's n stay
visible at 80 columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

MAX_ROWS = 200
"""Features listed in the terminal; the rest are in ``autointerp export`` / ``autointerp report``."""


def _value(v: Any) -> str:
    return f"{'-' if v is None else f'{float(v):.3f}':>6}"


def feature_table(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> Table:
    """One row per feature (the first ``MAX_ROWS``): id, wrapped label, and per score name one line
    ``name  explained / baseline`` (``-`` where a score is absent or undefined)."""
    sources = sorted({str(r["source"]) for r in rows})
    one_source = len(sources) == 1
    title = f"features of {escape(sources[0])}" if one_source else "features"
    width = max((len(n) for n in names), default=5)
    t = Table(title=title, caption="scores: explained / shuffled baseline" if names else None, expand=False)
    t.add_column("feature", overflow="fold", max_width=18)
    t.add_column("explanation", overflow="fold", ratio=1, min_width=16)
    if names:
        t.add_column("scores", no_wrap=True, min_width=width + 16)
    for r in rows[:MAX_ROWS]:
        fid = str(r["index"]) if one_source else str(r["feature"])
        label = r["explanation"] if r["explanation"] else f"(failed: {r['failed']})"
        cells: list[Text | str] = [Text(fid), Text(str(label))]
        if names:
            lines = Text()
            for k, n in enumerate(names):
                if k:
                    lines.append("\n")
                lines.append(f"{n:<{width}} ")
                lines.append(_value(r.get(f"score_{n}")))
                lines.append(f" /{_value(r.get(f'baseline_{n}'))}", style="dim")
            cells.append(lines)
        t.add_row(*cells)
    return t


def _stacked(ci: tuple[float, float, float] | None, n: int) -> str:
    if ci is None:
        return f"undefined\nn={n}"
    return f"{ci[0]:.3f}\n[{ci[1]:.3f}, {ci[2]:.3f}]\nn={n}"


def means_table(
    scores: dict[str, dict[str, tuple[float, float, float] | None]], n_scored: dict[str, dict[str, int]]
) -> Table:
    """Run-level mean of every score, explained and shuffled baseline (and the token-list yardstick where the run
    has one), each stacked over its bootstrap 95% CI and its n. Scores undefined for every feature (e.g.
    ``r_squared`` under ``--no-calibrate``) get no row: the caption names them."""
    empty = sorted(n for n, counts in n_scored.items() if not any(counts.values()))
    scores = {n: g for n, g in scores.items() if n not in empty}
    caption = f"undefined for every feature: {', '.join(empty)}" if empty else None
    t = Table(title="run-level means (95% bootstrap CI)", caption=caption)
    t.add_column("score")
    t.add_column("explained", justify="right")
    t.add_column("shuffled baseline", justify="right")
    yardstick = any("yardstick" in groups for groups in scores.values())
    if yardstick:
        t.add_column("token list", justify="right")
    for name, groups in sorted(scores.items()):
        n = n_scored.get(name, {})
        cells = [_stacked(groups.get(g), n.get(g, 0)) for g in ("explained", "baseline", "yardstick")[: 2 + yardstick]]
        t.add_row(name, *cells, end_section=True)
    return t
