"""The README's first command: run a real Metal kernel on this machine's backend and check it."""

from __future__ import annotations

import time

import torch

from . import shaders

ROWS, COLS, GROUP = 64, 4096, 256


def run(backend: str = "auto") -> int:
    backend = shaders.resolve_backend(backend)
    device = "mps" if backend == "mps" else "cpu"
    lib = shaders.compile_shader(shaders.load_source("row_reduce"), backend=backend)
    torch.manual_seed(0)
    x = torch.randn(ROWS, COLS, device=device)
    out = torch.full((ROWS,), float("nan"), device=device)
    start = time.perf_counter()
    lib.row_sum_squares_float(out, x, COLS, threads=[ROWS * GROUP], group_size=[GROUP])
    if device == "mps":
        torch.mps.synchronize()
    elapsed = time.perf_counter() - start
    ref = (x.double() ** 2).sum(-1).float()
    err = (out - ref).abs().max().item()
    ok = torch.allclose(out, ref, rtol=1e-5, atol=1e-3)
    where = "Apple GPU (torch.mps.compile_shader)" if backend == "mps" else "CPU emulator of Metal compute"
    print(f"backend: {backend} ({where})")
    print(f"kernel: row_sum_squares_float over a {ROWS}x{COLS} float32 tensor, {GROUP} threads per row")
    print(f"max abs error vs PyTorch: {err:.3g} -> {'OK' if ok else 'MISMATCH'}")
    note = "" if backend == "mps" else " (emulator time, not GPU time)"
    print(f"time: {elapsed * 1e3:.1f} ms{note}")
    return 0 if ok else 1
