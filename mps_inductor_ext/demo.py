"""The README's first command: a Metal kernel checked against PyTorch, then a small built-in
Llama-style model compiled with backend="mpsk" and checked against eager PyTorch. And its export
command: the same model as an AOTInductor package that keeps the Metal kernels.

On a Mac the model runs on MPS; elsewhere on the CPU with `config.emulate_metal`, so the same
Metal kernels run on the emulator (its times are emulator times, not GPU times).
"""

from __future__ import annotations

import statistics
import time

import torch

from . import aoti, config, counters, reset_counters, shaders
from .models import TinyLlama
from .ops.tolerances import MODEL_TOLERANCE

ROWS, COLS, GROUP = 64, 4096, 256
BATCH, SEQ = 1, 16
REPEATS = 5
MODEL_TOL = MODEL_TOLERANCE  # a dozen float32 ops stacked (ops/tolerances.py)


def _sync(device: str) -> None:
    if device == "mps":
        torch.mps.synchronize()


def _timed(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def kernel_check(backend: str, device: str) -> bool:
    """One reduction kernel on this machine's shader backend: the runtime itself works."""
    lib = shaders.compile_shader(shaders.load_example("row_reduce"), backend=backend)
    torch.manual_seed(0)
    x = torch.randn(ROWS, COLS, device=device)
    out = torch.full((ROWS,), float("nan"), device=device)
    elapsed = _timed(lambda: lib.row_sum_squares_float(out, x, COLS, threads=[ROWS * GROUP], group_size=[GROUP]),
                     device)
    ref = (x.double() ** 2).sum(-1).float()
    err = (out - ref).abs().max().item()
    ok = torch.allclose(out, ref, rtol=1e-5, atol=1e-3)
    print(f"1. kernel: row_sum_squares_float over a {ROWS}x{COLS} float32 tensor, {GROUP} threads per row")
    print(f"   max abs error vs PyTorch: {err:.3g} -> {'OK' if ok else 'MISMATCH'}; time {elapsed * 1e3:.1f} ms")
    return ok


def model_check(device: str) -> bool:
    """The built-in TinyLlama under torch.compile(backend="mpsk") against the same model in eager."""
    torch.manual_seed(0)
    model = TinyLlama().to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), device=device)
    cfg = model.config
    print(f"2. model: TinyLlama ({cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
          f"{cfg.num_kv_heads} KV heads), input {BATCH}x{SEQ} tokens, float32")
    torch._dynamo.reset()
    reset_counters()
    compiled = torch.compile(model, backend="mpsk")
    with torch.no_grad():
        ref = model(ids)
        first = _timed(lambda: compiled(ids), device)
        got = compiled(ids)
        eager_t = statistics.median(_timed(lambda: model(ids), device) for _ in range(REPEATS))
        comp_t = statistics.median(_timed(lambda: compiled(ids), device) for _ in range(REPEATS))
    expected = model.expected_replacements()
    print("   replaced: " + _replacements(expected))
    err = (got - ref).abs().max().item()
    close = torch.allclose(got, ref, rtol=MODEL_TOL, atol=MODEL_TOL)
    print(f"   max abs difference of the logits from eager: {err:.3g} -> {'OK' if close else 'MISMATCH'}")
    print(f"   first compiled call (compiles): {first:.1f} s")
    print(f"   time per forward, median of {REPEATS}: eager {eager_t * 1e3:.2f} ms, "
          f"backend=\"mpsk\" {comp_t * 1e3:.2f} ms")
    return close and dict(counters) == expected


def _replacements(expected: dict[str, int]) -> str:
    replaced = dict(counters)
    kinds = sorted(set(expected) | set(replaced))
    return ", ".join(f"{k} {replaced.get(k, 0)} (of {expected.get(k, 0)})" for k in kinds)


def _device(backend: str) -> str:
    """The device for `backend`, after saying which it is."""
    if backend == "mps":
        print("backend: mps (Apple GPU, torch.mps.compile_shader); device: mps")
        return "mps"
    print("backend: cpu (CPU emulator of Metal compute); device: cpu with mps_inductor_ext.config.emulate_metal")
    return "cpu"


EXPORT_SEQS = (SEQ, 7)  # the example's length, and one the package must handle through its dynamic dim


def export(path: str, backend: str = "auto") -> int:
    """Packages TinyLlama with a dynamic sequence length (torch.export + AOTInductor, kernels kept),
    loads the package back and checks it against eager at two lengths."""
    backend = shaders.resolve_backend(backend)
    device = _device(backend)
    torch.manual_seed(0)
    model = TinyLlama().to(device).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (BATCH, SEQ), device=device)
    reset_counters()
    seq = torch.export.Dim("seq", min=2, max=256)
    with config.patch(emulate_metal=backend == "cpu"):
        start = time.perf_counter()
        path = aoti.aoti_compile_and_package(model, (ids,), path, dynamic_shapes=({1: seq},))
        took = time.perf_counter() - start
    expected = model.expected_replacements()
    print(f"package: {path} ({took:.1f} s to export and compile)")
    print("   replaced: " + _replacements(expected))
    loaded = aoti.aoti_load_package(path)
    ok = dict(counters) == expected
    for length in EXPORT_SEQS:
        x = torch.randint(0, vocab, (BATCH, length), device=device)
        with torch.no_grad():
            err = (loaded(x) - model(x)).abs().max().item()
        close = err <= MODEL_TOL
        ok = ok and close
        print(f"   {BATCH}x{length} tokens: max abs difference of the logits from eager: {err:.3g} -> "
              f"{'OK' if close else 'MISMATCH'}")
    print("result: OK" if ok else "result: FAILED")
    return 0 if ok else 1


def run(backend: str = "auto") -> int:
    backend = shaders.resolve_backend(backend)
    device = _device(backend)
    ok = kernel_check(backend, device)
    with config.patch(emulate_metal=backend == "cpu"):
        ok = model_check(device) and ok
    if backend != "mps":
        print("note: these times are CPU emulator times, not GPU times; the emulator runs each GPU thread "
              "on the CPU, so the compiled model is far slower here than eager PyTorch")
    print("result: OK" if ok else "result: FAILED")
    return 0 if ok else 1
