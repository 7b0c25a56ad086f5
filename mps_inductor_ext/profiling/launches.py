"""Kernel launches per forward of a compiled model, counted on the emulated mps device.

On a Mac the CPU cost of encoding each launch often sets small-batch decode speed, so the profile
reports launches per forward beside the bytes. These are counts of the program a Mac would run
(Inductor's Metal kernels, the mpsk kernels, extern ATen calls), not timings.
"""

from __future__ import annotations

import torch

from ..emulated_mps import LaunchCounts, count_launches

MAX_LEN = 64


class TinyLlamaRunner:
    """The built-in TinyLlama with its static KVCache, on the mps device."""

    def __init__(self):
        from ..models import KVCache, TinyLlama

        torch.manual_seed(0)
        self.model = TinyLlama().eval().to("mps")
        self.vocab = self.model.config.vocab_size
        self._cache = lambda: KVCache(self.model.config, 1, MAX_LEN, device="mps")

    def fresh(self) -> None:
        self.cache = self._cache()

    def __call__(self, fn, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return fn(ids, self.cache, positions)


def count(runner, backend: str, prefill: int) -> dict[str, LaunchCounts]:
    """Launches of one prefill of `prefill` tokens and one decode step, each counted on a warm second
    run (compiled code is in place, and the cache holds the same tokens as on the first run)."""
    if backend not in ("eager", "inductor", "mpsk"):
        raise ValueError(f"backend must be eager, inductor or mpsk, got {backend!r}")
    if isinstance(prefill, bool) or not isinstance(prefill, int) or not 1 <= prefill < MAX_LEN:
        raise ValueError(f"prefill must be an int between 1 and {MAX_LEN - 1}, got {prefill!r}")
    torch._dynamo.reset()
    fn = runner.model if backend == "eager" else torch.compile(runner.model, backend=backend)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, runner.vocab, (1, prefill + 1), generator=g).to("mps")
    phases = {
        "prefill": (ids[:, :prefill], torch.arange(prefill, device="mps")),
        "decode": (ids[:, prefill:], torch.tensor([prefill], device="mps")),
    }
    out = {}
    with torch.no_grad():
        for _ in range(2):  # the first pass compiles; the second is counted
            runner.fresh()
            for phase, (x, pos) in phases.items():
                with count_launches() as n:
                    runner(fn, x, pos)
                out[phase] = n
    return out


def tiny_llama_launches(prefill: int = 16, backends: tuple[str, ...] = ("inductor", "mpsk")) -> str:
    """The table of launches per forward of the built-in TinyLlama, per backend and phase (installs
    the emulated mps device; counts, not timings)."""
    from ..emulated_mps import emulate_mps_device

    emulate_mps_device()
    runner = TinyLlamaRunner()
    lines = ["Launches per forward, built-in TinyLlama on the emulated mps device (counts, not timings):",
             f"{'phase':<8} {'backend':<9} {'launches':>8} {'inductor':>8} {'mpsk':>5} {'aten':>5}"]
    for backend in backends:
        for phase, n in count(runner, backend, prefill).items():
            lines.append(f"{phase:<8} {backend:<9} {n.total:>8} {n.inductor_kernels:>8} {n.mpsk_kernels:>5} "
                         f"{n.aten_calls:>5}")
    return "\n".join(lines) + "\n"
