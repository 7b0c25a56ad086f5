"""The kernel sources as the plan builders specialize them: one shared instantiation macro, and a
specialized library holds only the dtype its plan launches (Apple compiles one kernel, not three)."""

import pytest

from mps_inductor_ext.config import AttentionPolicy, NormPolicy, QuantizedPolicy, RopePolicy, SoftmaxPolicy
from mps_inductor_ext.ops.attention import MASK_NONE, attention_plan
from mps_inductor_ext.ops.common import METAL_DTYPES
from mps_inductor_ext.ops.norm import norm_plan
from mps_inductor_ext.ops.quantized import quantized_linear_plan
from mps_inductor_ext.ops.rope import rope_plan
from mps_inductor_ext.ops.softmax import softmax_plan
from mps_inductor_ext.shaders import SOURCE_DIR, ShaderLibrary, load_source


def plans(dtype):
    """One plan per op family (split decode: two kernels from one library)."""
    yield norm_plan("rms_norm", dtype, 2, 64, 64, 64, has_weight=True, has_bias=False, eps=1e-6,
                    vector_ok=True, policy=NormPolicy())
    yield softmax_plan(dtype, 2, 64, 1, (64, 1, 1), (64, 1, 1), log=False, vector_ok=True, policy=SoftmaxPolicy())
    yield rope_plan(dtype, (1, 2, 3, 8), 8, (48, 24, 8, 1), (0, 0, 8, 1), (0, 0, 8, 1), interleaved=False,
                    policy=RopePolicy())
    strides = ((2 * 100 * 16, 100 * 16, 16),) * 3
    yield attention_plan(dtype, (1, 2, 2, 1, 100, 16, 16), strides, mask_kind=MASK_NONE, mask_strides=None,
                         scale=0.25, is_causal=False, window=-1,
                         policy=AttentionPolicy(split_kv_above=64, partition_size=32))
    for rows in (1, 64):  # the matvec, then the matmul
        yield quantized_linear_plan(dtype, rows, 64, 64, (64, 1), group_size=32, bits=4, has_bias=False,
                                    policy=QuantizedPolicy())


@pytest.mark.parametrize("dtype", list(METAL_DTYPES), ids=list(METAL_DTYPES.values()))
def test_a_specialized_library_holds_only_its_dtype(dtype):
    name = METAL_DTYPES[dtype]
    for plan in plans(dtype):
        for launch in plan.launches:
            lib = ShaderLibrary(launch.source, "cpu", strict=True)
            assert launch.kernel.endswith("_" + name)
            assert all(k.endswith("_" + name) for k in dir(lib)), dir(lib)
            lib.get_kernel_function(launch.kernel)
            family = launch.kernel.rsplit("_", 1)[0]
            for other in set(METAL_DTYPES.values()) - {name}:
                with pytest.raises(AttributeError, match="has no kernel"):
                    lib.get_kernel_function(f"{family}_{other}")


def test_the_plain_source_instantiates_every_dtype():
    """Without DTYPE (a source used as is) the macro makes all three."""
    lib = ShaderLibrary(load_source("rope"), "cpu")
    assert dir(lib) == ["rope_bfloat", "rope_float", "rope_half", "rope_qk_bfloat", "rope_qk_float", "rope_qk_half"]


def test_every_kernel_file_uses_the_shared_macro():
    for path in SOURCE_DIR.glob("*.metal"):
        text = path.read_text()
        if "kernel void" in text:
            assert "INSTANTIATE_KERNEL(" in text and "host_name(" not in text, path.name
