"""`python -m mps_inductor_ext profile`: the cost model for a preset of shapes, printed."""

from __future__ import annotations

import argparse
import json

import torch

from .. import families
from . import chips as chip_table
from .cases import PRESETS, cases
from .kernels import OpProfile
from .report import format_chips, format_profiles
from .run import run_case

DEFAULT_CHIPS = ("M1", "M2 Max", "M3 Max", "M4 Max")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="the shapes (default tiny; llama3-8b is Llama-3-8B's, slow on the emulator)")
    parser.add_argument("--op", action="append", dest="ops", metavar="OP", choices=families.NAMES,
                        help="profile only this op family (repeatable; default: every family)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--chips", default=",".join(DEFAULT_CHIPS),
                        help=f"comma-separated chips for the MODELED times, or 'all' (from {list(chip_table.NAMES)})")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="emulator seconds a case may take before it is counted on its scaled shape "
                             "(only cases whose traffic is provably linear in the scaled dimension have one)")
    parser.add_argument("--json", help="also write the profiles to this file")
    parser.add_argument("--chips-table", action="store_true", help="print the chip table with its sources and exit")
    parser.add_argument("--launches", action="store_true",
                        help="also count launches per forward of the built-in TinyLlama compiled with mpsk and "
                             "inductor (builds the emulated mps device on first use: minutes)")


def _chips(spec: str) -> list[chip_table.Chip]:
    if spec == "all":
        return list(chip_table.CHIPS)
    return [chip_table.get(name) for name in spec.split(",") if name.strip()]


def to_json(p: OpProfile, chips: list[chip_table.Chip]) -> dict:
    c = p.counts
    return {
        "op": p.op, "shape": p.label, "dtype": str(p.dtype).removeprefix("torch."),
        "ideal_bytes_read": p.ideal.bytes_read, "ideal_bytes_written": p.ideal.bytes_written,
        "ideal_flops": p.ideal.flops,
        "device_bytes": None if c is None else c.device_bytes, "counts": None if c is None else vars(c),
        "traffic_ratio": p.traffic_ratio, "extrapolated_from": p.extrapolated_from or None, "note": p.note or None,
        "launches": [{"kernel": launch.kernel, "threads": launch.threads, "group_size": launch.group_size,
                      "threads_per_group": launch.threads_per_group, "groups": launch.groups,
                      "static_threadgroup_bytes": launch.static_threadgroup_bytes,
                      "counts": None if launch.counts is None else vars(launch.counts)} for launch in p.launches],
        "modeled_us": {chip.name: (p.modeled(chip) or p.modeled(chip, counted=False)).seconds * 1e6
                       for chip in chips},
        "modeled_us_basis": "counted bytes" if c is not None else "ideal bytes",
    }


def run(args: argparse.Namespace) -> int:
    if args.chips_table:
        print(format_chips(), end="")
        return 0
    try:
        chips = _chips(args.chips)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None
    if not chips:
        raise ValueError("--chips names no chip")
    dtype = getattr(torch, args.dtype)
    profiles = [run_case(case, dtype, args.max_seconds) for case in cases(args.preset, dtype, args.ops)]
    print(format_profiles(profiles, chips), end="")
    if args.launches:
        from .launches import tiny_llama_launches

        print()
        print(tiny_llama_launches(), end="")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"preset": args.preset, "modeled": "MODELED roofline times, not measurements",
                       "rows": [to_json(p, chips) for p in profiles]}, f, indent=1)
        print(f"JSON: {args.json}")
    return 0
