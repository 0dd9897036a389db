"""Export an explain run: one row per feature (parquet, JSONL, CSV), or Neuronpedia explanations and activations.

Columns (parquet/jsonl/csv): ``feature`` (full id), ``source``, ``model``, ``hook``, ``index``,
``explanation``, ``explainer`` (kind and LLM spec), ``prompt_hash``, ``candidate``, ``failed`` (reason
when no usable label was produced), activation statistics (``frequency``, ``max_activation``,
``mean_activation``, ``mean_active``), ``vocab_top`` / ``vocab_bottom`` (JSON lists of the tokens the
feature's output direction promotes / suppresses, its vocabulary projection; empty when not computed), then
per score name ``score_<name>`` (value or empty),
``score_<name>_reason`` (why undefined), ``baseline_<name>`` (the shuffled-label baseline's value),
``yardstick_explanation`` and ``yardstick_<name>`` (the token-list yardstick's label and scores: the no-LLM bar), and
``score_settings`` (JSON: name -> {judge spec, side, settings}; ``side`` is ``input`` for scores of what makes
the feature fire (correlation, detection, fuzzing, embedding, surprisal), ``output`` for scores of what it
does to the model's output (intervention, intervention_kl, intervention_logit_shift), from the scorer
registry, null for a diagnostic such as ``label_prior_correlation``). Score names are the run's score labels (see
:mod:`autointerp.rundir`): ``detection``, or ``detection@<judge>`` for each judge when a run was rescored by
another judge. The explanation is the run's selected one (the rule of :meth:`RunData.selected`).

Neuronpedia formats, checked field by field against Neuronpedia's database schema
(``apps/webapp/prisma/schema.prisma``, models ``Explanation`` and ``Activation``) and its bulk importer
(``apps/webapp/lib/db/import.ts``: JSONL lines, one table row each, inserted with ``jsonb_to_recordset``,
so only keys that are table columns are kept and required columns without a database default must be
present), in github.com/hijohnnylin/neuronpedia:

- ``--format neuronpedia``: ``Explanation`` rows: ``id`` (deterministic), ``modelId``, ``layer``
  (Neuronpedia's source id, e.g. ``20-gemmascope-res-16k``), ``index`` (string), ``description``,
  ``typeName`` (``oai_token-act-pair`` for the token/activation-pair explainer, whose prompt format is
  OpenAI's; null for the highlighted explainer, which has no registered Neuronpedia type),
  ``explanationModelName`` (the explainer LLM), ``authorId`` (``--neuronpedia-user``; a required column),
  and ``notes``: a JSON string with what has no column (explainer spec, prompt hash, every score with its
  undefined reason, the shuffled-baseline scores, whether the Neuronpedia id is known). Scores are not
  ``scoreV1``/``scoreV2`` (different scorers) nor ``ExplanationScore`` rows (those need Neuronpedia's
  registered score types and models).
- ``--format neuronpedia-activations``: ``Activation`` rows: ``id``, ``modelId``, ``layer``, ``index``,
  ``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``, ``dataIndex`` (window
  index), ``dataSource`` (``autointerp:<split>``), ``creatorId`` (``--neuronpedia-user``).

Both are JSONL (gzip when the file name ends in ``.gz``). When the registry knows the source's Neuronpedia
id it is used; otherwise ``modelId``/``layer`` fall back to our model name and hook, with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.records import FeatureId
from autointerp.rundir import atomic_write_text, load_run, short_hash
from autointerp.scorers.registry import score_side

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl", "csv", "neuronpedia", "neuronpedia-activations")


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
            settings[name] = {"judge": judges.get(name, ""), "side": score_side(name), **sc.settings}
        for name, sc in sorted(run.scores_of(run.baseline(f)).items()):
            row[f"baseline_{name}"] = sc.value
        yard = run.yardstick(f)
        row["yardstick_explanation"] = yard.text if yard else None
        for name, sc in sorted(run.scores_of(yard).items()):
            row[f"yardstick_{name}"] = sc.value
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


def _np_id(*parts: object) -> str:
    """A deterministic row id (Neuronpedia's ``@default(cuid())`` is filled by the Prisma client, not the
    database, so rows written for its bulk importer carry their own id)."""
    return "autointerp-" + short_hash(json.dumps([str(p) for p in parts]))


def _explainer_llm(explainer: str) -> str:
    llm = explainer[explainer.find("[") + 1 : explainer.rfind("]")] if "[" in explainer else explainer
    return llm.partition(":")[2] or llm


def neuronpedia_rows(rows: list[dict[str, Any]], author_id: str | None = None) -> list[dict[str, Any]]:
    """Rows of Neuronpedia's ``Explanation`` table (see the module doc) for the features with a label."""
    out = []
    ids: dict[str, tuple[str, str, bool]] = {}
    for r in rows:
        if not r["explanation"]:
            continue
        if r["source"] not in ids:
            ids[r["source"]] = _neuronpedia_ids(r["source"])
            if not ids[r["source"]][2]:
                log.warning("%s has no known Neuronpedia id: modelId/layer fall back to %s/%s", r["source"],
                            *ids[r["source"]][:2])
        model_id, layer, known = ids[r["source"]]
        explainer = str(r["explainer"] or "")
        scores = {
            k[6:]: {"value": v, "reason": r.get(f"{k}_reason")}
            for k, v in r.items() if k.startswith("score_") and not k.endswith(("_reason", "settings"))
        }
        baseline = {k[9:]: v for k, v in r.items() if k.startswith("baseline_")}
        notes = {
            "autointerp": {
                "explainer": explainer,
                "promptHash": r["prompt_hash"],
                "scores": scores,
                "shuffledBaselineScores": baseline,
                "neuronpediaIdKnown": known,
            }
        }
        row: dict[str, Any] = {
            "id": _np_id(model_id, layer, r["index"], explainer, r["explanation"]),
            "modelId": model_id,
            "layer": layer,
            "index": str(r["index"]),
            "description": r["explanation"],
            "typeName": "oai_token-act-pair" if explainer.startswith("token_activation_pair") else None,
            "explanationModelName": _explainer_llm(explainer) or None,
            "notes": json.dumps(notes, sort_keys=True, allow_nan=False),
        }
        if author_id:
            row["authorId"] = author_id
        out.append(row)
    return out


