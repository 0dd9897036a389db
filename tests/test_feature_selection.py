"""``--features random:N,min=K,seed=S``: a documented, seeded rule for choosing the latents to explain among
the sampled ones that fire, instead of a hand-picked list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autointerp.errors import UserError
from autointerp.sampling import (
    RandomFeatures,
    SamplingConfig,
    SamplingSetup,
    choose_features,
    prepare_sampling,
    sampling_features,
)


def _stats(counts: list[int], n_tokens: int = 1000) -> list[dict[str, object]]:
    return [{"feature": i, "n_tokens": n_tokens, "frequency": c / n_tokens} for i, c in enumerate(counts)]


def test_rule_draws_only_among_features_firing_at_least_min_times_and_is_seeded() -> None:
    stats = _stats([0, 25, 3, 40, 20, 19, 100, 21])
    rule = RandomFeatures.parse("random:3,min=20,seed=4")
    assert rule == RandomFeatures(3, 20, 4) and rule.describe() == "random:3,min=20,seed=4"
    chosen = rule.choose(stats)
    assert chosen == sorted(chosen) and len(set(chosen)) == 3 and set(chosen) <= {1, 3, 4, 6, 7}
    assert rule.choose(stats) == chosen  # same sample, same rule: same features
    seeds = {tuple(RandomFeatures(3, 20, s).choose(stats)) for s in range(20)}
    assert len(seeds) > 1  # the seed matters
    assert RandomFeatures.parse("random:5") == RandomFeatures(5, 20, 0)  # defaults: min 20, seed 0
    with pytest.raises(UserError, match="only 5 sampled features fired on at least 20 tokens"):
        RandomFeatures(6, 20, 0).choose(stats)


@pytest.mark.parametrize("bad", ["random:", "random:x", "random:3,min", "random:3,k=2", "random:0", "random:3,min=0"])
def test_malformed_rules_are_one_line_errors(bad: str) -> None:
    with pytest.raises(UserError) as e:
        sampling_features(bad)
    assert "\n" not in str(e.value) and "random:25" in str(e.value)


def test_sampling_tracks_every_feature_for_a_rule_and_only_the_ranges_otherwise() -> None:
    assert sampling_features("random:4,seed=1") is None
    assert sampling_features(None) is None
    assert sampling_features("0-2,7") == (0, 1, 2, 7)


def test_a_sample_run_resolves_the_rule_from_its_own_statistics(tiny_model_dir: Path, tiny_corpus_file: Path,
                                                               tmp_path: Path) -> None:
    setup = SamplingSetup(model=str(tiny_model_dir), hook="L1/mlp_neurons", corpus=str(tiny_corpus_file), threads=1)
    run = tmp_path / "sample"
    prepare_sampling(setup, SamplingConfig(tokens=400, window=16)).run(run)
    stats = json.loads((run / "records" / "stats.json").read_text())
    chosen = choose_features(run, "random:5,min=3,seed=2")
    assert chosen == RandomFeatures(5, 3, 2).choose(stats)
    counts = {s["feature"]: round(s["frequency"] * s["n_tokens"]) for s in stats}
    assert chosen is not None and all(counts[f] >= 3 for f in chosen)
    assert choose_features(run, "0-3") == [0, 1, 2, 3] and choose_features(run, None) is None
    with pytest.raises(UserError, match="not sampled"):
        choose_features(run, "0-100000")


def test_explain_with_a_rule_samples_every_feature_and_explains_the_drawn_ones(
    tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_bad_input import run_cli
    from test_failed_not_final import Switchable

    import autointerp.pipeline
    from autointerp.pipeline import Clients
    from autointerp.rundir import load_run

    llm = Switchable(down=False)
    monkeypatch.setattr(autointerp.pipeline, "open_clients", lambda config: (Clients(llm, llm, llm), []))
    run = tmp_path / "run"
    args = ["explain", "--model", str(tiny_model_dir), "--hook", "L1/mlp_neurons", "--corpus", str(tiny_corpus_file),
            "--window", "16", "--tokens", "600", "--features", "random:3,min=5,seed=1", "--threads", "1",
            "--max-records-per-split", "2", "--run-dir", str(run)]
    assert run_cli(args) in (0, 1)
    meta = json.loads((run / "sample" / "records" / "meta.json").read_text())
    assert len(meta["features"]) == 48  # every neuron was sampled
    stats = json.loads((run / "sample" / "records" / "stats.json").read_text())
    expected = RandomFeatures(3, 5, 1).choose(stats)
    assert sorted(r.id.index for r in load_run(run).records.values()) == expected
