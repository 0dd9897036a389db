"""``autointerp llm ask / cache-stats / cache-clear`` against a fake loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autointerp.cli import main
from autointerp.llm.testing import FakeOpenAIServer, serving_in_thread


@pytest.fixture
def fake_server_url() -> Iterator[tuple[str, FakeOpenAIServer]]:
    """A fake server on its own event loop in a thread (the CLI runs its own asyncio.run)."""
    with serving_in_thread(FakeOpenAIServer()) as srv:
        yield f"openai-compatible:{srv.url}/v1/fake", srv


def test_llm_ask_and_cache_commands(
    fake_server_url: tuple[str, FakeOpenAIServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, srv = fake_server_url
    db = str(tmp_path / "c.sqlite")
    main(["llm", "ask", spec, "hello world", "--cache-path", db])
    out = capsys.readouterr().out
    assert "t=0.0 hello world" in out and "1 request(s)" in out and "cost $0.000000" in out
    main(["llm", "ask", spec, "hello world", "--cache-path", db])
    assert "0 request(s), 1 cache hit(s)" in capsys.readouterr().out
    assert srv.requests == 1
    main(["llm", "cache-stats", "--cache-path", db])
    assert "1 entries" in capsys.readouterr().out
    main(["llm", "cache-clear", "--cache-path", db])
    assert "deleted 1" in capsys.readouterr().out


def test_llm_ask_bad_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["llm", "ask", "nonsense", "hi", "--cache-path", str(tmp_path / "c.sqlite")])
    assert e.value.code == 2
    assert "bad LLM spec" in capsys.readouterr().err


def test_explain_bad_llm_settings_exit_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--prices and the client limits are checked before sampling starts, and no run directory is made."""
    run = tmp_path / "run"
    for args, message in (
        (["--prices", str(tmp_path / "missing.json")], "cannot read prices"),
        (["--llm-concurrency", "0"], "--llm-concurrency must be at least 1"),
        (["--requests-per-minute", "-5"], "must be positive"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["explain", "--model", "gemma3-270m", "--hook", "L0/mlp_neurons", "--run-dir", str(run), *args])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not run.exists()
