"""The benchmark scripts run end to end (tiny settings) and say emulator times are not GPU times."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def run(script, *args, tmp_path):
    env = {**os.environ, "MPSK_CACHE_DIR": str(tmp_path / "cache" / "emulator")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_emulator_throughput(tmp_path):
    out = run("emulator_throughput.py", "--repeats", "1", "--rows", "4", "--cols", "256", tmp_path=tmp_path)
    assert "not GPU times" in out
    modes = ("fast", "memcheck", "memcheck+initcheck", "all checks", "counters")
    assert out.count("row_sum_squares_float") == 3 * len(modes)  # three group sizes, each in every mode
    for mode in modes:
        assert f"  {mode} " in out


@pytest.mark.slow
def test_ops_vs_native_writes_csv(tmp_path):
    target = tmp_path / "ops.csv"
    out = run("ops_vs_native.py", "--repeats", "1", "--warmup", "0", "--csv", str(target), tmp_path=tmp_path)
    assert "not GPU times" in out
    rows = list(csv.DictReader(target.open()))
    assert {r["op"] for r in rows} == {
        "rms_norm", "layer_norm", "softmax", "rope", "attention prefill", "attention decode",
        "quantized_linear decode", "quantized_linear prefill",
    }
    quantized = [r for r in rows if r["op"].startswith("quantized_linear")]
    assert all(0 < float(r["mpsk_mb"]) < float(r["native_mb"]) for r in quantized)  # 4-bit moves fewer bytes
    assert all(float(r["mpsk_ms"]) > 0 and float(r["native_ms"]) > 0 for r in rows)
    assert not (tmp_path / "cache" / "tuning.json").exists()  # emulator sweeps are not recorded


@pytest.mark.slow
def test_compile_time_ratio(tmp_path):
    import re

    from mps_inductor_ext.models import TinyLlamaConfig

    out = run("compile_time.py", "--runs", "1", "--models", "tiny_llama", tmp_path=tmp_path)
    n = TinyLlamaConfig().num_layers
    mpsk_row = next(line for line in out.splitlines() if line.startswith("tiny_llama  mpsk"))
    assert mpsk_row.endswith(f"add_rms_norm {2 * n}, attention {n}, rms_norm 1, rope_qk {n}")  # the patterns fired
    ratio = re.search(r"ratio mpsk/inductor compile time, tiny_llama: ([\d.]+) \((meets|misses)", out)
    assert ratio and float(ratio.group(1)) > 0
    assert "not GPU times" in out


@pytest.mark.slow
def test_launches_per_forward(tmp_path):
    from mps_inductor_ext.models import TinyLlamaConfig

    target = tmp_path / "launches.json"
    out = run("launches.py", "--models", "tiny_llama", "--prefill", "4", "--json", str(target), tmp_path=tmp_path)
    assert "counts, not timings" in out
    rows = {(r["phase"], r["backend"]): r for r in json.loads(target.read_text())["rows"]}
    assert set(rows) == {(p, b) for p in ("prefill", "decode") for b in ("eager", "inductor", "mpsk")}
    n = TinyLlamaConfig().num_layers
    replaced = 1 + 2 * n + n + n  # rms_norm, add_rms_norm, rope_qk, attention: one kernel each at these sizes
    for phase in ("prefill", "decode"):
        assert rows[phase, "mpsk"]["mpsk"] == replaced
        assert rows[phase, "inductor"]["mpsk"] == rows[phase, "eager"]["mpsk"] == 0
        eager = rows[phase, "eager"]
        assert eager["inductor"] == 0 and eager["launches"] == eager["aten"]
        # every linear layer is one extern matmul in both compiled programs: 7 per layer and the LM head
        assert rows[phase, "mpsk"]["aten_ops"]["aten::mm.out"] == rows[phase, "inductor"]["aten_ops"]["aten::mm.out"] \
            == 7 * n + 1
        for b in ("eager", "inductor", "mpsk"):
            r = rows[phase, b]
            assert r["launches"] == r["inductor"] + r["mpsk"] + r["aten"] > 0
