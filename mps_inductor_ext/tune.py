"""`python -m mps_inductor_ext tune`: each op's Metal kernel against the native op, per dtype and
shape bucket, on this machine's device; the winner goes into the tuning cache, and from then on the
eager op and compiled programs take the native op where it was faster (tuning.prefers_native).

The native op is the family's ATen reference (families.py), the same code the op runs where no
kernel can. Timing is `timing.device_timer` (medians after warm-up, synchronized on MPS), shared
with benchmarks/ops_vs_native.py. Off a Mac the same code times the CPU emulator against ATen on
the CPU, which says nothing about a GPU: such runs are printed but recorded only with --save, and
tests inject their own timer.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import torch

from . import config, families, tuning
from .profiling.cases import PRESETS, ProfileCase, cases
from .timing import Timer, device_timer


@dataclasses.dataclass(frozen=True)
class TuneResult:
    op: str
    label: str
    dtype: torch.dtype
    key: str  # the tuning-cache key the choice is recorded under
    mpsk_seconds: float
    native_seconds: float

    @property
    def choice(self) -> str:
        """"native" where the native op measured strictly faster, else "mpsk"."""
        return "native" if self.native_seconds < self.mpsk_seconds else "mpsk"


def _on(device: str, value: object) -> object:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def measure(case: ProfileCase, dtype: torch.dtype, device: str, timer: Timer) -> TuneResult:
    """Times one case's kernel (recorded choices ignored) and its native op with `timer`."""
    family = families.get(case.family)
    args, kwargs = case.build(dtype, "cpu")
    args = tuple(_on(device, a) for a in args)
    kwargs = {k: _on(device, v) for k, v in kwargs.items()}
    reference = family.resolve("reference")
    with torch.no_grad():
        with tuning.kernels_only():
            mpsk = timer(lambda: family.custom_op(*args, **kwargs))
        native = timer(lambda: reference(*args, **kwargs))
    for name, value in (("mpsk", mpsk), ("native", native)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"the timer must return non-negative seconds, got {value!r} for {name}")
    full = tuning.schema_args(family.custom_op, args, kwargs)
    key = tuning.choice_key(case.family, full)
    if key is None:
        raise ValueError(f"{case.family} {case.label}: no tuning key for these arguments")
    tensor = next(a for a in full if isinstance(a, torch.Tensor))
    return TuneResult(case.family, case.label, tensor.dtype, key, float(mpsk), float(native))


def tune(tune_cases: Sequence[ProfileCase], dtypes: Sequence[torch.dtype], *, device: str, timer: Timer,
         record: bool = True) -> list[TuneResult]:
    """Measures every case in every dtype on `device` and, with `record`, stores each winner.

    Off MPS the kernels run on the emulator (config.emulate_metal) so that the same code paths run
    everywhere. Two cases in one bucket: the later measurement's winner stands."""
    if device not in ("mps", "cpu"):
        raise ValueError(f"device must be 'mps' or 'cpu', got {device!r}")
    if not callable(timer):
        raise TypeError(f"timer must be callable (fn -> seconds), got {type(timer).__name__}")
    results = []
    with config.patch(emulate_metal=device == "cpu"):
        for dtype in dtypes:
            for case in tune_cases:
                r = measure(case, dtype, device, timer)
                if record:
                    args, kwargs = case.build(dtype, "meta")
                    tuning.record_choice(r.op, tuning.schema_args(families.get(r.op).custom_op, args, kwargs),
                                         r.choice)
                results.append(r)
    return results


def format_results(results: Sequence[TuneResult], emulated: bool) -> str:
    lines = []
    if emulated:
        lines.append("Emulator times against ATen on the CPU: not GPU times; they only show the code runs.")
    lines.append(f"{'op':<17} {'dtype':<9} {'shape':<46} {'mpsk ms':>9} {'native ms':>10}  choice")
    for r in results:
        lines.append(f"{r.op:<17} {str(r.dtype).removeprefix('torch.'):<9} {r.label:<46} "
                     f"{r.mpsk_seconds * 1e3:>9.3f} {r.native_seconds * 1e3:>10.3f}  {r.choice}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="the shapes (default: llama3-8b on a Mac, tiny elsewhere)")
    parser.add_argument("--op", action="append", dest="ops", metavar="OP", choices=families.NAMES,
                        help="tune only this op family (repeatable; default: every family)")
    parser.add_argument("--dtype", action="append", dest="dtypes", choices=["float16", "bfloat16", "float32"],
                        help="repeatable; default: all three on a Mac, float16 elsewhere")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--save", action="store_true", help="record the winners even off a Mac (emulator times)")


def run(args: argparse.Namespace) -> int:
    on_mps = torch.backends.mps.is_available()
    repeats = args.repeats if args.repeats is not None else (50 if on_mps else 3)
    if repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be positive and --warmup non-negative")
    device = "mps" if on_mps else "cpu"
    preset = args.preset or ("llama3-8b" if on_mps else "tiny")
    names = args.dtypes or (["float16", "bfloat16", "float32"] if on_mps else ["float16"])
    dtypes = [getattr(torch, n) for n in names]
    record = on_mps or args.save
    results = []
    for dtype in dtypes:
        results += tune(cases(preset, dtype, args.ops), [dtype], device=device,
                        timer=device_timer(device, repeats, args.warmup), record=record)
    print(format_results(results, emulated=not on_mps), end="")
    print(f"recorded in {tuning.path()}" if record else "not recorded (off a Mac; --save records emulator results)")
    return 0
