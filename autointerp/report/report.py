"""A self-contained interactive HTML report of one run directory.

The page is one file: CSS and JS are inlined from the files beside this module, and the run's data is
embedded as JSON in a ``<script type="application/json">`` element. Nothing is fetched from the network,
so it works from ``file://``. Token text is untrusted: the JSON escapes ``<``, ``>`` and ``&`` (so no
string can close the script element) and the JS builds the page with ``textContent`` and
``createElement`` only. A Content-Security-Policy allows only the report's own script (by hash).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from autointerp.records import ActivationRecord, Score
from autointerp.report.rundata import RunData, load_run
from autointerp.rundir import atomic_write_text

_SLOT = re.compile(r"<!--@(CSS|JS|DATA|TITLE|CSP)@-->")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_REPORT_SPLITS = ("test_top", "test_quantiles", "test_random", "train")
_SPLIT_TITLES = {
    "test_top": "Top activating (held out)",
    "test_quantiles": "Across activation quantiles (held out)",
    "test_random": "Random windows (held out)",
    "train": "Shown to the explainer",
}


def _asset(name: str) -> str:
    return resources.files("autointerp.report").joinpath(name).read_text(encoding="utf-8")


def json_for_html(obj: Any) -> str:
    """JSON text safe to place inside a ``<script>`` element: ``<``, ``>``, ``&`` and the JS line
    separators are written as ``\\uXXXX`` escapes, so data can never close the element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)


def _num(x: float) -> float | None:
    """Round for the page (4 significant digits); non-finite -> None."""
    v = float(x)
    if not math.isfinite(v):
        return None
    return float(f"{v:.4g}")


def _score_json(s: Score | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"value": None if s.value is None else _num(s.value), "reason": s.reason}


def _clean(obj: Any) -> Any:
    """Replace non-finite floats (anywhere in ``obj``) by None, so the JSON stays valid."""
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _record_json(rec: ActivationRecord) -> dict[str, Any]:
    return {"tokens": rec.tokens, "acts": [_num(a) for a in rec.activations], "window": rec.window}


def report_data(run: RunData, *, max_examples: int = 20) -> dict[str, Any]:
    """The JSON document the page renders (public so notebooks and tests can inspect it)."""
    names = run.score_names()
    features: list[dict[str, Any]] = []
    for fid in run.features():
        stats = run.stats.get(fid)
        sel = run.selected(fid)
        base = run.baseline(fid)
        sel_scores = run.scores.get(sel.explanation_id, {}) if sel else {}
        base_scores = run.scores.get(base.explanation_id, {}) if base else {}
        shown = [e for e in (sel, base) if e is not None]
        examples: dict[str, list[dict[str, Any]]] = {}
        rec = run.records.get(fid)
        if rec is not None:
            for split in _REPORT_SPLITS:
                items = []
                for i, r in enumerate(getattr(rec, split)[:max_examples]):
                    item = _record_json(r)
                    sims: dict[str, Any] = {}
                    for e in shown:
                        sim = run.simulations.get((e.explanation_id, split, i))
                        if sim is not None:
                            sims[e.explanation_id] = (
                                {"expected": [_num(v) for v in sim.expected], "failed": None}
                                if sim.expected is not None
                                else {"expected": None, "failed": sim.failed}
                            )
                    item["sims"] = sims
                    items.append(item)
                if items:
                    examples[split] = items
        features.append(
            {
                "id": fid,
                "label": sel.text if sel else None,
                "label_id": sel.explanation_id if sel else None,
                "label_failed": None if sel else next(
                    (e.failed for e in run.explanations_of(fid) if e.failed and not e.baseline), None
                ),
                "baseline_id": base.explanation_id if base else None,
                "baseline_label": base.text if base else None,
                "stats": None if stats is None else _clean(stats.to_json()),
                "scores": {n: _score_json(sel_scores.get(n)) for n in names},
                "baseline": {n: _score_json(base_scores.get(n)) for n in names},
                "explanations": [
                    {
                        "id": e.explanation_id,
                        "text": e.text,
                        "explainer": e.explainer,
                        "candidate": e.candidate,
                        "baseline": e.baseline,
                        "selected": sel is not None and e.explanation_id == sel.explanation_id,
                        "failed": e.failed,
                        "simulator": run.simulators.get(e.explanation_id),
                        "scores": {n: _score_json(run.scores.get(e.explanation_id, {}).get(n)) for n in names},
                    }
                    for e in run.explanations_of(fid)
                ],
                "examples": examples,
            }
        )
    m = run.manifest
    return {
        "title": f"autointerp report: {run.path.name}",
        "run": {
            "path": str(run.path),
            "command": m.get("command"),
            "created_at": m.get("created_at"),
            "config": m.get("config", {}),
            "prompts": m.get("prompts", {}),
            "versions": m.get("versions", {}),
        },
        "usage": run.usage,
        "score_names": names,
        "primary_score": "correlation" if "correlation" in names else (names[0] if names else None),
        "split_titles": _SPLIT_TITLES,
        "features": features,
    }


def render_html(data: dict[str, Any]) -> str:
    """Fill the page template with the inlined CSS, JS and the embedded data."""
    js = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )
    parts = {
        "CSS": _asset("report.css"),
        "JS": js,
        "DATA": json_for_html(data),
        "TITLE": html.escape(str(data.get("title", "autointerp report"))),
        "CSP": html.escape(csp, quote=False).replace('"', "&quot;"),
    }
    # One pass over the template: text inserted into one slot is never scanned for other slots.
    return _SLOT.sub(lambda mt: parts[mt.group(1)], _asset("template.html"))


def build_report(run_dir: Path, out: Path | None = None, *, max_examples: int = 20) -> Path:
    """Write the HTML report of the run at ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    run = load_run(Path(run_dir))
    path = Path(out) if out is not None else run.path / "report.html"
    atomic_write_text(path, render_html(report_data(run, max_examples=max_examples)))
    return path
