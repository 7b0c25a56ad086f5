"""mps_inductor_ext.kernel_mapping(): the `kernels` package's kernelize() swaps transformers' hub-kernel
layers ("RMSNorm", and from transformers 5.25 the "rotary_pos_emb" function wrapper) for layers on
the mpsk ops, with nothing downloaded."""

from __future__ import annotations

import pytest
import torch
from helpers import kernel_counts as kernels
from helpers import launched_variants

import mps_inductor_ext as mpsk

transformers = pytest.importorskip("transformers")
hub = pytest.importorskip("kernels", reason="the `kernels` package is not installed (transformers < 5.25 does not "
                          "require it), so kernelize() does not exist here")

import hf_models  # noqa: E402


def kernelized_llama(dtype=torch.float32):
    model = hf_models.build("llama", "sdpa").eval().to(dtype)
    ids = torch.randint(3, hf_models.VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    with hub.use_kernel_mapping(mpsk.kernel_mapping()):
        hub.kernelize(model, mode=hub.Mode.INFERENCE, device="mps")
    return model, ids, ref


def test_kernelize_runs_the_mpsk_kernels():
    with mpsk.config.patch(emulate_metal=True):
        model, ids, ref = kernelized_llama()
        with torch.no_grad(), launched_variants() as seen:
            got = model(ids).logits
    counts = kernels(seen)
    layers = hf_models.LAYERS
    assert counts["rms_norm_float"] == 2 * layers + 1
    # transformers 5.25 wraps apply_rotary_pos_emb for kernelize; 5.24's is a plain function.
    wrapped = isinstance(transformers.models.llama.modeling_llama.apply_rotary_pos_emb, torch.nn.Module)
    assert counts["rope_float"] == (2 * layers if wrapped else 0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_what_the_ops_cannot_take_runs_the_original_math():
    with mpsk.config.patch(emulate_metal=True):
        model, ids, ref = kernelized_llama(torch.float64)
        with torch.no_grad(), launched_variants() as seen:
            got = model(ids).logits
    assert not seen
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
