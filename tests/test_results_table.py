"""The result tables of ``autointerp explain`` read in an 80-column terminal: nothing is cut off."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from autointerp.cli.results_table import feature_table, means_table
from autointerp.export import feature_rows
from autointerp.pipeline import summarize
from autointerp.report.synthetic import write_synthetic_run

LONG = ("the second token of multi-token surnames of nineteenth-century European painters, "
        "especially after a first name or an initial")


def _render(*tables: object, width: int = 80) -> str:
    con = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    for t in tables:
        con.print(t)
    return con.export_text()


def _column_text(text: str, col: int) -> str:
    """The text of one column of a rich table (its cells' lines joined by spaces)."""
    parts = [line.split("│")[col + 1].strip() for line in text.splitlines() if line.startswith("│")]
    return " ".join(p for p in parts if p)


def test_result_tables_fit_80_columns_with_every_statistic_visible(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=4)
    rows = feature_rows(run.path)
    rows[0]["explanation"] = LONG
    summary = summarize(run.path)
    names = ["correlation", "detection", "fuzzing", "saebench_detection"]
    text = _render(feature_table(rows, names), means_table(summary.scores, summary.n_scored))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    # The long label wraps instead of being cut: every word is there.
    labels = _column_text(text, 1).replace("- ", "-")
    for word in LONG.split():
        assert word in labels, word
    # Every score with its explained and baseline value, one line each.
    for r in rows:
        for n in ("correlation", "detection"):
            v, b = r[f"score_{n}"], r[f"baseline_{n}"]
            want = f"{'-' if v is None else f'{v:.3f}':>6} /{'-' if b is None else f'{b:.3f}':>6}"
            assert want in text, (n, want)
    assert "saebench_detection      - /     -" in text
    # Run-level means: mean, CI and n of both the explained and the baseline group.
    for name, groups in summary.scores.items():
        for g in ("explained", "baseline"):
            ci = groups[g]
            assert ci is not None
            assert f"{ci[0]:.3f}" in text and f"[{ci[1]:.3f}, {ci[2]:.3f}]" in text
            assert f"n={summary.n_scored[name][g]}" in text


def test_feature_table_names_failed_explanations_and_multi_source_ids(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=2)
    rows = feature_rows(run.path)
    rows[1]["explanation"] = None
    rows[1]["failed"] = "the explainer's answer had no label"
    rows[0]["source"] = "other/L1/mlp_neurons"
    text = _render(feature_table(rows, ["correlation"]))
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = _column_text(text, 1)
    assert "(failed: the explainer's answer had no label)" in cells
    assert rows[1]["feature"] in _column_text(text, 0).replace(" ", "")


def test_scores_undefined_for_every_feature_get_no_row_but_are_named() -> None:
    scores = {"correlation": {"explained": (0.2, 0.1, 0.3), "baseline": (0.0, -0.1, 0.1)},
              "r_squared": {"explained": None, "baseline": None}}
    n = {"correlation": {"explained": 5, "baseline": 5}, "r_squared": {"explained": 0, "baseline": 0}}
    text = _render(means_table(scores, n))
    assert "│ correlation" in text and "│ r_squared" not in text
    assert "undefined for every feature: r_squared" in text
