"""The tuning cache: recorded group sizes are used by the ops and survive a reload."""

import pytest
import torch

from mps_inductor_ext import config, tuning
from mps_inductor_ext.ops.norm import norm_plan, rms_norm_reference


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPSK_CACHE_DIR", str(tmp_path / "emulator"))
    yield
    tuning.clear()


def plan_group(cols):
    plan = norm_plan("rms_norm", torch.float32, 2, cols, cols, cols, has_weight=False, has_bias=False,
                     eps=1e-6, vector_ok=True, policy=config.norm)
    return plan.launches[0].group_size


def test_recorded_size_is_used_for_its_bucket_only():
    tuning.record("rms_norm", torch.float32, 1000, 64)
    assert tuning.path().exists()
    assert plan_group(1000) == (64,)
    assert plan_group(600) == (64,)  # same power-of-two bucket (1024)
    assert plan_group(3000) != (64,)  # bucket 4096 has no record
    tuning._memo.clear()  # a fresh process reads the file
    assert tuning.lookup("rms_norm", torch.float32, 1000) == 64


def test_tuned_op_still_matches_reference():
    tuning.record("rms_norm", torch.float32, 300, 32)
    x = torch.randn(3, 300, generator=torch.Generator().manual_seed(0))
    with config.patch(emulate_metal=True):
        got = torch.ops.mpsk.rms_norm(x, None, 1e-6)
    torch.testing.assert_close(got, rms_norm_reference(x, None, 1e-6))


@pytest.mark.parametrize(
    "args,error",
    [
        (("rms_norm", torch.float32, 100, 48), ValueError),
        (("rms_norm", torch.float32, 0, 64), ValueError),
        (("", torch.float32, 100, 64), ValueError),
        (("rms_norm", "float32", 100, 64), TypeError),
    ],
)
def test_bad_input(args, error):
    with pytest.raises(error):
        tuning.record(*args)


def test_corrupt_file_is_ignored():
    tuning.path().parent.mkdir(parents=True, exist_ok=True)
    tuning.path().write_text("{not json")
    tuning._memo.clear()
    assert tuning.lookup("rms_norm", torch.float32, 100) is None


def test_softmax_takes_its_recorded_size():
    from mps_inductor_ext.ops.softmax import softmax_plan

    def group():
        plan = softmax_plan(torch.float32, 2, 1000, 1, (1000, 1, 1), (1000, 1, 1), log=False, vector_ok=True,
                            policy=config.softmax)
        return plan.launches[0].group_size

    assert group() != (64,)
    tuning.record("softmax", torch.float32, 1000, 64)
    assert group() == (64,)