def neuronpedia_activation_rows(run_dir: Path, creator_id: str | None = None) -> list[dict[str, Any]]:
    """Rows of Neuronpedia's ``Activation`` table: every recorded window of every feature (top, quantile,
    random and train examples), with its tokens and activations."""
    run = load_run(Path(run_dir), records=True)
    out = []
    ids: dict[str, tuple[str, str, bool]] = {}
    for rec in run.records.values():
        src = rec.id.source
        if src not in ids:
            ids[src] = _neuronpedia_ids(src)
        model_id, layer, _ = ids[src]
        for split in ("test_top", "train", "test_quantiles", "test_random"):
            for ex in getattr(rec, split):
                values = [float(v) for v in ex.activations.tolist()]
                if not values:
                    continue
                top = max(range(len(values)), key=values.__getitem__)
                row: dict[str, Any] = {
                    "id": _np_id(model_id, layer, rec.id.index, ex.window, split),
                    "modelId": model_id,
                    "layer": layer,
                    "index": str(rec.id.index),
                    "tokens": list(ex.tokens),
                    "values": values,
                    "maxValue": values[top],
                    "maxValueTokenIndex": top,
                    "minValue": min(values),
                    "dataIndex": str(ex.window),
                    "dataSource": f"autointerp:{split}",
                }
                if creator_id:
                    row["creatorId"] = creator_id
                out.append(row)
    return out


def _write_jsonl(out: Path, rows: list[dict[str, Any]]) -> None:
    """JSONL, gzip-compressed when ``out`` ends in ``.gz`` (Neuronpedia's importer reads ``.jsonl.gz``)."""
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    if out.suffix == ".gz":
        import gzip

        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
        tmp.replace(out)
    else:
        atomic_write_text(out, text)


def export_run(run_dir: Path, fmt: str, out: Path, *, neuronpedia_user: str | None = None) -> int:
    """Write the run's feature table to ``out`` in ``fmt``; returns the number of rows written.
    ``neuronpedia_user``: the Neuronpedia user id written as ``authorId`` / ``creatorId``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "neuronpedia-activations":
        out.parent.mkdir(parents=True, exist_ok=True)
        act_rows = neuronpedia_activation_rows(run_dir, neuronpedia_user)
        _write_jsonl(out, act_rows)
        return len(act_rows)
    rows = feature_rows(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "neuronpedia":
        np_rows = neuronpedia_rows(rows, neuronpedia_user)
        _write_jsonl(out, np_rows)
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
