"""The cost model's table for Llama-3-8B-like shapes: bytes each mpsk kernel moves (counted on the
instrumented emulator) against the ideal, and MODELED roofline times on named Apple chips.

Shapes (fp16 by default): RMSNorm / LayerNorm rows of 4096 (decode: 1 row; prefill: 2048 rows);
softmax rows of 4096 and 32000; RoPE on (1, 32, S, 128) for S = 1 and 2048; decode attention,
32 query heads over 8 KV heads of 128, for L = 512, 4096 and 32768 keys; causal prefill S = L = 2048.
A family with no Llama shape here is profiled on its doctor case, so new families appear.

Counting is slow on the emulator. Each case is counted at full size unless it has a scaled form and
its measured emulator time at the scaled shape, times the factor, exceeds --max-seconds: then it is
counted exactly on one KV group and multiplied by the 8 groups, which is exact because each group's
threadgroups read only that group's rows (the output says EXTRAPOLATED and why). Nothing else is
extrapolated. The times printed are MODELED, from the chip table and its sources; emulator times
are not GPU times and are not printed as such.

    python benchmarks/profile_llama3.py [--dtype float16] [--max-seconds 300] [--out results/profile_llama3_8b]
    python benchmarks/profile_llama3.py --preset tiny     # the smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mps_inductor_ext import families
from mps_inductor_ext.profiling import CHIPS, PRESETS, cases, run_case
from mps_inductor_ext.profiling.cli import to_json
from mps_inductor_ext.profiling.report import format_chips, format_profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    parser.add_argument("--op", action="append", dest="ops", choices=families.NAMES, metavar="OP",
                        help="only this family (repeatable)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="emulator seconds a case may take before it is counted on one KV group")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_llama3_8b",
                        help="writes OUT.txt (the table) and OUT.json")
    args = parser.parse_args(argv)
    if args.max_seconds <= 0:
        parser.error("--max-seconds must be positive")
    dtype = getattr(torch, args.dtype)
    profiles = []
    for case in cases(args.preset, dtype, args.ops):
        start = time.perf_counter()
        p = run_case(case, dtype, args.max_seconds)
        ratio = "not counted" if p.traffic_ratio is None else f"{p.traffic_ratio:.2f}x the ideal device bytes"
        print(f"counted {p.op} {p.label}: {ratio} ({time.perf_counter() - start:.0f} s of emulator work"
              f"{', extrapolated' if p.extrapolated_from else ''})", flush=True)
        profiles.append(p)
    text = format_profiles(profiles, CHIPS) + "\n" + format_chips()
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"preset": args.preset, "dtype": args.dtype, "modeled": "MODELED roofline times, not measurements",
         "rows": [to_json(p, list(CHIPS)) for p in profiles]}, indent=1))
    print(f"wrote {args.out.with_suffix('.txt')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
