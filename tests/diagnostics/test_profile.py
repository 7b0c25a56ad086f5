"""`profile`: the ideal bytes of a call against hand-computed figures, each launch's shape, the
MODELED roofline against hand-computed times, extrapolation only with a reason, and the command
line labelling its times as modeled."""

import math

import pytest
import torch

from mps_inductor_ext import families, profiling
from mps_inductor_ext.__main__ import main
from mps_inductor_ext.profiling import chips
from mps_inductor_ext.profiling.ideal import distinct_bytes, visible_pairs


def rand(*shape, dtype=torch.float16, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


needs_counters = pytest.mark.skipif(not profiling.counters.available(),
                                    reason="the emulator in use has no memory counters")


def test_rms_norm_ideal_reads_x_and_w_writes_y():
    p = profiling.profile("rms_norm", rand(4, 4096), rand(4096), 1e-6)
    assert (p.ideal.bytes_read, p.ideal.bytes_written) == (4 * 4096 * 2 + 4096 * 2, 4 * 4096 * 2)
    (launch,) = p.launches
    assert launch.kernel == "rms_norm_half"
    assert launch.groups == 4  # one threadgroup per row
    assert launch.threads_per_group % 32 == 0


@needs_counters
def test_rms_norm_counted_bytes():
    """x read once and y written once; w read once per row (each row's threadgroup reads all of it:
    on a GPU those repeats hit the cache, but they are device loads), so 4/3 of the ideal here."""
    p = profiling.profile("rms_norm", rand(4, 4096), rand(4096), 1e-6)
    c = p.counts
    assert c.device_loaded == 4 * 4096 * 2 + 4 * 4096 * 2
    assert c.device_stored == 4 * 4096 * 2
    assert p.traffic_ratio == pytest.approx(4 / 3)
    assert 0 < c.threadgroup_bytes < c.device_bytes  # the row reduction's partial sums


@needs_counters
def test_softmax_counted_bytes_are_the_ideal():
    """Copy-like: each element read once and written once (fp16, rows of 256)."""
    p = profiling.profile(torch.ops.mpsk.softmax, rand(4, 256), -1, False)
    assert (p.ideal.bytes_read, p.ideal.bytes_written) == (2048, 2048)
    assert (p.counts.device_loaded, p.counts.device_stored) == (2048, 2048)
    assert p.traffic_ratio == 1.0


@needs_counters
def test_rope_and_gqa_decode_counted_within_their_bounds():
    """Between the ideal and the most the kernels may read: x once plus the tables once per head
    (RoPE), q once plus the group's K/V once per query head (decode attention, GQA 4:1)."""
    heads, seq, dim = 4, 8, 64
    rope = profiling.profile("rope", rand(1, heads, seq, dim), rand(seq, dim, seed=1), rand(seq, dim, seed=2), False)
    x_bytes, table_bytes = heads * seq * dim * 2, 2 * seq * dim * 2
    assert rope.counts.device_stored == x_bytes
    assert rope.ideal.bytes_read <= rope.counts.device_loaded <= x_bytes + heads * table_bytes
    q, k, v = rand(1, 4, 1, 64), rand(1, 2, 64, 64, seed=1), rand(1, 2, 64, 64, seed=2)
    attn = profiling.profile("attention", q, k, v, None, None, False, -1)
    kv_bytes_per_head = 2 * 64 * 64 * 2
    assert attn.counts.device_stored == 4 * 64 * 2
    assert attn.ideal.bytes_read <= attn.counts.device_loaded <= 4 * 64 * 2 + 4 * kv_bytes_per_head


def test_rope_counts_broadcast_tables_once():
    x = rand(1, 4, 8, 64)
    cos, sin = rand(8, 64, seed=1), rand(8, 64, seed=2)
    p = profiling.profile("mpsk::rope", x, cos.expand(1, 4, 8, 64), sin, False)
    assert p.ideal.bytes_read == 4 * 8 * 64 * 2 + 2 * 8 * 64 * 2
    assert p.ideal.bytes_written == 4 * 8 * 64 * 2


def test_distinct_bytes_of_views():
    base = torch.zeros(6, 5, dtype=torch.float32)
    assert distinct_bytes(base.t()) == 120  # transposed: the same 30 elements
    assert distinct_bytes(base[:, :2]) == 48  # a slice names only its own
    assert distinct_bytes(torch.zeros(5).expand(7, 5)) == 20  # broadcast: once
    assert distinct_bytes(torch.zeros(0, 3)) == 0


def test_attention_ideal_and_flops():
    q, k, v = rand(1, 4, 1, 64), rand(1, 1, 32, 64, seed=1), rand(1, 1, 32, 64, seed=2)
    p = profiling.profile("attention", q, k, v, None, None, False, -1)
    assert p.ideal.bytes_read == (4 * 64 + 2 * 32 * 64) * 2  # a GQA group's K/V once, not per query head
    assert p.ideal.flops == 2 * 4 * 32 * (64 + 64)
    assert visible_pairs(3, 3, True, -1) == 6
    assert visible_pairs(4, 4, True, 2) == 7
    assert visible_pairs(1, 5, False, -1) == 5


def test_roofline_by_hand():
    m2max = chips.get("m2max")
    assert m2max.name == "M2 Max"
    memory = profiling.roofline(m2max, 400_000_000, None, 16)
    assert memory.bound == "memory" and math.isclose(memory.seconds, 1e-3)
    compute = profiling.roofline(m2max, 0, 13_600_000_000, 16)
    assert compute.bound == "compute" and math.isclose(compute.seconds, 1e-3)


def test_every_chip_has_sources():
    for chip in profiling.CHIPS:
        assert chip.bandwidth_gbs > 0 and chip.fp32_tflops > 0
        assert chip.bandwidth_source and chip.compute_source
    assert all("apple.com/newsroom" in c.bandwidth_source for c in profiling.CHIPS)


def test_extrapolation_needs_a_reason():
    p = profiling.profile("softmax", rand(4, 256), -1, False)
    full = profiling.Ideal(p.ideal.bytes_read * 8, p.ideal.bytes_written * 8, None)
    with pytest.raises(ValueError, match="linear"):
        p.extrapolated(8, full, "32x256", "")
    big = p.extrapolated(8, full, "32x256", "rows are independent")
    assert big.extrapolated_from == p.label and big.label == "32x256" and big.ideal == full
    if p.counts is not None:
        assert big.counts.device_bytes == 8 * p.counts.device_bytes
        assert big.traffic_ratio == p.traffic_ratio


def test_bad_input():
    with pytest.raises(KeyError, match="no op family"):
        profiling.profile("gelu", rand(2, 2))
    with pytest.raises(ValueError, match="no tensor"):
        profiling.profile("softmax", 3, -1, False)
    with pytest.raises(KeyError, match="no chip"):
        chips.get("M9")
    with pytest.raises(RuntimeError, match="no Metal kernel"):
        profiling.profile("softmax", torch.randn(2, 3, dtype=torch.float64), -1, False)


def test_every_family_has_a_case_in_every_preset():
    for preset in profiling.PRESETS:
        assert {c.family for c in profiling.cases(preset, torch.float16)} == set(families.NAMES)


def test_cli_prints_modeled(capsys):
    assert main(["profile", "--op", "softmax", "--chips", "M1,M4 Max"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MODELED")
    assert "M4 Max" in out and "softmax" in out


def test_cli_chip_table_and_bad_chip(capsys):
    assert main(["profile", "--chips-table"]) == 0
    out = capsys.readouterr().out
    assert all(chip in out for chip in chips.NAMES) and "MODELED" in out
    assert main(["profile", "--op", "softmax", "--chips", "M7"]) == 2
    assert "no chip 'M7'" in capsys.readouterr().err


def test_llama3_benchmark_smoke(tmp_path, capsys):
    """The benchmark script on tiny shapes, one family, in this process: table and JSON written, modeled."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "profile_llama3.py"
    spec = importlib.util.spec_from_file_location("profile_llama3", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "table"
    assert module.main(["--preset", "tiny", "--op", "rms_norm", "--out", str(out)]) == 0
    assert "MODELED" in capsys.readouterr().out
    assert "MODELED" in out.with_suffix(".txt").read_text()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["op"] for r in rows] == ["rms_norm"]
    assert rows[0]["ideal_bytes_read"] == (4 * 4096 + 4096) * 2
    assert set(rows[0]["modeled_us"]) == set(chips.NAMES)


@needs_counters
def test_rope_moves_the_ideal_bytes():
    """Issue 15's bound: RoPE within 5% of the ideal (x and the tables read once, the output written
    once). HF's tables are (B, S, D), shared by every head; the kernel reads them once per position."""
    heads, seq, dim = 8, 4, 64
    tables = [rand(1, seq, dim, seed=s).unsqueeze(1) for s in (1, 2)]
    p = profiling.profile("rope", rand(1, heads, seq, dim), *tables, False)
    assert p.ideal.bytes == 2 * heads * seq * dim * 2 + 2 * seq * dim * 2  # hand-computed
    assert p.counts.device_bytes <= 1.05 * p.ideal.bytes


@needs_counters
def test_rope_qk_moves_the_ideal_bytes():
    """q (8 heads) and k (2 heads, GQA) rotated in one launch with one read of the shared tables."""
    seq, dim = 4, 64
    q, k = rand(1, 8, seq, dim), rand(1, 2, seq, dim, seed=3)
    tables = [rand(1, seq, dim, seed=s).unsqueeze(1) for s in (1, 2)]
    p = profiling.profile("rope_qk", q, k, *tables, False)
    assert p.ideal.bytes == 2 * (8 + 2) * seq * dim * 2 + 2 * seq * dim * 2  # hand-computed
    assert p.counts.device_bytes <= 1.05 * p.ideal.bytes
