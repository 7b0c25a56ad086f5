"""`python -m mps_inductor_ext demo`: the README's main command compiles the built-in model and checks it."""

import os
import re
import subprocess
import sys

import pytest

import mps_inductor_ext as mpsk
from mps_inductor_ext import demo
from mps_inductor_ext.models import TinyLlamaConfig


def expected_line() -> str:
    """From the model's structure, written out here: per layer two norms, each reading a residual sum
    but the first (one plain rms_norm, 2n add_rms_norm), RoPE of q and k with the same tables (one
    rope_qk), one attention; kinds in name order, as the demo prints them."""
    n = TinyLlamaConfig().num_layers
    counts = {"add_rms_norm": 2 * n, "attention": n, "rms_norm": 1, "rope_qk": n}
    return "replaced: " + ", ".join(f"{k} {v} (of {v})" for k, v in counts.items())


@pytest.mark.slow
def test_demo_command(tmp_path):
    env = {**os.environ, "MPSK_CACHE_DIR": str(tmp_path / "emulator")}
    proc = subprocess.run([sys.executable, "-m", "mps_inductor_ext", "demo", "--backend", "cpu"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert expected_line() in out
    diff = float(re.search(r"max abs difference of the logits from eager: (\S+) -> OK", out).group(1))
    assert diff <= demo.MODEL_TOL
    assert re.search(r"eager [\d.]+ ms, backend=\"mpsk\" [\d.]+ ms", out)
    assert "not GPU times" in out
    assert out.rstrip().endswith("result: OK")


@pytest.mark.slow
def test_demo_fails_when_a_pattern_is_missed(capsys):
    """The demo's verdict depends on the replacements: with attention switched off it must fail."""
    with mpsk.config.patch(patterns={"attention": False}):
        assert demo.run("cpu") == 1
    out = capsys.readouterr().out
    assert "attention 0 (of 2)" in out
    assert "result: FAILED" in out


@pytest.mark.slow
def test_export_command_then_load_in_a_fresh_process(tmp_path):
    """The README's export command, then its one-line load of the package in a new process."""
    path = tmp_path / "tiny_llama.pt2"
    proc = subprocess.run([sys.executable, "-m", "mps_inductor_ext", "export", str(path), "--backend", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert expected_line() in out
    diffs = re.findall(r"tokens: max abs difference of the logits from eager: (\S+) -> OK", out)
    assert len(diffs) == len(demo.EXPORT_SEQS) and all(float(d) <= demo.MODEL_TOL for d in diffs)
    assert out.rstrip().endswith("result: OK")
    load = (f"import torch, mps_inductor_ext as mpsk; m = mpsk.aoti_load_package({str(path)!r}); "
            "print(tuple(m(torch.randint(0, 256, (1, 9))).shape))")
    proc = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"(1, 9, {TinyLlamaConfig().vocab_size})"


def test_export_command_rejects_a_path_that_is_not_a_package(tmp_path, capsys):
    from mps_inductor_ext.__main__ import main

    assert main(["export", str(tmp_path / "model.zip"), "--backend", "cpu"]) == 2
    assert "must end in .pt2" in capsys.readouterr().err
