"""``autointerp export --format neuronpedia[-activations]`` writes rows Neuronpedia's bulk importer accepts.

The column sets below are copied from Neuronpedia's schema (github.com/hijohnnylin/neuronpedia,
``apps/webapp/prisma/schema.prisma``, models ``Explanation`` and ``Activation``). Its importer
(``apps/webapp/lib/db/import.ts``) inserts JSONL rows with ``jsonb_to_recordset`` over the columns named in
the first line, so a key that is not a column is silently dropped, and a required column without a
database default (Prisma's ``@default(cuid())`` is client-side) must be in every row.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from autointerp.export import export_run
from autointerp.report.synthetic import write_synthetic_run
from autointerp.rundir import load_run

EXPLANATION_COLUMNS = {
    "id", "modelId", "layer", "index", "embedding", "description", "authorId", "triggeredByUserId", "notes",
    "scoreV1", "scoreV2", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity", "typeName",
    "explanationModelName", "createdAt", "updatedAt",
}
EXPLANATION_REQUIRED = {"id", "modelId", "layer", "index", "description", "authorId"}
ACTIVATION_COLUMNS = {
    "id", "tokens", "dataIndex", "index", "layer", "modelId", "dataSource", "maxValue", "maxValueTokenIndex",
    "minValue", "values", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "zQIndices", "zKIndices", "zValues",
    "creatorId", "createdAt", "lossValues", "logitContributions", "binMin", "binMax", "binContains",
    "qualifyingTokenIndex",
}
ACTIVATION_REQUIRED = {"id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
                       "values", "creatorId"}


def test_explanation_rows_are_neuronpedia_explanation_table_rows(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=4)
    out = tmp_path / "explanations.jsonl.gz"
    n = export_run(run.path, "neuronpedia", out, neuronpedia_user="user-1")
    rows = [json.loads(line) for line in gzip.decompress(out.read_bytes()).decode("utf-8").splitlines()]
    assert n == len(rows) == 4
    ids = set()
    for r in rows:
        assert set(r) <= EXPLANATION_COLUMNS, set(r) - EXPLANATION_COLUMNS
        assert EXPLANATION_REQUIRED <= set(r) and all(r[c] is not None for c in EXPLANATION_REQUIRED)
        assert isinstance(r["index"], str) and r["authorId"] == "user-1"
        ids.add(r["id"])
    assert len(ids) == 4, "row ids are unique"
    by_index = {r["index"]: r for r in rows}
    notes = json.loads(by_index["1"]["notes"])["autointerp"]
    assert notes["scores"]["correlation"] == {
        "value": None, "reason": "true activations are constant over the scored records"
    }
    assert notes["shuffledBaselineScores"]["correlation"] is not None
    assert by_index["0"]["description"] == "names of European capital cities"
    # Same run, same rows: ids are deterministic, so a re-upload does not duplicate.
    again = tmp_path / "again.jsonl"
    export_run(run.path, "neuronpedia", again, neuronpedia_user="user-1")
    assert [json.loads(line)["id"] for line in again.read_text(encoding="utf-8").splitlines()] == [
        r["id"] for r in rows
    ]


def test_activation_rows_are_neuronpedia_activation_table_rows(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", n_features=2, n_tokens=8)
    out = tmp_path / "activations.jsonl"
    n = export_run(run.path, "neuronpedia-activations", out, neuronpedia_user="user-1")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    records = load_run(run.path).records
    assert n == len(rows) == sum(
        len(r.train) + len(r.test_top) + len(r.test_quantiles) + len(r.test_random) for r in records.values()
    )
    for r in rows:
        assert set(r) <= ACTIVATION_COLUMNS, set(r) - ACTIVATION_COLUMNS
        assert ACTIVATION_REQUIRED <= set(r) and all(r[c] is not None for c in ACTIVATION_REQUIRED)
        assert len(r["tokens"]) == len(r["values"]) == 8
        assert r["maxValue"] == max(r["values"]) == r["values"][r["maxValueTokenIndex"]]
        assert r["minValue"] == min(r["values"])
    first = records["synthetic/L0/mlp_neurons:0"].test_top[0]
    match = [r for r in rows if r["index"] == "0" and r["dataIndex"] == str(first.window)]
    assert match and match[0]["tokens"] == first.tokens
