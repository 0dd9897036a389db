"""CLI options are declared once, in the config dataclasses: every field of a command's config is an option
whose help is the field's docstring, and older flag names keep working."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from autointerp.cli.app import app
from autointerp.config import field_help
from autointerp.llm.base import ClientConfig
from autointerp.pipeline import ExplainConfig
from autointerp.sampling import SamplingConfig, SamplingSetup
from autointerp.train_sae import TrainSaeConfig


def _options(path: tuple[str, ...]) -> dict[str, tuple[list[str], str]]:
    import autointerp.cli  # noqa: F401  (registers the commands)

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return {p.name: ([*p.opts, *p.secondary_opts], p.help or "") for p in cmd.params}


@pytest.mark.parametrize(
    ("path", "cls", "left_out"),
    [
        (("explain",), ExplainConfig, set()),
        (("sample",), SamplingConfig, {"features"}),
        (("sample",), SamplingSetup, set()),
        (("cache",), SamplingConfig, {"features"}),
        (("train-sae",), TrainSaeConfig, {"out"}),
    ],
)
def test_every_config_field_is_an_option_with_its_docstring_as_help(
    path: tuple[str, ...], cls: type, left_out: set[str]
) -> None:
    opts = _options(path)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in left_out:
            continue
        assert f.name in opts, f"{cls.__name__}.{f.name} is not an option of {' '.join(path)}"
        assert opts[f.name][1] == helps[f.name]


def test_older_flag_names_keep_working() -> None:
    explain = _options(("explain",))
    assert {"--cache", "--no-cache", "--llm-cache", "--no-llm-cache"} <= set(explain["llm_cache"][0])
    assert "--n-top-examples" in explain["n_top_examples"][0] and "--timeout-s" in explain["timeout_s"][0]
    ask = _options(("llm", "ask"))
    assert "--timeout" in ask["timeout_s"][0] and "--prices" in ask["prices_path"][0]
    assert "--no-cache" in ask["cache"][0] and ask["cache"][1] == field_help(ClientConfig)["cache"]


def test_explain_builds_its_config_from_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from autointerp.cli import main

    seen: list[ClientConfig] = []

    def stop(specs: object, config: ClientConfig) -> None:
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr("autointerp.checks.check_llm_settings", stop)
    with pytest.raises(SystemExit):
        main(["explain", "--no-cache", "--timeout-s", "9", "--llm-concurrency", "3"])
    assert len(seen) == 1
    assert (seen[0].cache, seen[0].timeout_s, seen[0].max_concurrency) == (False, 9.0, 3)


def test_score_declares_each_rescoring_setting_once_from_the_config() -> None:
    from autointerp.pipeline import SCORE_SETTINGS

    opts = _options(("score",))
    helps = field_help(ExplainConfig)
    for name in SCORE_SETTINGS:
        assert name in opts, f"ExplainConfig.{name} is not an option of score"
        assert opts[name][1] == helps[name]
    # fields that pick which records or examples a score reads are not rescoring settings
    assert "max_records_per_split" not in opts and "classifier_examples" not in opts


def test_score_passes_only_the_settings_given_so_the_run_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from autointerp.cli import main

    seen: list[dict[str, object]] = []

    async def fake_run_score(run_dir: object, scorers: str, **kw: object) -> None:
        seen.append(dict(kw["settings"]))  # type: ignore[call-overload]
        raise SystemExit(0)

    monkeypatch.setattr("autointerp.pipeline.run_score", fake_run_score)
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path), "--negatives", "hard", "--no-judge-probabilities", "--steer-prompts", "3"])
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path)])
    assert seen == [{"negatives": "hard", "judge_probabilities": False, "steer_prompts": 3}, {}]


def test_score_refuses_a_bad_setting_with_exit_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from test_bad_input import assert_one_line_error, run_cli

    assert run_cli(["score", str(tmp_path), "--alpha", "strong"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "alpha" in err
