"""Read a finished (or partial) run directory into memory, for reports, sweeps and notebooks.

Files read (all optional except the manifest; a partial run gives partial results):

    manifest.json        RunDir manifest
    records.jsonl        FeatureRecord.to_json() per feature
    explanations.jsonl   Explanation.to_json() + "explanation_id" + "selected"
    simulations.jsonl    {"explanation_id", "feature", "split", "record_index", "simulator", "simulation"}
    scores.jsonl         {"explanation_id", "feature", "baseline", "score": Score.to_json()}
    usage.json           LLM usage

When a key was written twice (a resumed run), the last line wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp.errors import RunDirError
from autointerp.llm.usage import read_run_usage
from autointerp.records import FeatureRecord, FeatureStats, Score, Simulation
from autointerp.rundir import RunDir, read_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "test_top", "test_quantiles", "test_random", "valid")
"""Example splits of a FeatureRecord, in display order."""


@dataclass
class ExplanationRow:
    """One explanation of a feature as stored in ``explanations.jsonl``."""

    explanation_id: str
    feature: str
    text: str
    explainer: str
    candidate: int
    baseline: bool
    selected: bool
    raw: dict[str, Any]
    """The whole JSON line."""
    failed: str | None = None
    """Why the explainer's answer was unusable (no label); None for a usable explanation."""


@dataclass
class RunData:
    """Everything a run directory holds, keyed for lookups."""

    path: Path
    manifest: dict[str, Any]
    records: dict[str, FeatureRecord] = field(default_factory=dict)
    """FeatureRecord by feature id string, in file order."""
    stats: dict[str, FeatureStats] = field(default_factory=dict)
    """Feature statistics by feature id string (also for features whose record is absent)."""
    explanations: dict[str, ExplanationRow] = field(default_factory=dict)
    """Explanations by explanation_id."""
    simulations: dict[tuple[str, str, int], Simulation] = field(default_factory=dict)
    """Simulation by (explanation_id, split, record_index)."""
    simulators: dict[str, str] = field(default_factory=dict)
    """Simulator spec by explanation_id (the last one seen)."""
    scores: dict[str, dict[str, Score]] = field(default_factory=dict)
    """explanation_id -> score name -> Score."""
    usage: dict[str, Any] = field(default_factory=dict)

    # -- derived views ------------------------------------------------------------------------------
    def features(self) -> list[str]:
        """Feature ids in record order, then any that only appear in explanations."""
        out = list(self.records)
        seen = set(out)
        for e in self.explanations.values():
            if e.feature not in seen:
                seen.add(e.feature)
                out.append(e.feature)
        return out

    def explanations_of(self, feature: str) -> list[ExplanationRow]:
        return [e for e in self.explanations.values() if e.feature == feature]

    def selected(self, feature: str) -> ExplanationRow | None:
        """The selected (non-baseline) explanation of ``feature``: the one marked ``selected``, else the
        first non-baseline candidate; None when the feature has no explanation."""
        cands = [e for e in self.explanations_of(feature) if not e.baseline and not e.failed]
        marked = [e for e in cands if e.selected]
        if marked:
            return marked[-1]
        return min(cands, key=lambda e: e.candidate) if cands else None

    def baseline(self, feature: str) -> ExplanationRow | None:
        """The shuffled-baseline explanation scored for ``feature``, if any."""
        base = [e for e in self.explanations_of(feature) if e.baseline]
        return base[-1] if base else None

    def score_names(self) -> list[str]:
        """Every score name in the run, in first-seen order."""
        names: dict[str, None] = {}
        for per in self.scores.values():
            for n in per:
                names.setdefault(n, None)
        return list(names)


def _score_from_row(row: dict[str, Any]) -> Score | None:
    try:
        return Score.from_json(dict(row["score"]))
    except (KeyError, TypeError, ValueError) as e:
        log.warning("skipping a malformed score line (%s): %s", e, str(row)[:200])
        return None


def load_run(path: Path, *, records: bool = True) -> RunData:
    """Read the run directory at ``path``. With ``records=False`` only statistics are kept from
    ``records.jsonl`` (saves memory when only scores are needed)."""
    run = RunDir.open(Path(path))
    data = RunData(path=run.path, manifest=run.manifest())
    rec_path = run.file("records.jsonl")
    for row in read_jsonl(rec_path):
        try:
            fid = str(row["id"])
            data.stats[fid] = FeatureStats.from_json(row["stats"])
            if records:
                data.records[fid] = FeatureRecord.from_json(row)
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"{rec_path}: a malformed record ({e}); regenerate it with `autointerp cache`") from e
    for row in read_jsonl(run.file("explanations.jsonl")):
        eid = str(row.get("explanation_id") or f"{row.get('feature')}#{row.get('candidate', 0)}")
        data.explanations[eid] = ExplanationRow(
            explanation_id=eid,
            feature=str(row.get("feature", "")),
            text=str(row.get("text", "")),
            explainer=str(row.get("explainer", "")),
            candidate=int(row.get("candidate", 0)),
            baseline=bool(row.get("baseline", False)),
            selected=bool(row.get("selected", False)),
            raw=row,
            failed=None if not row.get("failed") else str(row["failed"]),
        )
    for row in read_jsonl(run.file("simulations.jsonl")):
        try:
            key = (str(row["explanation_id"]), str(row["split"]), int(row["record_index"]))
            data.simulations[key] = Simulation.from_json(row["simulation"])
            data.simulators[key[0]] = str(row.get("simulator", ""))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("skipping a malformed simulation line (%s)", e)
    for row in read_jsonl(run.file("scores.jsonl")):
        score = _score_from_row(row)
        if score is None:
            continue
        eid = str(row.get("explanation_id", ""))
        data.scores.setdefault(eid, {})[score.name] = score
        if eid not in data.explanations and "feature" in row:
            # A score of an explanation whose line is missing: keep it reachable.
            data.explanations[eid] = ExplanationRow(
                eid, str(row["feature"]), "", "", 0, bool(row.get("baseline", False)), False, {}
            )
    data.usage = read_run_usage(run.file("usage.json"))
    return data
