"""Open a labelled dataset file (the parquet / jsonl / csv that ``autointerp export`` writes, or any file
with the same columns) as a :class:`RunData`, so the browser shows it like a run without examples.

Required columns: ``feature`` (``<source>:<index>``) and ``explanation`` (null when none). Optional:
``explainer``, ``prompt_hash``, ``candidate``, ``failed``, ``frequency``, ``max_activation``,
``mean_activation``, ``mean_active``, ``n_tokens``, and per score ``score_<name>``, ``score_<name>_reason``,
``baseline_<name>``. The schema is documented in ``datasets/labelled-dataset-card.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.records import FeatureStats, Score
from autointerp.rundir import ExplanationRow, RunData, RunDir, read_jsonl

EXPORT_SUFFIXES = (".parquet", ".jsonl", ".csv")
REQUIRED = ("feature", "explanation")


def is_export_file(path: Path) -> bool:
    """True for a file ending in .parquet, .jsonl or .csv (a run directory is a folder)."""
    return Path(path).is_file() and Path(path).suffix in EXPORT_SUFFIXES


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return list(read_jsonl(path))
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return [{str(k): _none(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def _none(v: Any) -> Any:
    """pandas' missing values (NaN, NA, None) -> None."""
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return v


def _float(v: Any) -> float | None:
    v = _none(v)
    return None if v is None or v == "" else float(v)


def load_export(path: Path) -> RunData:
    """The exported dataset at ``path`` as a RunData (no records, simulations or usage)."""
    path = Path(path)
    rows = _rows(path)
    if rows:
        missing = [c for c in REQUIRED if c not in rows[0]]
        if missing:
            raise UserError(
                f"{path} lacks the column(s) {', '.join(missing)} of an exported dataset; write it with "
                "`autointerp export RUN_DIR --format parquet` or see datasets/labelled-dataset-card.md"
            )
    data = RunData(RunDir(path), {"command": "export-file", "config": {"file": str(path)}})
    for r in rows:
        fid = str(r["feature"])
        if r.get("frequency") is not None or r.get("max_activation") is not None:
            data.stats[fid] = FeatureStats(
                n_tokens=int(_float(r.get("n_tokens")) or 0),
                frequency=_float(r.get("frequency")) or 0.0,
                max=_float(r.get("max_activation")) or 0.0,
                mean=_float(r.get("mean_activation")) or 0.0,
                mean_active=_float(r.get("mean_active")),
            )
        cand = int(_float(r.get("candidate")) or 0)
        eid = f"{fid}#{cand}"
        text = _none(r.get("explanation"))
        failed = _none(r.get("failed"))
        data.explanations[eid] = ExplanationRow(
            explanation_id=eid,
            feature=fid,
            text="" if text is None else str(text),
            explainer=str(_none(r.get("explainer")) or ""),
            candidate=cand,
            baseline=False,
            selected=text is not None,
            raw={k: r.get(k) for k in ("prompt_hash",) if r.get(k) is not None},
            failed=None if text is not None else str(failed or "no explanation in the file"),
        )
        settings: dict[str, Any] = {}
        if isinstance(r.get("score_settings"), str) and r["score_settings"]:
            try:
                settings = dict(json.loads(r["score_settings"]))
            except (ValueError, TypeError):
                settings = {}
        for key in r:
            if not key.startswith("score_") or key.endswith("_reason") or key == "score_settings":
                continue
            name = key[len("score_") :]
            value, reason = _float(r.get(key)), _none(r.get(f"score_{name}_reason"))
            judge = str(settings.get(name, {}).get("judge", ""))
            if value is not None or reason:
                data.score_rows[(eid, name, judge)] = Score(name, value, reason, dict(settings.get(name, {})))
            b = _float(r.get(f"baseline_{name}"))
            if b is not None:
                beid = f"{fid}#baseline"
                if beid not in data.explanations:
                    data.explanations[beid] = ExplanationRow(beid, fid, "", "", 0, True, False, {})
                data.score_rows[(beid, name, judge)] = Score(name, b)
    return data
