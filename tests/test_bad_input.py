"""Bad input is refused before anything happens: every case below exits 2 with one line on stderr (an
``error:`` line naming the problem and the fix), no traceback, and leaves no run directory behind.

The cases use a tiny random Llama (hidden 32, MLP 48, 2 layers) and a local Gemma Scope-style SAE written
with numpy; no LLM is loaded (the LLM specs are checked without building their clients)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autointerp.cli import main


def write_sae(folder: Path, model: Path, *, d: int = 32, n: int = 40, nan: bool = False) -> Path:
    """A JumpReLU SAE in Gemma Scope's layout (``params.npz``, numpy is its writer) reading L1/resid_post."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w_enc = rng.normal(size=(d, n)).astype(np.float32)
    if nan:
        w_enc[0, 3] = np.nan
    np.savez(
        folder / "params.npz",
        W_enc=w_enc,
        W_dec=rng.normal(size=(n, d)).astype(np.float32),
        b_enc=np.zeros(n, np.float32),
        b_dec=np.zeros(d, np.float32),
        threshold=np.full(n, 0.1, np.float32),
    )
    (folder / "autointerp_sae.json").write_text(json.dumps({"hook": "L1/resid_post", "model": str(model)}))
    return folder


@pytest.fixture()
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only bind mount (root ignores permission bits, not a read-only mount)."""
    src, dst = tmp_path / "ro-src", tmp_path / "ro"
    src.mkdir()
    dst.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command")
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(dst)], capture_output=True)
    if r.returncode != 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(dst)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {r.stderr.decode().strip()}")
    try:
        yield dst
    finally:
        subprocess.run(["umount", str(dst)], check=False)


# (name, command, arguments, a fragment of the expected message); the {placeholders} are filled in per test
TINY = ["--model", "{model}", "--corpus", "{corpus}", "--window", "16", "--tokens", "200"]
NEURONS = [*TINY, "--hook", "L1/mlp_neurons"]
CASES: list[tuple[str, str, list[str], str]] = [
    ("cache negative tokens", "cache", [*NEURONS, "--tokens", "-5"], "--tokens must be at least 1"),
    ("cache zero window", "cache", [*NEURONS, "--window", "0"], "--window must be at least 1"),
    ("cache reversed feature range", "cache", [*NEURONS, "--features", "5-2"], "bad feature range '5-2'"),
    ("cache feature range not a number", "cache", [*NEURONS, "--features", "a-b"], "bad feature range 'a-b'"),
    ("cache features beyond the neurons", "cache", [*NEURONS, "--features", "0-9999"], "out of range"),
    ("cache layer out of range", "cache", [*TINY, "--hook", "L7/mlp_neurons"], "layer 7 is out of range"),
    ("cache unknown hook kind", "cache", [*TINY, "--hook", "L1/nonsense"], "unknown hook kind 'nonsense'"),
    ("cache missing corpus file", "cache", [*NEURONS, "--corpus", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
    ("cache unknown dtype", "cache", [*NEURONS, "--dtype", "float8"], "unknown dtype 'float8'"),
    ("cache splits larger than n-top", "cache", [*NEURONS, "--n-top", "3"], "exceeds n_top = 3"),
    ("cache negative n-train-random", "cache", [*NEURONS, "--n-train-random", "-1"], "--n-train-random must be 0 or"),
    (
        "explain contrastive without counterexamples",
        "explain",
        [*NEURONS, "--explainer-kind", "contrastive", "--contrastive-negatives", "0"],
        "--contrastive-negatives must be at least 1",
    ),
    ("cache missing model folder", "cache", [*NEURONS, "--model", "/no/such/model"], "/no/such/model"),
    ("cache run dir is a file", "cache", [*NEURONS, "--run-dir", "{file}"], "is a file, not a folder"),
    ("cache run dir below a file", "cache", [*NEURONS, "--run-dir", "{file}/sub"], "cannot be made"),
    ("cache missing local SAE path", "cache", [*TINY, "--sae", "/no/such/sae"], "SAE path /no/such/sae does not exist"),
    ("cache unknown SAE address", "cache", [*TINY, "--sae", "nosuchfamily/L3"], "nosuchfamily"),
    ("cache SAE with NaN weights", "cache", [*TINY, "--sae", "{nansae}"], "NaN/Inf"),
    (
        "cache features beyond the SAE width",
        "cache",
        [*TINY, "--sae", "{sae}", "--features", "5000"],
        "features [5000] are out of range",
    ),
    ("cache SAE width differs from the model", "cache", [*TINY, "--sae", "{widesae}"], "SAE d_in 24 does not match"),
    ("cache --sae-dir without --sae", "cache", [*NEURONS, "--sae-dir", "{tmp}"], "--sae-dir only applies with --sae"),
    (
        "explain --sae-dir without --sae",
        "explain",
        [*NEURONS, "--sae-dir", "{tmp}"],
        "--sae-dir only applies with --sae",
    ),
    ("cache empty corpus file", "cache", [*NEURONS, "--corpus", "{empty}"], "empty"),
    ("explain negative tokens", "explain", [*NEURONS, "--tokens", "-5"], "--tokens must be at least 1"),
    (
        "explain URL spec without a model",
        "explain",
        [*NEURONS, "--explainer", "openai-compatible:http://127.0.0.1:9"],
        "names no model",
    ),
    (
        "explain endpoint that is not there",
        "explain",
        [*NEURONS, "--judge", "openai-compatible:http://127.0.0.1:9/v1/m"],
        "cannot reach http://127.0.0.1:9/v1/models",
    ),
    (
        "explain URL spec with a bad port",
        "explain",
        [*NEURONS, "--simulator", "vllm-server:http://127.0.0.1:99999/v1/m"],
        "not a valid URL",
    ),
    (
        "explain unknown LLM kind",
        "explain",
        [*NEURONS, "--explainer", "nonsense:model"],
        "bad LLM spec 'nonsense:model'",
    ),
    (
        "explain OpenAI without a key",
        "explain",
        [*NEURONS, "--explainer", "openai:gpt-4o-mini"],
        "no API key for openai",
    ),
    (
        "explain unknown local LLM",
        "explain",
        [*NEURONS, "--explainer", "local:no-such-llm"],
        "unknown local model 'no-such-llm'",
    ),
    ("explain missing price table", "explain", [*NEURONS, "--prices", "/no/such/prices.json"], "cannot read prices"),
    ("explain unknown scorer", "explain", [*NEURONS, "--scorers", "simulation,bogus"], "unknown scorer(s) bogus"),
    (
        "explain zero LLM concurrency",
        "explain",
        [*NEURONS, "--llm-concurrency", "0"],
        "--llm-concurrency must be at least 1",
    ),
    ("explain run dir is a file", "explain", [*NEURONS, "--run-dir", "{file}"], "is a file, not a folder"),
    ("explain missing cache run", "explain", ["--cache-run", "/no/such/run"], "/no/such/run"),
    ("explain --shard 3/2", "explain", [*NEURONS, "--shard", "3/2"], "bad --shard '3/2'"),
    ("explain --shard without a sample run", "explain", [*NEURONS, "--shard", "0/2"], "give --sample-run DIR"),
    ("explain --shard with --executor", "explain", [*NEURONS, "--shard", "0/2", "--executor", "local"],
     "give only one"),
    ("explain --range-size 0", "explain", [*NEURONS, "--range-size", "0"], "--range-size must be at least 1"),
    ("sample --features random:", "sample", [*NEURONS, "--features", "random:3"], "use it with `autointerp explain`"),
    ("explain --features random: malformed", "explain", [*NEURONS, "--features", "random:3,k=2"],
     "write e.g. random:25"),
    ("explain --features random:0", "explain", [*NEURONS, "--features", "random:0"], "must be at least 1"),
    ("explain SAE with NaN weights", "explain", [*TINY, "--sae", "{nansae}"], "NaN/Inf"),
    (
        "explain features beyond the SAE width",
        "explain",
        [*TINY, "--sae", "{sae}", "--features", "5000"],
        "features [5000] are out of range",
    ),
    (
        "explain --model with --sae of another width",
        "explain",
        [*TINY, "--sae", "{widesae}"],
        "SAE d_in 24 does not match",
    ),
]


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def assert_one_line_error(err: str) -> None:
    """One ``error:`` line, last on stderr (progress and INFO lines of a model load may come before it)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line on stderr, got:\n{err}"


