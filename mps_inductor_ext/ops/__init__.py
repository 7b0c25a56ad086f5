"""The mpsk custom ops (torch.ops.mpsk.*), each backed by a Metal kernel family in shaders/."""

from . import attention, norm, quantized, rope, softmax
from .launch import IntArg, KernelLaunch, LaunchPlan, Scratch, TensorArg, run_plan

__all__ = [
    "IntArg", "KernelLaunch", "LaunchPlan", "Scratch", "TensorArg", "attention", "norm", "quantized", "rope",
    "run_plan", "softmax",
]
