"""Core types, config docs and run directory basics."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from autointerp.config import config_to_dict, field_help
from autointerp.errors import RunDirError, UserError
from autointerp.hooks import HookPoint
from autointerp.records import ActivationRecord, FeatureId, Score, Simulation, Usage
from autointerp.rundir import RunDir, append_jsonl, read_jsonl


@dataclass(frozen=True)
class _Cfg:
    tokens: int = 5
    """How many tokens."""
    name: str = "x"
    """A name,
    on two lines."""


def test_field_help_reads_docstrings() -> None:
    assert field_help(_Cfg) == {"tokens": "How many tokens.", "name": "A name, on two lines."}
    assert config_to_dict(_Cfg()) == {"tokens": 5, "name": "x"}


def test_feature_id_round_trip() -> None:
    fid = FeatureId.parse("gemma3-270m/L6/mlp_neurons:17")
    assert fid == FeatureId("gemma3-270m/L6/mlp_neurons", 17)
    assert str(fid) == "gemma3-270m/L6/mlp_neurons:17"
    with pytest.raises(ValueError):
        FeatureId.parse("no-index")


def test_hook_names_map_to_transformerlens() -> None:
    assert HookPoint.parse("L6/mlp_neurons").tl_name == "blocks.6.mlp.hook_post"
    assert HookPoint.parse("blocks.20.hook_resid_post") == HookPoint(20, "resid_post")
    with pytest.raises(UserError):
        HookPoint.parse("L6/bogus")


def test_usage_json_has_every_field() -> None:
    u = Usage(prompt_tokens=3, completion_tokens=2, requests=1, cache_hits=4, cost_usd=0.5)
    assert u.to_json() == asdict(u) and Usage.from_json(u.to_json()) == u


def test_undefined_numbers_are_none_with_reason() -> None:
    with pytest.raises(ValueError):
        Score("correlation", float("nan"))
    with pytest.raises(ValueError):
        Score("correlation", None)
    s = Score("correlation", None, reason="true activations are constant")
    assert Score.from_json(s.to_json()) == s
    with pytest.raises(ValueError):
        Simulation(expected=None)
    assert not Simulation(expected=None, failed="unparseable").ok


def test_activation_record_checks_lengths() -> None:
    with pytest.raises(ValueError):
        ActivationRecord(["a", "b"], [1, 2], np.zeros(3))


def test_rundir_refuses_other_config_and_skips_torn_lines(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", "cache", {"tokens": 10})
    RunDir.create(tmp_path / "r", "cache", {"tokens": 10})  # same config: resumes
    run.set_stage("cache", "running")  # a run that started holds results: other settings are refused
    with pytest.raises(RunDirError):
        RunDir.create(tmp_path / "r", "cache", {"tokens": 20})
    f = run.file("x.jsonl")
    append_jsonl(f, [{"a": 1}])
    with open(f, "a") as fh:
        fh.write('{"a": 2')  # torn by a crash
    assert [r["a"] for r in read_jsonl(f)] == [1]  # the torn line is skipped on read
    append_jsonl(f, [{"a": 3}])
    assert [r["a"] for r in read_jsonl(f)] == [1, 3]
    assert [json.loads(line)["a"] for line in f.read_text().splitlines()] == [1, 3], "the fragment is cut off"
