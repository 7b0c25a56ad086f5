"""Each mpsk op against the native PyTorch op, with a group-size sweep for the row kernels.

quantized_linear (4-bit weights, groups of 64) is timed against the fp16 (or --dtype) matmul of
the same weight, and on a Mac also against PyTorch's own MPS int4 kernel (`_weight_int4pack_mm`)
where the installed torch has it; the bytes each call moves (weights, scales and biases,
activations in and out) are printed beside the times, since decoding is bound by them.

On a Mac (MPS) this times the Metal kernels the way the field does: warm-up runs
excluded, torch.mps.synchronize() around the timed window, the median of many
runs. The sweep's fastest threads-per-row is recorded in the tuning cache,
which the ops then use. Elsewhere it runs the kernels on the CPU emulator with
small shapes: those are emulator times, not GPU times, and are never recorded
as tuning unless --save-tuning says so.

    python benchmarks/ops_vs_native.py [--repeats 20] [--csv out.csv] [--save-tuning]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

import mps_inductor_ext  # noqa: E402
from mps_inductor_ext import config, tuning  # noqa: E402
from mps_inductor_ext.timing import device_timer  # noqa: E402

SWEEP = (32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass
class Case:
    op: str
    shape: str
    inputs: Callable[[], tuple]
    mpsk: Callable[..., torch.Tensor]
    native: Callable[..., torch.Tensor]
    policy: str | None = None  # config field whose threads_per_row the sweep sets
    kernel: str | None = None  # tuning key
    cols: int = 0
    mpsk_bytes: int = 0  # memory a call reads and writes, where the case says (quantized_linear)
    native_bytes: int = 0


def rope_native(x, cos, sin):
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


def cases(device: str, dtype: torch.dtype, big: bool) -> list[Case]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    rows, cols = (4096, 4096) if big else (8, 1024)
    b, h, hkv, s, d = (1, 32, 8, 1024, 128) if big else (1, 4, 2, 64, 64)
    out = [
        Case("rms_norm", f"{rows}x{cols}", lambda: (rand(rows, cols), rand(cols)),
             lambda x, w: torch.ops.mpsk.rms_norm(x, w, 1e-6), lambda x, w: F.rms_norm(x, (cols,), w, 1e-6),
             "norm", "rms_norm", cols),
        Case("layer_norm", f"{rows}x{cols}", lambda: (rand(rows, cols), rand(cols), rand(cols)),
             lambda x, w, bias: torch.ops.mpsk.layer_norm(x, w, bias, 1e-5),
             lambda x, w, bias: F.layer_norm(x, (cols,), w, bias, 1e-5), "norm", "layer_norm", cols),
        Case("softmax", f"{rows}x{cols}", lambda: (rand(rows, cols),),
             lambda x: torch.ops.mpsk.softmax(x, -1, False), lambda x: torch.softmax(x, -1),
             "softmax", "softmax", cols),
        Case("rope", f"{b}x{h}x{s}x{d}", lambda: (rand(b, h, s, d), rand(s, d), rand(s, d)),
             lambda x, c, sn: torch.ops.mpsk.rope(x, c, sn, False), rope_native),
        Case("attention prefill", f"q {b}x{h}x{s}x{d}, kv heads {hkv}",
             lambda: (rand(b, h, s, d), rand(b, hkv, s, d), rand(b, hkv, s, d)),
             lambda q, k, v: torch.ops.mpsk.attention(q, k, v, None, None, True, -1),
             lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)),
        Case("attention decode", f"q {b}x{h}x1x{d}, kv {s}",
             lambda: (rand(b, h, 1, d), rand(b, hkv, s, d), rand(b, hkv, s, d)),
             lambda q, k, v: torch.ops.mpsk.attention(q, k, v, None, None, False, -1),
             lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)),
    ]
    return out + quantized_cases(device, dtype, big, rand)


def quantized_cases(device: str, dtype: torch.dtype, big: bool, rand: Callable[..., torch.Tensor]) -> list[Case]:
    """Decode (one row) and prefill (many) through a 4-bit layer, against the dense matmul of its
    dequantized weight, and on MPS against torch's int4 kernel."""
    from mps_inductor_ext.quantization import dequantize, quantize_weight

    group, size = 64, torch.finfo(dtype).bits // 8
    (k, n), prefill = ((4096, 11008), 512) if big else ((1024, 1024), 64)
    packed, scales, biases = (t.to(device) for t in quantize_weight(rand(n, k).cpu(), group, 4))
    dense = dequantize(packed, scales, biases, group, 4)
    weight_bytes = packed.numel() * 4 + 2 * scales.numel() * size
    out = []
    for label, rows in (("decode", 1), ("prefill", prefill)):
        act_bytes = rows * (k + n) * size
        out.append(Case(f"quantized_linear {label}", f"{rows}x{k} @ {n}x{k} 4-bit g{group}",
                        lambda rows=rows: (rand(rows, k),),
                        lambda x: torch.ops.mpsk.quantized_linear(x, packed, scales, biases, group, 4),
                        lambda x: F.linear(x, dense), mpsk_bytes=weight_bytes + act_bytes,
                        native_bytes=dense.numel() * size + act_bytes))
    int4 = torch_int4_mm(device, n, k, group, dtype)
    if int4 is not None:
        fn, int4_bytes = int4
        out.append(Case("quantized_linear decode vs torch int4", f"1x{k} @ {n}x{k} 4-bit g{group}",
                        lambda: (rand(1, k),),
                        lambda x: torch.ops.mpsk.quantized_linear(x, packed, scales, biases, group, 4), fn,
                        mpsk_bytes=weight_bytes + (k + n) * size, native_bytes=int4_bytes + (k + n) * size))
    return out