@pytest.mark.parametrize(("name", "command", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(
    name: str,
    command: str,
    args: list[str],
    message: str,
    tiny_model_dir: Path,
    tiny_corpus_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no keys file, default run dirs under tmp
    monkeypatch.setenv("AUTOINTERP_RUNS", str(tmp_path / "runs"))
    work = tmp_path / "work"
    work.mkdir()
    a_file = work / "a-file"
    a_file.write_text("not a folder\n")
    saes = tmp_path / "saes"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    fill = {
        "model": str(tiny_model_dir),
        "corpus": str(tiny_corpus_file),
        "run": str(work / "run"),
        "file": str(a_file),
        "tmp": str(work),
        "empty": str(empty),
        "sae": str(write_sae(saes / "ok", tiny_model_dir)),
        "nansae": str(write_sae(saes / "nan", tiny_model_dir, nan=True)),
        "widesae": str(write_sae(saes / "wide", tiny_model_dir, d=24)),
    }
    argv = [command, *(a.format(**fill) for a in args)]
    if "--run-dir" not in argv:
        argv += ["--run-dir", str(work / "run")]
    before = sorted(p.name for p in work.iterdir())
    capsys.readouterr()
    assert run_cli(argv) == 2, name
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert message in err
    assert sorted(p.name for p in work.iterdir()) == before, "bad input left something behind"
    assert a_file.read_text() == "not a folder\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["cache", "explain"])
def test_run_dir_on_a_read_only_mount_exits_2(
    command: str,
    readonly_dir: Path,
    tiny_model_dir: Path,
    tiny_corpus_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [command, *(a.format(model=tiny_model_dir, corpus=tiny_corpus_file) for a in NEURONS)]
    for run_dir in (readonly_dir, readonly_dir / "new-run"):
        capsys.readouterr()
        assert run_cli([*argv, "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert_one_line_error(err)
        assert "not writable" in err and str(readonly_dir) in err
    assert list(readonly_dir.iterdir()) == []


def test_local_sae_path_keeps_its_leading_slash(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli(["cache", "--sae", "/no/such/sae", "--run-dir", str(tmp_path / "r")]) == 2
    assert "/no/such/sae" in capsys.readouterr().err


def test_url_spec_without_a_model_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from autointerp.errors import UserError
    from autointerp.llm.factory import check_spec, make_client

    with pytest.raises(UserError, match="names no model"):
        make_client("openai-compatible:http://127.0.0.1:9")
    with pytest.raises(UserError, match="names no model"):
        from autointerp.llm.base import ClientConfig

        check_spec("openai-compatible:http://127.0.0.1:9", ClientConfig())


def test_a_run_dir_left_by_an_interrupted_start_does_not_block_the_corrected_command(tmp_path: Path) -> None:
    from autointerp.errors import RunDirError
    from autointerp.rundir import RunDir

    RunDir.create(tmp_path / "r", "explain", {"explainer": "openai-compatible:http://127.0.0.1:9"})
    run = RunDir.create(tmp_path / "r", "explain", {"explainer": "local:qwen2.5-coder-1.5b"})
    assert run.manifest()["config"] == {"explainer": "local:qwen2.5-coder-1.5b"}
    run.set_stage("explain", "running")  # once a stage has started, other settings are refused
    with pytest.raises(RunDirError, match="other settings"):
        RunDir.create(tmp_path / "r", "explain", {"explainer": "openai:gpt-4o-mini"})


def test_a_failed_sampling_pass_never_leaves_the_stage_running(
    tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autointerp.sampling

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(autointerp.sampling, "run_sampling", broken)
    argv = ["cache", *(a.format(model=tiny_model_dir, corpus=tiny_corpus_file) for a in NEURONS)]
    with pytest.raises(RuntimeError):
        main([*argv, "--run-dir", str(tmp_path / "r")])
    stage = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["sample"]
    assert stage["status"] == "failed" and "disk on fire" in stage["error"]


def test_sweep_dir_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text("name: s\ncache_run: /no/such/run\ngrid:\n  n_top_examples: [5, 10]\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert run_cli(["sweep", str(spec), "--sweep-dir", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert "--sweep-dir" in err and a_file.read_text() == "x"


@pytest.mark.parametrize(("command", "extra"), [("sample", []), ("explain", []),
                                             ("sample", ["--executor", "local", "--workers", "2"])],
                         ids=["sample", "explain", "sample-2-local-shards"])
def test_a_finished_run_refuses_a_changed_corpus_and_keeps_its_results(
    command: str, extra: list[str], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conftest import WORDS
    from fake_llm import FakeLLM
    from test_pipeline import smart_chat

    import autointerp.pipeline
    from autointerp.pipeline import Clients

    llm = FakeLLM(chat_fn=smart_chat)
    monkeypatch.setattr(autointerp.pipeline, "open_clients", lambda config: (Clients(llm, llm, llm), []))
    corpus = tmp_path / "c.txt"
    docs = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(30)) for i in range(12)]
    corpus.write_text("\n\n".join(docs))
    run = tmp_path / "run"
    argv = [command, "--model", str(tiny_model_dir), "--corpus", str(corpus), "--hook", "L1/mlp_neurons",
            "--window", "16", "--tokens", "200", "--features", "0-1", "--run-dir", str(run), *extra]
    if command == "explain":
        argv += ["--scorers", "detection", "--max-records-per-split", "2"]
    assert run_cli(argv) == 0
    capsys.readouterr()
    assert run_cli(argv) == 0  # the same corpus: done, reused
    capsys.readouterr()
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    corpus.write_text("\n\n".join([" ".join(WORDS[::-1]), *docs]))  # a document added at the front
    assert run_cli(argv) == 2
    out, err = capsys.readouterr()
    assert_one_line_error(err)
    assert "changed since the pass" in err and "new --run-dir" in err
    assert "features" not in out  # no result printed
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # nothing written
