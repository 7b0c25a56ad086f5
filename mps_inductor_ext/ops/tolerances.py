"""How far an mpsk kernel's output may be from its reference: the one table the doctor's self-check
and the tests both compare with, so a kernel that passes the tests passes `doctor` and the reverse.

Values are rtol = atol, per output dtype, with the output compared in float32. The float32 value
is what a kernel accumulating in float32 reaches against a float64 reference; float16 and bfloat16
allow about one rounding of the output (2^-9 and 2^-6 relative). An op whose float32 result
legitimately moves further (attention sums softmax-weighted products over every key) overrides
only the dtypes it needs:

    >>> tolerance(torch.float32), tolerance(torch.float32, "attention"), tolerance(torch.float16, "attention")
    (1e-05, 0.0001, 0.002)
"""

from __future__ import annotations

import torch

# Per output dtype, for every op without an override.
TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# Per op, only the dtypes that differ from TOLERANCES. attention: two chained reductions over the
# keys (scores, then the weighted sum of values) with the running max rescaled as it goes.
OP_OVERRIDES: dict[str, dict[torch.dtype, float]] = {
    "attention": {torch.float32: 1e-4},
}

# A whole model's float32 output (the demo's TinyLlama, AOTI packages of it): it stacks a dozen
# ops, each within TOLERANCES[torch.float32] of PyTorch.
MODEL_TOLERANCE = 1e-4


def tolerance(dtype: torch.dtype, op: str | None = None) -> float:
    """rtol = atol for `op`'s outputs of `dtype` (KeyError for a dtype no kernel outputs)."""
    return OP_OVERRIDES.get(op or "", {}).get(dtype, TOLERANCES[dtype])


def op_tolerances(op: str) -> dict[torch.dtype, float]:
    """`op`'s whole table, per dtype (the defaults with its overrides applied)."""
    return {dtype: tolerance(dtype, op) for dtype in TOLERANCES}