def torch_int4_mm(device: str, n: int, k: int, group: int, dtype: torch.dtype):
    """(x -> torch's MPS int4 matmul, its weight bytes) on random weights (timing only), or None
    where the installed torch has no such kernel or this is not a Mac."""
    if device != "mps" or not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return None
    try:
        raw = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=device)
        packed = torch.ops.aten._convert_weight_to_int4pack(raw, 2)
        scales_zeros = torch.rand(k // group, n, 2, dtype=dtype, device=device)
        torch.ops.aten._weight_int4pack_mm(torch.zeros(1, k, dtype=dtype, device=device), packed, group,
                                           scales_zeros)
    except (RuntimeError, TypeError) as e:
        print(f"torch int4 matmul not usable here ({type(e).__name__}: {str(e).splitlines()[0]}), skipped")
        return None
    size = torch.finfo(dtype).bits // 8
    return (lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, group, scales_zeros),
            packed.numel() * 4 + scales_zeros.numel() * size)


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}" if n else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--csv", type=Path, default=None, help="where to write the table as CSV")
    parser.add_argument("--save-tuning", action="store_true", help="record the sweep's best sizes even off MPS")
    args = parser.parse_args(argv)
    on_mps = torch.backends.mps.is_available()
    repeats = args.repeats if args.repeats is not None else (50 if on_mps else 3)
    if repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be positive and --warmup non-negative")
    device = "mps" if on_mps else "cpu"
    backend = "mps" if on_mps else "cpu (emulated Metal)"
    csv_path = args.csv or Path(__file__).parent / "results" / f"ops_{'mps' if on_mps else 'emulator'}.csv"
    dtype = getattr(torch, args.dtype)
    measure = device_timer(device, repeats, args.warmup)
    save = on_mps or args.save_tuning

    print(f"mps_inductor_ext {mps_inductor_ext.__version__}: mpsk ops vs native PyTorch on {backend}, {args.dtype}")
    if not on_mps:
        print("Emulator times, not GPU times: they only say the kernels run; ratios mean nothing for a Mac.")
    rows = []
    with config.patch(emulate_metal=not on_mps):
        for case in cases(device, dtype, big=on_mps):
            if not hasattr(torch.ops.mpsk, case.op.split()[0]):
                print(f"{case.op}: op not available, skipped")
                continue
            inputs = case.inputs()
            native = measure(lambda case=case, inputs=inputs: case.native(*inputs))
            best_threads, best = None, None
            if case.policy:
                base = getattr(config, case.policy)
                for t in SWEEP:
                    with config.patch(**{case.policy: dataclasses.replace(base, threads_per_row=t)}):
                        sec = measure(lambda case=case, inputs=inputs: case.mpsk(*inputs))
                    if best is None or sec < best:
                        best_threads, best = t, sec
                if save:
                    tuning.record(case.kernel, dtype, case.cols, best_threads)
            mpsk = measure(lambda case=case, inputs=inputs: case.mpsk(*inputs))
            rows.append({
                "op": case.op, "shape": case.shape, "dtype": args.dtype, "backend": backend,
                "native_ms": native * 1e3, "mpsk_ms": mpsk * 1e3, "speedup": native / mpsk,
                "best_threads_per_row": best_threads or "",
                "native_mb": _mb(case.native_bytes), "mpsk_mb": _mb(case.mpsk_bytes),
            })
    print(f"{'op':<38}{'shape':<34}{'native ms':>11}{'mpsk ms':>11}{'speedup':>9}{'best tpr':>10}"
          f"{'native MB':>11}{'mpsk MB':>9}")
    for r in rows:
        print(f"{r['op']:<38}{r['shape']:<34}{r['native_ms']:>11.3f}{r['mpsk_ms']:>11.3f}"
              f"{r['speedup']:>8.2f}x{r['best_threads_per_row']!s:>10}{r['native_mb']!s:>11}{r['mpsk_mb']!s:>9}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["op"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}" + (f"; tuning recorded in {tuning.path()}" if save else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
