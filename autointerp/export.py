"""Export an explain run: one row per feature, as parquet, JSONL, CSV, or Neuronpedia explanations.

Columns (parquet/jsonl/csv): ``feature`` (full id), ``source``, ``model``, ``hook``, ``index``,
``explanation``, ``explainer`` (kind and LLM spec), ``prompt_hash``, ``candidate``, ``failed`` (reason
when no usable label was produced), activation statistics (``frequency``, ``max_activation``,
``mean_activation``, ``mean_active``), ``vocab_top`` / ``vocab_bottom`` (JSON lists of the tokens the
feature's output direction promotes / suppresses, its vocabulary projection; empty when not computed), then
per score name ``score_<name>`` (value or empty),
``score_<name>_reason`` (why undefined), ``baseline_<name>`` (the shuffled-label baseline's value), and
``score_settings`` (JSON: name -> {judge spec, settings}). Score names are the run's score labels (see
:mod:`autointerp.rundir`): ``detection``, or ``detection@<judge>`` for each judge when a run was rescored by
another judge. The explanation is the run's selected one (the rule of :meth:`RunData.selected`).

Neuronpedia format (``--format neuronpedia``): a JSON list shaped like the rows of Neuronpedia's
explanation export (``/api/explanation/export``): ``modelId``, ``layer`` (Neuronpedia's source id, e.g.
``20-gemmascope-res-16k``), ``index`` (string), ``description``, ``explanationModelName``, ``typeName``
(``oai_token-act-pair`` or ``np_highlighted``), plus ``scores`` (name -> value) and ``autointerpPromptHash``.
When the registry knows the source's Neuronpedia id it is used; otherwise ``modelId``/``layer`` fall back to
our model name and hook and ``neuronpediaIdKnown`` is false.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.records import FeatureId
from autointerp.rundir import atomic_write_text, load_run

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl", "csv", "neuronpedia")


def feature_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One flat dict per feature of the run (see the module doc for the columns)."""
    run = load_run(Path(run_dir), records=False)
    judges = run.judges()
    rows = []
    for f in run.features():
        fid = FeatureId.parse(f)
        model, _, hook = fid.source.partition("/")
        st = run.stats.get(f)
        sel = run.selected(f)
        e = sel.raw if sel is not None else {}
        row: dict[str, Any] = {
            "feature": f,
            "source": fid.source,
            "model": model,
            "hook": hook,
            "index": fid.index,
            "explanation": sel.text if sel is not None else None,
            "explainer": e.get("explainer"),
            "prompt_hash": e.get("prompt_hash"),
            "candidate": e.get("candidate"),
            "failed": run.failed_reason(f),
            "frequency": st.frequency if st else None,
            "max_activation": st.max if st else None,
            "mean_activation": st.mean if st else None,
            "mean_active": st.mean_active if st else None,
            "vocab_top": _tokens(run.vocab.get(f), "top"),
            "vocab_bottom": _tokens(run.vocab.get(f), "bottom"),
        }
        settings: dict[str, Any] = {}
        for name, sc in sorted(run.scores_of(sel).items()):
            row[f"score_{name}"] = sc.value
            row[f"score_{name}_reason"] = sc.reason
            settings[name] = {"judge": judges.get(name, ""), **sc.settings}
        for name, sc in sorted(run.scores_of(run.baseline(f)).items()):
            row[f"baseline_{name}"] = sc.value
        row["score_settings"] = json.dumps(settings, sort_keys=True, default=str)
        rows.append(row)
    return rows


def _tokens(vocab: dict[str, Any] | None, side: str) -> str | None:
    """JSON list of the projection's tokens on ``side`` (top / bottom), or None without a projection."""
    return None if not vocab else json.dumps([t for t, _ in vocab.get(side, [])], ensure_ascii=False)


def _neuronpedia_ids(source: str) -> tuple[str, str, bool]:
    model, _, hook = source.partition("/")
    try:
        from autointerp.sources.registry import resolve_address

        spec = resolve_address(source)
    except Exception:  # unknown address (neurons of a local model, ...): fall back
        return model, hook, False
    if spec.neuronpedia and "/" in spec.neuronpedia:
        m, _, layer = spec.neuronpedia.partition("/")
        return m, layer, True
    return spec.model, hook, False


def neuronpedia_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    ids: dict[str, tuple[str, str, bool]] = {}
    for r in rows:
        if not r["explanation"]:
            continue
        if r["source"] not in ids:
            ids[r["source"]] = _neuronpedia_ids(r["source"])
        model_id, layer, known = ids[r["source"]]
        explainer = str(r["explainer"] or "")
        llm = explainer[explainer.find("[") + 1 : explainer.rfind("]")] if "[" in explainer else explainer
        out.append(
            {
                "modelId": model_id,
                "layer": layer,
                "index": str(r["index"]),
                "description": r["explanation"],
                "explanationModelName": llm.partition(":")[2] or llm,
                "typeName": "np_highlighted" if explainer.startswith("highlighted") else "oai_token-act-pair",
                "scores": {
                    k[6:]: v for k, v in r.items() if k.startswith("score_") and not k.endswith(("_reason", "settings"))
                },
                "autointerpPromptHash": r["prompt_hash"],
                "neuronpediaIdKnown": known,
            }
        )
    return out


def export_run(run_dir: Path, fmt: str, out: Path) -> int:
    """Write the run's feature table to ``out`` in ``fmt``; returns the number of rows written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    rows = feature_rows(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "neuronpedia":
        np_rows = neuronpedia_rows(rows)
        atomic_write_text(out, json.dumps(np_rows, indent=1) + "\n")
        return len(np_rows)
    if fmt == "jsonl":
        atomic_write_text(out, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return len(rows)
    import pandas as pd

    df = pd.DataFrame(rows)
    if fmt == "csv":
        atomic_write_text(out, df.to_csv(index=False))
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        df.to_parquet(tmp, index=False)
        tmp.replace(out)
    return len(rows)
