"""`tune`: the native op is recorded where it measured faster and then taken by the eager op and the
decompositions; the kernel stays elsewhere; a recorded choice changes the cache key and the pass
uuid. Timings are injected: a timer that says which path ran by watching for kernel launches."""

import pytest
import torch

from mps_inductor_ext import config, families, tuning
from mps_inductor_ext.ops.launch import observe_launches
from mps_inductor_ext.passes import MpskGraphPass
from mps_inductor_ext.profiling.cases import ProfileCase
from mps_inductor_ext.tune import tune


@pytest.fixture(autouse=True)
def isolated_tuning(tmp_path, monkeypatch):
    """A tuning file of the test's own; the compiled-kernel cache stays shared (warm)."""
    monkeypatch.setattr(tuning, "path", lambda: tmp_path / "tuning.json")
    yield
    tuning.clear()


def injected_timer(mpsk_seconds, native_seconds):
    """Runs the measured function once and reports `mpsk_seconds` if it launched a Metal kernel,
    `native_seconds` if it did not (so the test also sees that tune ran the kernel for "mpsk")."""

    def timer(fn):
        launched = []
        with observe_launches(lambda *a: launched.append(a)):
            fn()
        return mpsk_seconds if launched else native_seconds

    return timer


def rms_case(rows, cols):
    def build(dtype, device):
        g = torch.Generator().manual_seed(cols)
        if device == "meta":
            return (torch.empty(rows, cols, dtype=dtype, device="meta"),
                    torch.empty(cols, dtype=dtype, device="meta"), 1e-6), {}
        return (torch.randn(rows, cols, generator=g).to(dtype), torch.randn(cols, generator=g).to(dtype), 1e-6), {}

    return ProfileCase("rms_norm", f"{rows}x{cols}", build)


def kernels_launched(fn):
    seen = []
    with observe_launches(lambda launch, *_: seen.append(launch.kernel)):
        fn()
    return seen


def test_native_recorded_where_faster_and_taken_by_the_eager_op():
    results = tune([rms_case(3, 200)], [torch.float32], device="cpu", timer=injected_timer(2e-3, 1e-3))
    assert [r.choice for r in results] == ["native"]
    x, w = torch.randn(4, 250), torch.randn(250)  # another call in the same bucket (4 rows x 256 columns)
    assert tuning.prefers_native("rms_norm", (x, w, 1e-6, 0.0))
    out = []
    with config.patch(emulate_metal=True):
        ran = kernels_launched(lambda: out.append(torch.ops.mpsk.rms_norm(x, w, 1e-6)))
    assert ran == []
    got = out[0]
    torch.testing.assert_close(got, families.get("rms_norm").resolve("reference")(x, w, 1e-6))


def test_kernel_kept_where_it_is_faster_and_in_other_buckets():
    tune([rms_case(3, 200)], [torch.float32], device="cpu", timer=injected_timer(1e-3, 2e-3))
    assert tuning.table()[tuning.choice_key("rms_norm", (torch.empty(3, 200), torch.empty(200), 1e-6, 0.0))] == "mpsk"
    tune([rms_case(3, 2000)], [torch.float32], device="cpu", timer=injected_timer(2e-3, 1e-3))
    with config.patch(emulate_metal=True):
        ran = kernels_launched(lambda: torch.ops.mpsk.rms_norm(torch.randn(3, 200), torch.randn(200), 1e-6))
        ran_big = kernels_launched(lambda: torch.ops.mpsk.rms_norm(torch.randn(3, 2000), torch.randn(2000), 1e-6))
        ran_half = kernels_launched(
            lambda: torch.ops.mpsk.rms_norm(torch.randn(3, 2000).half(), torch.randn(2000).half(), 1e-6))
    assert ran == ["rms_norm_float"]
    assert ran_big == []  # native won for 2048-wide fp32 rows
    assert ran_half == ["rms_norm_half"]  # nothing measured for fp16: the kernel is the default


def test_choice_changes_the_key_table_and_pass_uuid():
    before = MpskGraphPass().uuid()
    results = tune([rms_case(3, 200)], [torch.float16], device="cpu", timer=injected_timer(2e-3, 1e-3))
    assert results[0].key == "choice:rms_norm/float16/4x256,1x256"
    assert tuning.table() == {results[0].key: "native"}
    after_native = MpskGraphPass().uuid()
    assert after_native != before
    tune([rms_case(3, 200)], [torch.float16], device="cpu", timer=injected_timer(1e-3, 2e-3))
    assert tuning.table() == {results[0].key: "mpsk"}
    assert MpskGraphPass().uuid() not in (before, after_native)



def test_decomposition_takes_native_only_where_recorded():
    from mps_inductor_ext.lowerings import decompose

    decomp = decompose._table()[families.get("softmax").custom_op]
    x = torch.randn(2, 100)
    with config.patch(emulate_metal=True):
        assert decomp(x, -1, False) is NotImplemented  # the kernel's lowering runs
        tuning.record_choice("softmax", (x, -1, False), "native")
        torch.testing.assert_close(decomp(x, -1), torch.softmax(x, -1))  # default log=False filled in
        assert decomp(torch.randn(2, 1000), -1, False) is NotImplemented  # another bucket


def test_bad_input():
    with pytest.raises(ValueError, match="choice must be one of"):
        tuning.record_choice("softmax", (torch.randn(2, 3), -1, False), "fastest")
    with pytest.raises(ValueError, match="no tensor"):
        tuning.record_choice("softmax", (1, 2), "mpsk")
    with pytest.raises(ValueError, match="device must be"):
        tune([rms_case(1, 8)], [torch.float32], device="cuda", timer=injected_timer(1, 2))
    with pytest.raises(ValueError, match="non-negative seconds"):
        tune([rms_case(1, 8)], [torch.float32], device="cpu", timer=lambda fn: -1.0)


def test_corrupt_choice_entries_are_ignored():
    tuning.path().parent.mkdir(parents=True, exist_ok=True)
    tuning.path().write_text('{"choice:softmax/float32/2x128,-1,False": "fastest", "softmax/float32/128": 64}')
    tuning._memo.clear()
    assert tuning.table() == {"softmax/float32/128": 64}
    assert not tuning.prefers_native("softmax", (torch.randn(2, 100), -1, False))


def test_cli_off_a_mac_says_emulator_and_records_nothing(capsys):
    from mps_inductor_ext.__main__ import main

    assert main(["tune", "--op", "softmax", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "not GPU times" in out and "not recorded" in out
    assert "softmax" in out and tuning.table() == {}
    assert not tuning.path().exists()
