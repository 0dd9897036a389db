"""The run directory: the one module that reads and writes a run's files, with a manifest for
reproducibility.

Layout (each stage owns its files; any stage can be rerun or resumed alone)::

    manifest.json        versions, command, config, models, prompt hashes, seeds, per-stage status
    records/             sampler output of a sampling run (see sampling.py)
    records.jsonl        FeatureRecord.to_json() per feature (an explain run is self-contained)
    explanations.jsonl   Explanation.to_json() + explanation_id ("<feature>#<candidate>" | "<feature>#baseline" |
                         "<feature>#tokens", the token-list yardstick, with yardstick: true)
                         + selected (best-of-N winner) [+ failed: reason, for an unusable answer] [+ donor]
    simulations.jsonl    {explanation_id, feature, split, record_index, simulator, simulation}
    scores.jsonl         {explanation_id, feature, baseline, judge, score: Score.to_json()}; one line per
                         (explanation, score name, judge); ``judge`` is the LLM (or simulator) that produced it
    errors.jsonl         {feature, stage, error}: per-feature errors (the feature is retried on rerun)
    usage.jsonl          append-only usage log: one line per LLM answer, by role (see autointerp.llm.usage)
    usage.json           LLM usage and cost per role, derived from usage.jsonl at the end of each session

JSONL files are append-only; a line is written whole (flushed and fsync'd) or not at all, so a killed run
resumes by reading what is there and skipping keys already done. A torn last line (a crash mid-write) is
ignored on read and cut off the file when the run resumes (:func:`repair_jsonl`), so strict JSONL readers
never meet its fragment; when a key was written twice, the last line wins.

:class:`RunData` is the in-memory model of a run directory, used by the pipeline (which appends through it),
the run summary, the sweep tables, the report and the export. It owns the two rules every reader shares:

* **the selected explanation** of a feature (:meth:`RunData.selected`): the usable (not failed, not
  baseline, not the yardstick) explanation marked ``selected``, the last one when several are; when none is
  marked, the usable one with the lowest candidate index;
* **score labels** (:meth:`RunData.score_names`): scores are keyed by (explanation, score name, judge). A
  score name produced by one judge only is labelled by its name (``detection``); when a run holds the same
  score from several judges (a rescoring with ``--judge``), each judge's scores are labelled
  ``<name>@<judge>`` and reported apart, never averaged together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from autointerp.errors import RunDirError
from autointerp.records import FeatureRecord, FeatureStats, Score, Simulation

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
EXPLANATIONS = "explanations.jsonl"
SIMULATIONS = "simulations.jsonl"
SCORES = "scores.jsonl"
ERRORS = "errors.jsonl"
USAGE = "usage.json"
USAGE_LOG = "usage.jsonl"
_VERSIONED = ("autointerp", "torch", "transformers", "numpy", "openai", "anthropic", "xllamacpp", "vllm")


def short_hash(text: str | bytes) -> str:
    """First 16 hex digits of the sha256 of ``text``; used for prompt hashes and cache keys."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def repair_jsonl(path: Path) -> bool:
    """Cut a torn last line (what a crash mid-write leaves: no final newline) off ``path``; a last line that
    is complete JSON only lacking its newline gets the newline instead. True when the file was changed."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return False
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        cut, pos = 0, size
        while pos > 0:  # find the last newline, reading backwards in blocks
            start = max(0, pos - (1 << 16))
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        f.seek(cut)
        tail = f.read()
        try:
            json.loads(tail)
            f.write(b"\n")
            log.info("%s: the last line lacked its newline; added it", path)
        except ValueError:
            f.truncate(cut)
            log.warning("%s: cut a torn last line (%d bytes) left by an interrupted run", path, size - cut)
        f.flush()
        os.fsync(f.fileno())
    return True


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines, flushed and fsync'd (after cutting a torn last line off the file)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    repair_jsonl(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each complete JSON line; a torn (crash-truncated) line is logged and skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an incomplete line (left by an interrupted run)", path, lineno)


class RunDir:
    """A run directory and its manifest."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- creation / opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        command: str,
        config: dict[str, Any],
        *,
        legacy: Mapping[str, Any] | None = None,
        free: Collection[str] = (),
    ) -> RunDir:
        """Create ``path`` with a fresh manifest, or reopen it when it holds a run of the same config.

        A directory holding a run with a *different* config is refused (results are never mixed). Two kinds
        of difference are not: a setting the old manifest lacks whose ``legacy`` value (the behaviour before
        the setting existed) equals the new one, and a change of a ``free`` setting (one that does not change
        results, such as a timeout or a concurrency). The manifest then takes the new config."""
        run = cls(path)
        if run.manifest_path.exists():
            old = run.manifest()
            old_config = dict(old.get("config", {}))
            seen = {**{k: v for k, v in (legacy or {}).items() if k not in old_config}, **old_config}
            changed = sorted(
                k for k in set(seen) | set(config) if seen.get(k) != config.get(k) and k not in free
            )
            if old.get("command") == command and changed and run.holds_results(old):
                raise RunDirError(
                    f"{path} holds a {command} run with other settings ({', '.join(changed)}); "
                    "use a new --run-dir"
                )
            if not changed or old.get("command") != command:
                old["resumed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                if old.get("command") == command and old_config != config:
                    log.info("%s: resuming with settings that do not change results: %s", path,
                             ", ".join(sorted(k for k in set(old_config) | set(config)
                                              if old_config.get(k) != config.get(k))))
                    old["config"] = config  # replaced, not merged: a key the new config lacks would differ later
                atomic_write_json(run.manifest_path, old)
                for f in sorted(run.path.glob("*.jsonl")):
                    repair_jsonl(f)
                return run
            log.info("%s holds only the manifest of a run that never started; taking it over", path)
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run.manifest_path,
            {
                "command": command,
                "argv": sys.argv,
                "config": config,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": package_versions(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "prompts": {},
                "stages": {},
            },
        )
        return run

    def holds_results(self, manifest: dict[str, Any]) -> bool:
        """True unless the directory holds nothing but the manifest of a run whose stages never started (what
        an interrupted start leaves): such a directory never blocks a corrected command."""
        if manifest.get("stages"):
            return True
        return any(p.name != MANIFEST and not p.name.startswith(".") for p in self.path.iterdir())

    @classmethod
    def open(cls, path: Path) -> RunDir:
        run = cls(path)
        if not run.manifest_path.exists():
            raise RunDirError(f"{path} is not a run directory (no {MANIFEST}); pass the folder a run wrote")
        return run

    # -- manifest -----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.manifest_path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"cannot read {self.manifest_path}: {e}; the run directory is damaged") from e

    def update_manifest(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` into the manifest (dicts one level deep are merged too)."""
        m = self.manifest()
        for k, v in patch.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k] = {**m[k], **v}
            else:
                m[k] = v
        atomic_write_json(self.manifest_path, m)
        return m

    def record_prompt(self, name: str, text: str) -> str:
        """Record a prompt template's hash in the manifest; returns the hash."""
        h = short_hash(text)
        self.update_manifest({"prompts": {name: h}})
        return h

    def set_stage(self, stage: str, status: str, **info: Any) -> None:
        self.update_manifest({"stages": {stage: {"status": status, **info}}})

    # -- files --------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name


# ---------------------------------------------------------------------------------------------------
# The run model
# ---------------------------------------------------------------------------------------------------
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
    yardstick: bool = False
    """The feature's token-list label (``<feature>#tokens``): scored beside the selected one, never selected."""

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ExplanationRow:
        eid = str(row.get("explanation_id") or f"{row.get('feature')}#{row.get('candidate', 0)}")
        return cls(
            explanation_id=eid,
            feature=str(row.get("feature", "")),
            text=str(row.get("text", "")),
            explainer=str(row.get("explainer", "")),
            candidate=int(row.get("candidate", 0)),
            baseline=bool(row.get("baseline", False)),
            selected=bool(row.get("selected", False)),
            raw=row,
            failed=None if not row.get("failed") else str(row["failed"]),
            yardstick=bool(row.get("yardstick", False)),
        )

    @property
    def usable(self) -> bool:
        """A real explanation with a label (not the shuffled baseline, not the yardstick)."""
        return not self.baseline and not self.yardstick and not self.failed


ScoreKey = tuple[str, str, str]
"""(explanation_id, score name, judge) of one line of ``scores.jsonl``."""


def _row_judge(row: dict[str, Any]) -> str:
    # Runs written before the field was named "judge" called it "scorer".
    return str(row.get("judge", row.get("scorer", "")))


class RunData:
    """Everything a run directory holds, keyed for lookups, and appenders that keep the files in sync.

    Build it with :func:`load_run`. Mutable views (``records``, ``explanations``, ``simulations``,
    ``score_rows``) are updated by the ``add_*`` methods, which append to the files first."""

    def __init__(self, run: RunDir, manifest: dict[str, Any]) -> None:
        self.run = run
        self.path = run.path
        self.manifest = manifest
        self.records: dict[str, FeatureRecord] = {}
        """FeatureRecord by feature id string, in file order."""
        self.stats: dict[str, FeatureStats] = {}
        """Feature statistics by feature id string (also for features whose record is not kept)."""
        self.vocab: dict[str, dict[str, Any]] = {}
        """Vocabulary projection of each feature that has one (``FeatureRecord.vocab_projection``)."""
        self.explanations: dict[str, ExplanationRow] = {}
        """Explanations by explanation_id."""
        self.simulations: dict[tuple[str, str, int], Simulation] = {}
        """Simulation by (explanation_id, split, record_index)."""
        self.simulators: dict[str, str] = {}
        """Simulator spec by explanation_id (the last one seen)."""
        self.score_rows: dict[ScoreKey, Score] = {}
        """Every score, by (explanation_id, score name, judge)."""
        self.usage: dict[str, Any] = {}
        """usage.json."""
        self.errors: list[dict[str, Any]] = []
        """Errors added in this session (see :meth:`add_error`)."""
        self._labels: dict[tuple[str, str], str] | None = None
        self._by_label: dict[str, dict[str, Score]] | None = None
        self._by_feature: dict[str, list[ExplanationRow]] | None = None
        self._indexed = -1

    # -- the shared rules ---------------------------------------------------------------------------
    def features(self) -> list[str]:
        """Feature ids in record order, then any that only appear in explanations."""
        out = list(self.stats)
        seen = set(out)
        for e in self.explanations.values():
            if e.feature not in seen:
                seen.add(e.feature)
                out.append(e.feature)
        return out

    def explanations_of(self, feature: str) -> list[ExplanationRow]:
        """The explanations of ``feature`` in file order. Indexed once (rebuilt when explanations were
        added), so a reader asking for every feature of a 16k-feature run does not rescan all rows."""
        if self._by_feature is None or self._indexed != len(self.explanations):
            by: dict[str, list[ExplanationRow]] = {}
            for e in self.explanations.values():
                by.setdefault(e.feature, []).append(e)
            self._by_feature, self._indexed = by, len(self.explanations)
        return list(self._by_feature.get(feature, ()))

    def selected(self, feature: str) -> ExplanationRow | None:
        """The selected explanation of ``feature`` (the one rule every reader uses): the usable one
        marked ``selected`` (the last when several are), else the usable one with the lowest candidate
        index; None when the feature has no usable explanation."""
        cands = [e for e in self.explanations_of(feature) if e.usable]
        marked = [e for e in cands if e.selected]
        if marked:
            return marked[-1]
        return min(cands, key=lambda e: e.candidate) if cands else None

    def baseline(self, feature: str) -> ExplanationRow | None:
        """The shuffled-baseline explanation scored for ``feature``, if any (the last one written)."""
        base = [e for e in self.explanations_of(feature) if e.baseline]
        return base[-1] if base else None

    def yardstick(self, feature: str) -> ExplanationRow | None:
        """The token-list yardstick of ``feature``, if any (the last one written)."""
        rows = [e for e in self.explanations_of(feature) if e.yardstick]
        return rows[-1] if rows else None

    def failed_reason(self, feature: str) -> str | None:
        """Why ``feature`` has no selected explanation: the failure of its last failed candidate, "not
        explained" when it has none; None when it has a selected explanation."""
        if self.selected(feature) is not None:
            return None
        failed = [e.failed for e in self.explanations_of(feature) if e.failed and not e.baseline and not e.yardstick]
        return failed[-1] if failed else "not explained"

    def _label_map(self) -> dict[tuple[str, str], str]:
        if self._labels is None:
            judges: dict[str, dict[str, None]] = {}
            for _, name, judge in self.score_rows:
                judges.setdefault(name, {})[judge] = None
            self._labels = {
                (name, j): name if len(js) == 1 else f"{name}@{j}" for name, js in judges.items() for j in js
            }
        return self._labels

    def score_names(self) -> list[str]:
        """Every score label in the run, in first-seen order."""
        return list(dict.fromkeys(self._label_map().values()))

    @property
    def scores(self) -> dict[str, dict[str, Score]]:
        """explanation_id -> score label -> Score (labels as :meth:`score_names`)."""
        if self._by_label is None:
            labels = self._label_map()
            out: dict[str, dict[str, Score]] = {}
            for (eid, name, judge), sc in self.score_rows.items():
                out.setdefault(eid, {})[labels[(name, judge)]] = sc
            self._by_label = out
        return self._by_label

    def judges(self) -> dict[str, str]:
        """Score label -> the judge (LLM or simulator spec) that produced it."""
        return {label: judge for (_, judge), label in self._label_map().items()}

    def scores_of(self, explanation: ExplanationRow | None) -> dict[str, Score]:
        """The scores of ``explanation`` by label; {} for None."""
        return {} if explanation is None else self.scores.get(explanation.explanation_id, {})

    def has_score(self, eid: str, name: str, judge: str) -> bool:
        return (eid, name, judge) in self.score_rows

    # -- appenders ----------------------------------------------------------------------------------
    def add_records(self, records: Sequence[FeatureRecord]) -> None:
        new = [r for r in records if str(r.id) not in self.records]
        append_jsonl(self.run.file(RECORDS), [r.to_json() for r in new])
        for r in new:
            self.records[str(r.id)] = r
            self.stats[str(r.id)] = r.stats

    def add_explanations(self, rows: list[dict[str, Any]]) -> None:
        append_jsonl(self.run.file(EXPLANATIONS), rows)
        for row in rows:
            e = ExplanationRow.from_json(row)
            self.explanations[e.explanation_id] = e
        self._by_feature = None

    def add_simulation(self, eid: str, feature: str, split: str, idx: int, simulator: str, sim: Simulation) -> None:
        self.add_simulations(eid, feature, split, simulator, [(idx, sim)])

    def add_simulations(
        self, eid: str, feature: str, split: str, simulator: str, sims: Sequence[tuple[int, Simulation]]
    ) -> None:
        """Append the simulations ``(record index, simulation)`` of one split under ``eid`` in one write."""
        rows = [
            {
                "explanation_id": eid,
                "feature": feature,
                "split": split,
                "record_index": idx,
                "simulator": simulator,
                "simulation": sim.to_json(),
            }
            for idx, sim in sims
        ]
        append_jsonl(self.run.file(SIMULATIONS), rows)
        for idx, sim in sims:
            self.simulations[(eid, split, idx)] = sim
            self.simulators[eid] = simulator

    def add_score(self, eid: str, feature: str, baseline: bool, judge: str, score: Score) -> None:
        self.add_scores(eid, feature, baseline, judge, [score])

    def add_scores(self, eid: str, feature: str, baseline: bool, judge: str, scores: Sequence[Score]) -> None:
        """Append the scores of ``eid`` by one judge in one write."""
        rows = [
            {"explanation_id": eid, "feature": feature, "baseline": baseline, "judge": judge, "score": sc.to_json()}
            for sc in scores
        ]
        append_jsonl(self.run.file(SCORES), rows)
        for sc in scores:
            self.score_rows[(eid, sc.name, judge)] = sc
        self._labels = self._by_label = None

    def add_error(self, feature: str, stage: str, error: BaseException) -> None:
        row = {"feature": feature, "stage": stage, "error": f"{type(error).__name__}: {error}"}
        log.warning("feature %s failed at %s: %s", feature, stage, row["error"])
        append_jsonl(self.run.file(ERRORS), [row])
        self.errors.append(row)


def load_run(
    path: Path, *, records: bool = True, simulations: bool = True, features: Collection[str] | None = None
) -> RunData:
    """Read the run directory at ``path`` (a partial run gives partial results). With ``records=False``
    only statistics are kept from ``records.jsonl``, with ``simulations=False`` no simulation (each saves
    memory when only scores are needed); with ``features``, only the rows of these features (the pipeline's
    view of one feature range, so memory holds one range, not the whole SAE)."""
    run = RunDir.open(Path(path))
    data = RunData(run, run.manifest())
    rec_path = run.file(RECORDS)
    for row in read_jsonl(rec_path):
        try:
            fid = str(row["id"])
            if features is not None and fid not in features:
                continue
            data.stats[fid] = FeatureStats.from_json(row["stats"])
            if row.get("vocab_projection"):
                data.vocab[fid] = dict(row["vocab_projection"])
            if records:
                data.records[fid] = FeatureRecord.from_json(row)
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"{rec_path}: a malformed record ({e}); regenerate it with `autointerp sample`") from e
    for row in read_jsonl(run.file(EXPLANATIONS)):
        expl = ExplanationRow.from_json(row)
        if features is None or expl.feature in features:
            data.explanations[expl.explanation_id] = expl
    for row in read_jsonl(run.file(SIMULATIONS)) if simulations else ():
        if features is not None and str(row.get("feature")) not in features:
            continue
        try:
            key = (str(row["explanation_id"]), str(row["split"]), int(row["record_index"]))
            data.simulations[key] = Simulation.from_json(row["simulation"])
            data.simulators[key[0]] = str(row.get("simulator", ""))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("skipping a malformed simulation line (%s)", e)
    for row in read_jsonl(run.file(SCORES)):
        if features is not None and str(row.get("feature")) not in features:
            continue
        try:
            score = Score.from_json(dict(row["score"]))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("skipping a malformed score line (%s): %s", e, str(row)[:200])
            continue
        eid = str(row.get("explanation_id", ""))
        data.score_rows[(eid, score.name, _row_judge(row))] = score
        if eid not in data.explanations and "feature" in row:
            # A score of an explanation whose line is missing: keep it reachable.
            data.explanations[eid] = ExplanationRow(
                eid, str(row["feature"]), "", "", 0, bool(row.get("baseline", False)), False, {}
            )
    data.usage = load_run_usage(run.path)
    return data


def load_run_usage(path: Path) -> dict[str, Any]:
    """The LLM usage of the run directory at ``path``, as ``usage.json`` holds it: derived from the usage log
    (``usage.jsonl``, current even when a killed session never wrote ``usage.json``); for runs written
    before the log existed, ``usage.json`` itself; ``{}`` when the run has used no LLM."""
    from autointerp.llm.usage import read_usage_json, usage_from_log

    path = Path(path)
    if (path / USAGE_LOG).exists():
        return usage_from_log(read_jsonl(path / USAGE_LOG))
    return read_usage_json(path / USAGE)


def read_feature_records(path: Path, indices: Sequence[int] | None = None) -> list[FeatureRecord]:
    """The feature records of the run directory at ``path`` (``records.jsonl``), optionally only the
    features with these indices, in file order."""
    want = None if indices is None else set(indices)
    return [r for r in iter_records(path) if want is None or r.id.index in want]


def iter_records(path: Path, features: Collection[str] | None = None) -> Iterator[FeatureRecord]:
    """The feature records of the run directory at ``path`` (``records.jsonl``), optionally only these
    feature ids, one at a time in file order (one pass; memory holds one record)."""
    rec_path = Path(path) / RECORDS
    for row in read_jsonl(rec_path):
        if features is not None and str(row.get("id")) not in features:
            continue
        try:
            yield FeatureRecord.from_json(row)
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"{rec_path}: a malformed record ({e}); regenerate it with `autointerp sample`") from e


def record_ids(path: Path) -> list[str]:
    """The feature ids of ``records.jsonl`` of the run directory at ``path``, in file order (first copy of each)."""
    return list(dict.fromkeys(str(row["id"]) for row in read_jsonl(Path(path) / RECORDS) if "id" in row))


def explained_features(path: Path) -> set[str]:
    """The features that have a line in ``explanations.jsonl`` of the run directory at ``path`` (every
    simulation and score belongs to an explanation, so the others hold nothing yet)."""
    return {str(row.get("feature")) for row in read_jsonl(Path(path) / EXPLANATIONS)}


def features_scored(path: Path) -> int:
    """How many features of the run directory at ``path`` have a score of an explanation that is not a
    baseline (cheap: reads only ``scores.jsonl``; for progress bars)."""
    return len({str(r.get("feature")) for r in read_jsonl(Path(path) / SCORES) if not r.get("baseline")})


# ---------------------------------------------------------------------------------------------------
# Merging the parts of a split explain run
# ---------------------------------------------------------------------------------------------------
MERGED_FILES = (RECORDS, EXPLANATIONS, SIMULATIONS, SCORES, ERRORS, USAGE_LOG)
"""The files of an explain run that its parts' files are concatenated into, in part order."""
_SAME_IN_PARTS = ("config", "models", "prompts", "seeds", "features")
FINISHED = ("done", "partial")
"""Explain stage states of a part that may be merged (partial: some features failed; a rerun of the merged
run retries them)."""


def is_explain_part(path: Path) -> bool:
    """True when ``path`` holds a part of a split explain run (``autointerp explain --shard i/n``)."""
    m = Path(path) / MANIFEST
    if not m.exists():
        return False
    manifest = RunDir(Path(path)).manifest()
    return manifest.get("command") == "explain" and bool(manifest.get("shard"))


def check_explain_parts(parts: Sequence[Path]) -> list[dict[str, Any]]:
    """The manifests of ``parts``, in shard order, after checking that they are the finished, distinct and
    complete parts of one split explain run; RunDirError (one line) otherwise."""
    if not parts:
        raise RunDirError("no parts to merge; pass the run directories of all n parts (`explain --shard i/n`)")
    loaded: list[tuple[int, int, Path, dict[str, Any]]] = []
    for p in parts:
        manifest = RunDir.open(Path(p)).manifest()
        shard = str(manifest.get("shard") or "")
        if manifest.get("command") != "explain" or not shard:
            raise RunDirError(f"{p} is not a part of a split explain run (made by `autointerp explain --shard i/n`)")
        status = dict(manifest.get("stages", {})).get("explain", {}).get("status")
        if status not in FINISHED:
            raise RunDirError(
                f"{p} (part {shard}) is unfinished (explain stage: {status}); rerun its command, then merge"
            )
        index, _, count = shard.partition("/")
        loaded.append((int(index), int(count), Path(p), manifest))
    first = loaded[0]
    for i, n, p, m in loaded[1:]:
        for key in _SAME_IN_PARTS:
            if m.get(key) != first[3].get(key):
                raise RunDirError(
                    f"{p} and {first[2]} are parts of different runs (their {key} differ); merge the parts of one run"
                )
        if n != first[1]:
            raise RunDirError(
                f"{p} (part {i}/{n}) and {first[2]} (part {first[0]}/{first[1]}) split the features differently, "
                "so their feature ranges overlap; merge the n parts of one split"
            )
    seen: dict[int, Path] = {}
    for i, _, p, _ in loaded:
        if i in seen:
            raise RunDirError(f"part {i}/{first[1]} was given twice ({seen[i]} and {p}); give each part once")
        seen[i] = p
    missing = sorted(set(range(first[1])) - set(seen))
    if missing:
        raise RunDirError(
            f"parts {', '.join(f'{i}/{first[1]}' for i in missing)} are missing; pass all {first[1]} parts"
        )
    return [m for _, _, _, m in sorted(loaded, key=lambda t: t[0])]


def merge_explain_runs(parts: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge the parts of a split explain run into the run directory ``out``: records, explanations,
    simulations, scores, errors and the usage log concatenated in part order (so usage is summed per role),
    everything checked before anything is written. ``out`` may not hold another run's results. Returns the
    merged manifest."""
    manifests = check_explain_parts(parts)
    order = sorted(parts, key=lambda p: int(str(RunDir(Path(p)).manifest()["shard"]).partition("/")[0]))
    first = manifests[0]
    out = Path(out)
    if (out / MANIFEST).exists():
        old = RunDir(out).manifest()
        if old.get("config") != first["config"] and RunDir(out).holds_results(old):
            raise RunDirError(f"{out} holds another run; merge into a new --out folder")
    failed = sum(int(m["stages"]["explain"].get("failed_features") or 0) for m in manifests)
    run = RunDir.create(out, "explain", first["config"])
    run.update_manifest({k: first.get(k) for k in _SAME_IN_PARTS if k != "config"})
    run.update_manifest({"shard": None, "merged_from": [str(p) for p in order],
                         "llm": [m.get("llm") for m in manifests]})
    run.set_stage("explain", "merging", parts=len(order))
    for name in MERGED_FILES:
        tmp = out / f".{name}.merging"
        with open(tmp, "wb") as dst:
            for p in order:
                src = Path(p) / name
                if src.exists():
                    repair_jsonl(src)
                    with open(src, "rb") as f:
                        while block := f.read(1 << 20):
                            dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        if tmp.stat().st_size or (out / name).exists():
            os.replace(tmp, out / name)
        else:
            tmp.unlink()
    atomic_write_json(out / USAGE, load_run_usage(out))
    run.update_manifest({"ranges_done": {k: v for m in manifests for k, v in dict(m.get("ranges_done", {})).items()}})
    run.set_stage("explain", "partial" if failed else "done", failed_features=failed, merged_parts=len(order))
    return run.manifest()
