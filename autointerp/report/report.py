"""The interactive HTML feature browser of one run directory (or of an exported labelled dataset).

One code path builds two layouts from the same data:

- **index**: everything the list, the overview and the compare view need, one small columnar JSON
  document (feature ids, labels, every score with its undefined reason, firing rate, max activation,
  source), embedded in the page;
- **cards**: per-feature detail (candidate labels with their scores, examples with true and simulated
  activations, statistics, raw answers), cut into chunks of ``CHUNK_SIZE`` features.

``layout="file"`` (default for runs of up to ``SINGLE_FILE_MAX`` features) writes one self-contained page
that embeds the chunks and works from ``file://``. ``layout="folder"`` writes ``index.html`` plus
``chunks/<k>.json``, loaded on demand with ``fetch`` (serve it with ``autointerp serve``; browsers block
``fetch`` from ``file://``).

Guarantees: nothing is fetched from the network; data is embedded as JSON with ``<``, ``>``, ``&`` and the
JS line separators escaped (no string can close a script element); the page builds the DOM with
``textContent``/``createElement`` only; a Content-Security-Policy allows only the report's own script
(by hash) and same-origin ``fetch``. Undefined numbers stay ``null`` with their reason.

Output-side data: the vocabulary projection (``RunData.vocab``, from ``FeatureRecord.vocab_projection``:
``{"top": [[token, logit], ...], "bottom": [...]}``) is shown when the run has it; output-side scores
(intervention, ...) appear with every other score.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autointerp.errors import UserError
from autointerp.records import ActivationRecord, FeatureId, Score
from autointerp.report.rundata import ExplanationRow, RunData, load_run
from autointerp.rundir import (
    EXPLANATIONS,
    MANIFEST,
    RECORDS,
    SCORES,
    SIMULATIONS,
    USAGE,
    USAGE_LOG,
    atomic_write_text,
)

log = logging.getLogger(__name__)

Layout = Literal["auto", "file", "folder"]

SINGLE_FILE_MAX = 1000
"""Runs with at most this many features get one self-contained page by default; larger ones a folder."""
CHUNK_SIZE = 64
"""Features per chunk of card data."""
HIST_BINS = 24

_SLOT = re.compile(r"<!--@(CSS|JS|DATA|CHUNKS|TITLE|CSP)@-->")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_REPORT_SPLITS = ("test_top", "test_quantiles", "test_random", "train")
_SPLIT_TITLES = {
    "test_top": "Top activating (held out)",
    "test_quantiles": "Across activation quantiles (held out)",
    "test_random": "Random windows (held out)",
    "train": "Shown to the explainer",
}
_RUN_FILES = (MANIFEST, RECORDS, EXPLANATIONS, SIMULATIONS, SCORES, USAGE_LOG, USAGE)


def _asset(name: str) -> str:
    return resources.files("autointerp.report").joinpath(name).read_text(encoding="utf-8")


def json_for_html(obj: Any) -> str:
    """JSON text safe to place inside a ``<script>`` element: ``<``, ``>``, ``&`` and the JS line
    separators are written as ``\\uXXXX`` escapes, so data can never close the element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)


def _num(x: float | None) -> float | None:
    """Round for the page (4 significant digits); None and non-finite -> None."""
    if x is None:
        return None
    v = float(x)
    if not math.isfinite(v):
        return None
    if v == 0.0:
        return 0.0
    return round(v, 3 - math.floor(math.log10(abs(v))))


