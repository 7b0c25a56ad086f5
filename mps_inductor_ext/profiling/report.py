"""The profile as text: counted bytes against the ideal, launch shapes, and MODELED roofline times."""

from __future__ import annotations

from collections.abc import Sequence

from .chips import CHIPS, Chip
from .kernels import OpProfile

HEADER = ("MODELED: the times below are a roofline model (bytes / memory bandwidth, FLOPs / peak rate, "
          "from the chip table with its sources: `python -m mps_inductor_ext profile --chips-table`), "
          "not measurements. Byte counts are from the instrumented CPU emulator; emulator wall times "
          "are not GPU times and are not shown as such.")


def _mb(n: int | None) -> str:
    return "not counted" if n is None else f"{n / 1e6:.3f}"


def _us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.0f}" if us >= 100 else f"{us:.1f}" if us >= 1 else f"{us:.3f}"


def format_profiles(profiles: Sequence[OpProfile], chips: Sequence[Chip]) -> str:
    lines = [HEADER, ""]
    head = f"{'op':<17} {'shape':<52} {'launch':<22} {'thr/grp':>7} {'groups':>8} {'tg B':>6} " \
           f"{'tg MB':>8} {'const MB':>8} {'dev MB':>11}"
    lines.append(head)
    for p in profiles:
        shown = p.extrapolated_from or p.label  # the launches of the shape counted
        for i, launch in enumerate(p.launches):
            c = launch.counts
            lines.append(f"{p.op if i == 0 else '':<17} {shown if i == 0 else '':<52} {launch.kernel:<22} "
                         f"{launch.threads_per_group:>7} {launch.groups:>8} {launch.static_threadgroup_bytes:>6} "
                         f"{'-' if c is None else f'{c.threadgroup_bytes / 1e6:.3f}':>8} "
                         f"{'-' if c is None else f'{c.constant_loaded / 1e6:.3f}':>8} "
                         f"{_mb(None if c is None else c.device_bytes):>11}")
    lines += ["", "Device bytes against the ideal (every input and output touched once) and MODELED times, "
                  "in microseconds, of the counted bytes (the ideal's where not counted, marked *):"]
    names = "".join(f"{c.name:>11}" for c in chips)
    lines.append(f"{'op':<17} {'shape':<52} {'ideal MB':>9} {'dev MB':>11} {'x ideal':>8} {'GFLOP':>7} {names}")
    for p in profiles:
        c = p.counts
        ratio = p.traffic_ratio
        times = ""
        for chip in chips:
            m = p.modeled(chip) or p.modeled(chip, counted=False)
            mark = "" if c is not None else "*"
            times += f"{_us(m.seconds) + ('c' if m.bound == 'compute' else '') + mark:>11}"
        flops = "-" if p.ideal.flops is None else f"{p.ideal.flops / 1e9:.2f}"
        lines.append(f"{p.op:<17} {p.label:<52} {p.ideal.bytes / 1e6:>9.3f} "
                     f"{_mb(None if c is None else c.device_bytes):>11} "
                     f"{'-' if ratio is None else f'{ratio:.2f}':>8} {flops:>7} {times}")
    lines.append("(c: compute bound in the model; *: ideal bytes, the build in use does not count)")
    notes = [f"{p.op} {p.label}: {p.note}" for p in profiles if p.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def format_chips(chips: Sequence[Chip] = CHIPS) -> str:
    lines = ["MODELED roofline inputs: one row per chip, with sources (bandwidth: Apple; FLOP rates: see source).",
             f"{'chip':<10} {'GPU cores':>9} {'GB/s':>8} {'fp32 TFLOPS':>12} {'fp16 TFLOPS':>12}  sources"]
    for c in chips:
        lines.append(f"{c.name:<10} {c.gpu_cores:>9} {c.bandwidth_gbs:>8g} {c.fp32_tflops:>12.2f} "
                     f"{c.fp16_tflops:>12.2f}  bandwidth: {c.bandwidth_source}; compute: {c.compute_source}")
    return "\n".join(lines) + "\n"
