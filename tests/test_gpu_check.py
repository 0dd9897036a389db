"""benchmarks/gpu_check.py: its CPU path runs and agrees with itself; without CUDA it says so plainly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check


def test_gpu_check_cpu_path_float32_matches_the_reference() -> None:
    rows = gpu_check.check("cpu", ["float32"], archs=("gpt2",), sources=("neurons", "sae-topk"), threads=1)
    assert [(r.arch, r.source) for r in rows] == [("gpt2", "neurons"), ("gpt2", "sae-topk")]
    for r in rows:
        assert r.top_agreement == 1.0 and r.max_rel_act_diff == 0.0 and r.max_steer_diff == 0.0 and r.ok()
    assert rows[0].max_sim_diff == 0.0  # the simulator path ran (neurons rows simulate) and is deterministic


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_gpu_check_without_cuda_says_no_cuda_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out