def _nums(values: Any) -> list[float | None]:
    """An array for the page: about 4 significant digits of its largest magnitude (one rounding for the
    whole array, vectorised); non-finite -> None."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    top = float(np.max(np.abs(x[finite]))) if finite.any() else 0.0
    decimals = 3 - int(np.floor(np.log10(top))) if top > 0 else 0
    out: list[float | None] = np.round(np.where(finite, x, 0.0), max(decimals, 0)).tolist()
    if not finite.all():
        for k in np.flatnonzero(~finite).tolist():
            out[k] = None
    return out


def _score_json(s: Score | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"value": _num(s.value), "reason": s.reason}


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
    return {"tokens": rec.tokens, "acts": _nums(rec.activations), "window": rec.window}


# -- reading, with the reader's warnings kept for the page ---------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _warnings_of_reading() -> Iterator[list[str]]:
    """Collect the warnings the run reader logs (skipped corrupt lines, with file and line), so the page
    shows them too; they still reach the log."""
    handler = _Collect()
    logger = logging.getLogger("autointerp")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def read_run(path: Path, *, records: bool = True) -> tuple[RunData, list[str]]:
    """The run (or exported dataset) at ``path`` and the warnings raised while reading it."""
    from autointerp.report.exported import is_export_file, load_export

    with _warnings_of_reading() as warnings:
        run = load_export(path) if is_export_file(path) else load_run(Path(path), records=records)
    return run, list(warnings)


# -- cards -------------------------------------------------------------------------------------------

_NEEDED = ("explainer_kind", "n_top_examples", "n_quantile_examples", "cot", "highlight_threshold")
"""Config fields a manifest must record to rebuild the explainer prompt (the rest, added later, default off)."""


def _explainer_settings(manifest: dict[str, Any]) -> tuple[Any, str | None]:
    """The run's ExplainerSettings from its manifest config (``ExplainConfig.explainer_settings``, the run's
    own), or (None, why not)."""
    from autointerp.errors import UserError
    from autointerp.explain import EXPLAINER_KINDS
    from autointerp.pipeline import ExplainConfig

    cfg = manifest.get("config", {})
    why = "the run's manifest does not record the explainer settings needed to rebuild the prompt"
    if any(k not in cfg for k in _NEEDED) or cfg.get("explainer_kind") not in EXPLAINER_KINDS:
        return None, why
    try:
        return ExplainConfig.from_dict(cfg).explainer_settings(), None
    except (UserError, TypeError, ValueError):
        return None, why


def _explainer_prompt(run: RunData, fid: str, expl: ExplanationRow | None, settings: Any, why: str | None
                      ) -> dict[str, Any] | None:
    """The exact explainer prompt of ``expl``, rebuilt from the record and the run's settings, checked by
    the prompt-template hash stored with the label; or the reason it cannot be shown."""
    if expl is None or expl.baseline:
        return None
    if settings is None:
        return {"messages": None, "reason": why}
    from autointerp.explain import explainer_prompt_hash, explainer_request_for

    rec = run.records.get(fid)
    if rec is None:
        return {"messages": None, "reason": "the feature's record is not in the run"}
    stored, now = expl.raw.get("prompt_hash"), explainer_prompt_hash(settings)
    if stored != now:
        return {"messages": None,
                "reason": f"the prompt template changed since this run (hash {stored}, now {now})"}
    req = explainer_request_for(settings, rec)
    return {"messages": [{"role": m.role, "content": m.content} for m in req.messages], "reason": None}



def feature_card(
    run: RunData, fid: str, *, max_examples: int = 20, names: list[str] | None = None,
    settings: tuple[Any, str | None] | None = None,
) -> dict[str, Any]:
    """Everything the page shows for one feature (public so notebooks and tests can inspect it).
    ``names`` and ``settings`` (the run's score names and explainer settings) are computed when not given;
    pass them when building many cards."""
    names = run.score_names() if names is None else names
    settings = _explainer_settings(run.manifest) if settings is None else settings
    stats = run.stats.get(fid)
    sel = run.selected(fid)
    base = run.baseline(fid)
    yard = run.yardstick(fid)
    sel_scores = run.scores.get(sel.explanation_id, {}) if sel else {}
    base_scores = run.scores.get(base.explanation_id, {}) if base else {}
    yard_scores = run.scores.get(yard.explanation_id, {}) if yard else {}
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
                            {"expected": _nums(sim.expected), "failed": None}
                            if sim.expected is not None
                            else {"expected": None, "failed": sim.failed}
                        )
                item["sims"] = sims
                items.append(item)
            if items:
                examples[split] = items
    vocab = run.vocab.get(fid)
    stats_json = None if stats is None else _clean(stats.to_json())
    if stats_json is not None and run.manifest.get("command") == "export-file" and not stats_json["n_tokens"]:
        del stats_json["n_tokens"]  # not in the exported file: unknown, not 0
    expls = run.explanations_of(fid)
    return {
        "id": fid,
        "label": sel.text if sel else None,
        "label_id": sel.explanation_id if sel else None,
        "label_failed": None if sel else run.failed_reason(fid),
        "baseline_id": base.explanation_id if base else None,
        "baseline_label": base.text if base else None,
        "stats": stats_json,
        "scores": {n: _score_json(sel_scores.get(n)) for n in names},
        "baseline": {n: _score_json(base_scores.get(n)) for n in names},
        "yardstick_label": yard.text if yard else None,
        "yardstick": {n: _score_json(yard_scores.get(n)) for n in names} if yard else None,
        "explanations": [
            {
                "id": e.explanation_id,
                "text": e.text,
                "explainer": e.explainer,
                "candidate": e.candidate,
                "baseline": e.baseline,
                "yardstick": e.yardstick,
                "selected": sel is not None and e.explanation_id == sel.explanation_id,
                "failed": e.failed,
                "simulator": run.simulators.get(e.explanation_id),
                "prompt_hash": e.raw.get("prompt_hash"),
                "raw": e.raw.get("raw"),
                "scores": {n: _score_json(run.scores.get(e.explanation_id, {}).get(n)) for n in names},
                "settings": {
                    n: _clean(sc.settings) for n, sc in run.scores.get(e.explanation_id, {}).items() if sc.settings
                },
            }
            for e in expls
        ],
        "examples": examples,
        "vocab": _clean(vocab) if isinstance(vocab, dict) else None,
        "prompt": _explainer_prompt(run, fid, sel, *settings),
    }


# -- index: list columns, overview, compare -------------------------------------------------------------


@dataclass
class _Columns:
    """Columnar per-feature data: one list per column, reasons interned in ``reasons``."""

    names: list[str]
    ids: list[str] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    index: list[int | None] = field(default_factory=list)
    label: list[str | None] = field(default_factory=list)
    label_failed: list[int | None] = field(default_factory=list)
    freq: list[float | None] = field(default_factory=list)
    max: list[float | None] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    reason: dict[str, list[int | None]] = field(default_factory=dict)
    baseline: dict[str, list[float | None]] = field(default_factory=dict)
    baseline_reason: dict[str, list[int | None]] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    """Scores undefined for every feature (e.g. r_squared under --no-calibrate): no column, no card line; the
    overview names each with its most common reason."""

    def intern(self, reason: str | None) -> int | None:
        if reason is None:
            return None
        return self.reasons.setdefault(reason, len(self.reasons))


def _split_id(fid: str) -> tuple[str, int | None]:
    try:
        f = FeatureId.parse(fid)
    except (ValueError, TypeError):
        return "", None
    return f.source, f.index


def _columns(run: RunData, features: list[str]) -> _Columns:
    names = run.score_names()
    c = _Columns(names)
    # scores undefined by the run's settings for every feature and explanation: no column, no card line
    by_config = {n: bool(features) for n in names}
    for n in names:
        c.scores[n], c.reason[n], c.baseline[n], c.baseline_reason[n] = [], [], [], []
    for fid in features:
        src, idx = _split_id(fid)
        c.ids.append(fid)
        c.source.append(c.sources.setdefault(src, len(c.sources)))
        c.index.append(idx)
        sel, base = run.selected(fid), run.baseline(fid)
        c.label.append(sel.text if sel else None)
        failed = None if sel else run.failed_reason(fid)
        failed = None if failed == "not explained" else failed
        c.label_failed.append(c.intern(failed) if failed else None)
        st = run.stats.get(fid)
        c.freq.append(_num(st.frequency) if st else None)
        c.max.append(_num(st.max) if st else None)
        sel_scores = run.scores.get(sel.explanation_id, {}) if sel else {}
        base_scores = run.scores.get(base.explanation_id, {}) if base else {}
        for n in names:
            s, b = sel_scores.get(n), base_scores.get(n)
            shown = [x for x in (s, b) if x is not None]
            by_config[n] = by_config[n] and bool(shown) and all(x.by_configuration for x in shown)
            c.scores[n].append(_num(s.value) if s else None)
            c.reason[n].append(c.intern(s.reason if s else "not scored"))
            c.baseline[n].append(_num(b.value) if b else None)
            c.baseline_reason[n].append(c.intern(b.reason if b else "not scored"))
    text = list(c.reasons)
    for n in [n for n, only in by_config.items() if only]:
        c.undefined[n] = Counter(text[r] for r in c.reason[n] if r is not None).most_common(1)[0][0]
        for d in (c.scores, c.reason, c.baseline, c.baseline_reason):
            del d[n]
    c.names = [n for n in names if n not in c.undefined]
    return c


def _hist(values: list[float], edges: np.ndarray) -> list[int]:
    if not values:
        return [0] * (len(edges) - 1)
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    return [int(x) for x in counts]


def _edges(*groups: list[float]) -> np.ndarray:
    allv = [v for g in groups for v in g]
    if not allv:
        return np.linspace(0.0, 1.0, HIST_BINS + 1)
    lo, hi = float(min(allv)), float(max(allv))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, HIST_BINS + 1)


def _group(values: list[float | None], reasons: list[int | None], reason_text: list[str]) -> dict[str, Any]:
    from autointerp.score import bootstrap_ci

    defined = [v for v in values if v is not None]
    ci = bootstrap_ci(defined, n=1000, seed=0)
    undefined = Counter(reason_text[r] for v, r in zip(values, reasons, strict=True) if v is None and r is not None)
    return {
        "n": len(defined),
        "mean": None if ci is None else _num(ci[0]),
        "ci": None if ci is None else [_num(ci[1]), _num(ci[2])],
        "undefined": dict(undefined.most_common()),
    }


def _overview(run: RunData, c: _Columns, warnings: list[str]) -> dict[str, Any]:
    yards = [run.yardstick(fid) for fid in c.ids]
    yard_scores = [run.scores.get(y.explanation_id, {}) if y else {} for y in yards]
    yard_values: dict[str, list[float | None]] = {}
    yard_reasons: dict[str, list[int | None]] = {}
    for n in c.names:
        got = [ys.get(n) for ys in yard_scores]
        yard_values[n] = [_num(s.value) if s else None for s in got]
        yard_reasons[n] = [c.intern(s.reason if s else "not scored") for s in got]
    reason_text = list(c.reasons)
    scores: dict[str, Any] = {}
    for n in c.names:
        ex = [v for v in c.scores[n] if v is not None]
        bl = [v for v in c.baseline[n] if v is not None]
        edges = _edges(ex, bl)
        scores[n] = {
            "edges": [_num(e) for e in edges.tolist()],
            "explained": {**_group(c.scores[n], c.reason[n], reason_text), "hist": _hist(ex, edges)},
            "baseline": {**_group(c.baseline[n], c.baseline_reason[n], reason_text), "hist": _hist(bl, edges)},
        }
        if any(y is not None for y in yards):  # the token-list yardstick: means beside the floor
            scores[n]["yardstick"] = _group(yard_values[n], yard_reasons[n], reason_text)
    failed_expl = Counter(e.failed for e in run.explanations.values() if e.failed)
    failed_sims = Counter(s.failed for s in run.simulations.values() if s.failed)
    present = {name: run.path.joinpath(name).exists() for name in _RUN_FILES} if run.path.is_dir() else {}
    n_explained = sum(1 for x in c.label if x is not None)
    missing: list[str] = []
    if not c.ids and run.path.joinpath("records").is_dir():
        missing.append(
            f"a sampling run (records/) with no explanations yet: label it with "
            f"`autointerp explain --cache-run {run.path}`, then report that run"
        )
    elif not c.ids:
        missing.append("no features: the run holds no records and no explanations yet")
    elif not run.explanations:
        missing.append(
            f"no explanations yet: {len(c.ids)} features have records; run `autointerp explain --cache-run` "
            "on the sampled run (or resume this run) to label and score them"
        )
    elif not c.names:
        missing.append("no scores yet: the explanations were not scored; run `autointerp score RUN_DIR`")
    return {
        "n_features": len(c.ids),
        "n_explained": n_explained,
        "scores": scores,
        "failed_explanations": dict(failed_expl.most_common()),
        "failed_simulations": dict(failed_sims.most_common()),
        "n_simulations": len(run.simulations),
        "stages": run.manifest.get("stages", {}),
        "files": present,
        "missing": missing,
        "warnings": warnings,
        "undefined_scores": c.undefined,
    }


def _spearman(x: list[float], y: list[float]) -> tuple[float | None, str | None]:
    """Spearman's rank correlation (ties: average ranks), or None with the reason it is undefined."""
    if len(x) < 3:
        return None, f"only {len(x)} feature(s) have both scores (needs 3)"
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None, "one of the scores is the same for every feature"
    return float(np.corrcoef(rx, ry)[0, 1]), None


def _preference(label: str, preferred: tuple[str, ...]) -> int:
    """Rank of ``label``'s score name (before any ``@judge``) in ``preferred``; after them when absent."""
    name = label.split("@", 1)[0]
    return preferred.index(name) if name in preferred else len(preferred)


SCATTER_X = ("correlation", "detection", "fuzzing", "embedding", "surprisal")
"""Input-side scores in the order the scatter prefers them (between pairs covering as many features)."""
SCATTER_Y = ("intervention", "intervention_kl", "intervention_logit_shift")
"""Output-side scores in the order the scatter prefers them."""


def _scatter(c: _Columns) -> dict[str, Any]:
    """The input-vs-output view: which score labels are input- and output-side (from the scorer registry),
    the default pair (the one that most features have both scores of; ties: :data:`SCATTER_X`, then
    :data:`SCATTER_Y` order), and Spearman's rho (with n, or the reason it is undefined) for every input x
    output pair, over the features with both scores. The page draws the points from the list's columns."""
    from autointerp.scorers.registry import score_side

    inputs = [n for n in c.names if score_side(n) == "input"]
    outputs = [n for n in c.names if score_side(n) == "output"]
    rho: dict[str, dict[str, Any]] = {}
    for x in inputs:
        rho[x] = {}
        for y in outputs:
            pairs = [(a, b) for a, b in zip(c.scores[x], c.scores[y], strict=True) if a is not None and b is not None]
            r, why = _spearman([a for a, _ in pairs], [b for _, b in pairs])
            rho[x][y] = {"rho": _num(r), "n": len(pairs), "reason": why}
    candidates = [(x, y) for x in inputs for y in outputs]
    best = min(candidates, default=None, key=lambda p: (-rho[p[0]][p[1]]["n"], _preference(p[0], SCATTER_X),
                                                   _preference(p[1], SCATTER_Y), p))
    return {"inputs": inputs, "outputs": outputs, "x": best[0] if best else None, "y": best[1] if best else None,
            "spearman": rho}


def _compare(run: RunData, other: RunData, c: _Columns, other_name: str) -> dict[str, Any]:
    """The other run's labels and scores on this run's features, and paired differences per score."""
    from autointerp.score import bootstrap_ci

    oc = _columns(other, c.ids)
    paired: dict[str, Any] = {}
    for n in c.names:
        if n not in oc.scores:
            continue
        diffs = [a - b for a, b in zip(c.scores[n], oc.scores[n], strict=True) if a is not None and b is not None]
        ci = bootstrap_ci(diffs, n=1000, seed=0)
        edges = _edges(diffs)
        paired[n] = {
            "n": len(diffs),
            "mean": None if ci is None else _num(ci[0]),
            "ci": None if ci is None else [_num(ci[1]), _num(ci[2])],
            "edges": [_num(e) for e in edges.tolist()],
            "hist": _hist(diffs, edges),
        }
    return {
        "name": other_name,
        "path": str(other.path),
        "n_common": sum(1 for fid in c.ids if fid in other.stats or other.selected(fid) is not None),
        "label": oc.label,
        "scores": {n: oc.scores[n] for n in c.names if n in oc.scores},
        "paired": paired,
    }


def report_data(
    run: RunData,
    *,
    max_examples: int = 20,
    compare: RunData | None = None,
    warnings: list[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, Any]:
    """The page's data: ``{"index": ..., "cards": [...]}`` with one card per feature in index order
    (public so notebooks and tests can inspect it)."""
    features = run.features()
    c = _columns(run, features)
    m = run.manifest
    index: dict[str, Any] = {
        "title": f"autointerp report: {run.path.name}",
        "run": {
            "path": str(run.path),
            "command": m.get("command"),
            "created_at": m.get("created_at"),
            "config": m.get("config", {}),
            "prompts": m.get("prompts", {}),
            "models": m.get("models", {}),
            "versions": m.get("versions", {}),
        },
        "usage": _clean(run.usage),
        "score_names": c.names,
        "primary_score": "correlation" if "correlation" in c.names else (c.names[0] if c.names else None),
        "split_titles": _SPLIT_TITLES,
        "chunk_size": chunk_size,
        "n_chunks": (len(features) + chunk_size - 1) // chunk_size,
        "list": {
            "id": c.ids,
            "source": c.source,
            "index": c.index,
            "label": c.label,
            "label_failed": c.label_failed,
            "freq": c.freq,
            "max": c.max,
            "scores": c.scores,
            "reason": c.reason,
            "baseline": c.baseline,
            "baseline_reason": c.baseline_reason,
        },
        "sources": list(c.sources),
        "reasons": list(c.reasons),
        "overview": _overview(run, c, warnings or []),
        "scatter": _scatter(c),
        "compare": None if compare is None else _compare(run, compare, c, compare.path.name),
    }
    settings = _explainer_settings(run.manifest)
    cards = [feature_card(run, fid, max_examples=max_examples, names=c.names, settings=settings) for fid in features]
    return {"index": index, "cards": cards}


# -- rendering ----------------------------------------------------------------------------------------


def _csp(js: str) -> str:
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    return (
        "default-src 'none'; "
        f"script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'"
    )


def _chunks(cards: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [cards[i : i + size] for i in range(0, len(cards), size)]


def render_html(index: dict[str, Any], inline_chunks: list[list[dict[str, Any]]] | None) -> str:
    """The page: template with the inlined CSS, JS, the index, and (single-file layout) every chunk as a
    ``<script type="application/json" id="chunk-K">`` element. ``inline_chunks`` None: the page
    fetches ``chunks/K.json`` instead."""
    js = _asset("report.js")
    chunks = "" if inline_chunks is None else "\n".join(
        f'<script type="application/json" id="chunk-{k}">{json_for_html(ch)}</script>'
        for k, ch in enumerate(inline_chunks)
    )
    parts = {
        "CSS": _asset("report.css"),
        "JS": js,
        "DATA": json_for_html({**index, "layout": "file" if inline_chunks is not None else "folder"}),
        "CHUNKS": chunks,
        "TITLE": html.escape(str(index.get("title", "autointerp report"))),
        "CSP": html.escape(_csp(js), quote=False).replace('"', "&quot;"),
    }
    # One pass over the template: text inserted into one slot is never scanned for other slots.
    return _SLOT.sub(lambda mt: parts[mt.group(1)], _asset("template.html"))


def write_report(
    data: dict[str, Any], out: Path, layout: Literal["file", "folder"], *, chunk_size: int = CHUNK_SIZE
) -> Path:
    """Write ``data`` (from :func:`report_data`) as one page (``out`` is the file) or as a folder
    (``out`` is the folder; returns its ``index.html``)."""
    chunks = _chunks(data["cards"], chunk_size)
    if layout == "file":
        atomic_write_text(out, render_html(data["index"], chunks))
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "chunks").mkdir(exist_ok=True)
    for k, ch in enumerate(chunks):
        atomic_write_text(out / "chunks" / f"{k}.json", json.dumps(ch, ensure_ascii=False, separators=(",", ":")))
    for stale in (out / "chunks").glob("*.json"):
        if stale.stem.isdigit() and int(stale.stem) >= len(chunks):
            stale.unlink()
    page = out / "index.html"
    atomic_write_text(page, render_html(data["index"], None))
    return page


def default_out(path: Path, layout: Literal["file", "folder"]) -> Path:
    """``RUN_DIR/report.html`` or ``RUN_DIR/report/``; for an export file, beside it."""
    path = Path(path)
    base = path if path.is_dir() else path.with_name(path.stem + "-report")
    if layout == "file":
        return base / "report.html" if path.is_dir() else base.with_suffix(".html")
    return base / "report" if path.is_dir() else base


def build_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    max_examples: int = 20,
    layout: Layout = "auto",
    compare: Path | None = None,
    single_file_max: int = SINGLE_FILE_MAX,
) -> Path:
    """Write the browser of the run (or exported dataset) at ``run_dir``; returns the page to open.

    ``layout`` "auto": one file up to ``single_file_max`` features, else a folder. ``out`` defaults to
    ``RUN_DIR/report.html`` (file) or ``RUN_DIR/report/`` (folder). ``compare``: a second run (or sweep
    cell) whose labels and scores are paired with this run's on the same features."""
    run, warnings = read_run(Path(run_dir))
    other = None
    if compare is not None:
        other, more = read_run(Path(compare), records=False)
        warnings += more
    chosen: Literal["file", "folder"]
    if layout == "auto":
        chosen = "file" if len(run.features()) <= single_file_max else "folder"
    elif layout in ("file", "folder"):
        chosen = layout
    else:
        raise UserError(f"unknown report layout {layout!r}; use auto, file or folder")
    data = report_data(run, max_examples=max_examples, compare=other, warnings=warnings)
    for message in data["index"]["overview"]["missing"]:
        log.warning("%s: %s", run.path, message)
    return write_report(data, Path(out) if out is not None else default_out(Path(run_dir), chosen), chosen)
