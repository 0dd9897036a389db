"""Execute the notebooks at small sizes (SMALL=1) with nbclient; outputs go to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout: int) -> nbformat.NotebookNode:
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    monkeypatch.setenv("SMALL", "1")
    monkeypatch.setenv("AUTOINTERP_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("AUTOINTERP_SWEEP_DIR", raising=False)
    monkeypatch.delenv("AUTOINTERP_SAE_DIR", raising=False)
    monkeypatch.delenv("AUTOINTERP_DOWNLOAD", raising=False)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "a notebook wrote into the repository"
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(str(o.get("text", "")))
            out.append(str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


@pytest.mark.slow
def test_sweep_analysis_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute("sweep_analysis", tmp_path, monkeypatch, timeout=300)
    assert (tmp_path / "out" / "plots" / "comparison_correlation.png").exists()
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_gemma_scope_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute("gemma_scope", tmp_path, monkeypatch, timeout=300)
    text = _text(nb)
    assert "google/gemma-scope-2b-pt-res" in text
    assert "UserError:" in text and "HF_HUB_OFFLINE" in text, "the offline error is shown, with its fix"
    assert "download skipped" in text


@pytest.mark.slow
def test_quickstart_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real embedded models: Gemma-3-270M subject, SmolLM2-135M explainer/simulator, 2 features."""
    _execute("quickstart", tmp_path, monkeypatch, timeout=900)
    out = tmp_path / "out"
    assert (out / "explain" / "scores.jsonl").exists()
    assert (out / "explain" / "report.html").exists()
