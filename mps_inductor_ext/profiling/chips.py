"""Named Apple GPUs for the MODELED roofline: memory bandwidth and peak fp16/fp32 rates, each row
with where its numbers come from.

Bandwidths are Apple's published figures (newsroom press releases). Apple publishes no FLOP rates
for most chips, so those are third-party figures or derived as GPU cores x 256 FLOP per core-cycle
(128 FMA lanes; fp16 and fp32 FMAs run at the same rate on Apple7 and later, per
philipturner/metal-benchmarks) x clock, with the clock's source named. A roofline from these is a
model, not a measurement: every figure printed from it says MODELED.
"""

from __future__ import annotations

import dataclasses

METAL_BENCHMARKS = "https://github.com/philipturner/metal-benchmarks (README, 'Overview' table: GOPS32/GOPS16)"
FLOP_PER_CORE_CYCLE = 256  # 128 ALUs x 2 (FMA), fp16 and fp32 alike (metal-benchmarks, 'Operations per Second')

_NEWS = "https://www.apple.com/newsroom/"
M1_PRO_MAX = _NEWS + "2021/10/introducing-m1-pro-and-m1-max-the-most-powerful-chips-apple-has-ever-built/"
M1_ULTRA = _NEWS + "2022/03/apple-unveils-m1-ultra-the-worlds-most-powerful-chip-for-a-personal-computer/"
M2 = _NEWS + "2022/06/apple-unveils-m2-with-breakthrough-performance-and-capabilities/"
M2_PRO_MAX = _NEWS + "2023/01/apple-unveils-m2-pro-and-m2-max-next-generation-chips-for-next-level-workflows/"
M2_ULTRA = _NEWS + "2023/06/apple-introduces-m2-ultra/"
M3 = _NEWS + "2023/10/apple-unveils-m3-m3-pro-and-m3-max-the-most-advanced-chips-for-a-personal-computer/"
M4 = _NEWS + "2024/05/apple-introduces-m4-chip/"
M4_PRO_MAX = _NEWS + "2024/10/apple-introduces-m4-pro-and-m4-max/"
HMC_M3_MAX = "https://hmc-tech.com/gpu/apple-32-core-m4-max-vs-apple-40-core-m3-max (clocks 1398 / 1678 MHz)"
HMC_M3_PRO = "https://hmc-tech.com/gpu/apple-32-core-m4-max-vs-apple-18-core-m3-pro (M3 Pro 18-core, 1398 MHz)"


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    gpu_cores: int
    bandwidth_gbs: float  # unified memory bandwidth, GB/s (10^9 bytes)
    fp32_tflops: float  # peak FMA rate, 10^12 FLOP/s
    fp16_tflops: float
    bandwidth_source: str
    compute_source: str

    def tflops(self, dtype_bits: int) -> float:
        """Peak rate for a kernel computing in this width (bf16 and fp16 read as 16 bits; the kernels
        accumulate in fp32 either way, so fp32 is the rate that bounds them)."""
        return self.fp16_tflops if dtype_bits == 16 else self.fp32_tflops


def _derived(cores: int, ghz: float) -> float:
    return round(cores * FLOP_PER_CORE_CYCLE * ghz / 1000, 2)


def _chip(name, cores, gbs, tflops, bw_src, flop_src) -> Chip:
    return Chip(name, cores, gbs, tflops, tflops, bw_src, flop_src)


_M4_CLOCK = (f"derived: cores x {FLOP_PER_CORE_CYCLE} FLOP/cycle x 1.678 GHz, the M4 Max clock of {HMC_M3_MAX}, "
             "assumed for the whole M4 family")

CHIPS: tuple[Chip, ...] = (
    _chip("M1", 8, 68.25, 2.62, "LPDDR4X-4266 on a 128-bit bus; Apple: M2's 100 GB/s is 50% more than M1 (" + M2 + ")",
          METAL_BENCHMARKS),
    _chip("M1 Pro", 16, 200, 5.31, M1_PRO_MAX, METAL_BENCHMARKS),
    _chip("M1 Max", 32, 400, 10.62, M1_PRO_MAX, METAL_BENCHMARKS),
    _chip("M1 Ultra", 64, 800, 21.23, M1_ULTRA, METAL_BENCHMARKS),
    _chip("M2", 10, 100, 3.58, M2, METAL_BENCHMARKS),
    _chip("M2 Pro", 19, 200, 6.80, M2_PRO_MAX, METAL_BENCHMARKS),
    _chip("M2 Max", 38, 400, 13.60, M2_PRO_MAX, METAL_BENCHMARKS),
    _chip("M2 Ultra", 76, 800, _derived(76, 1.398), M2_ULTRA,
          f"derived: cores x {FLOP_PER_CORE_CYCLE} FLOP/cycle x 1.398 GHz (M2 family clock, {METAL_BENCHMARKS})"),
    _chip("M3", 10, 100, _derived(10, 1.398), M3,
          f"derived: cores x {FLOP_PER_CORE_CYCLE} FLOP/cycle x 1.398 GHz ({HMC_M3_MAX})"),
    _chip("M3 Pro", 18, 150, 6.44, M3, HMC_M3_PRO),
    _chip("M3 Max", 40, 400, 14.32, M3, HMC_M3_MAX),
    _chip("M4", 10, 120, _derived(10, 1.678), M4, _M4_CLOCK),
    _chip("M4 Pro", 20, 273, _derived(20, 1.678), M4_PRO_MAX, _M4_CLOCK),
    _chip("M4 Max", 40, 546, _derived(40, 1.678), M4_PRO_MAX, _M4_CLOCK),
)

NAMES: tuple[str, ...] = tuple(c.name for c in CHIPS)


def get(name: str) -> Chip:
    """The chip called `name` (case and spaces ignored: "m2max" finds "M2 Max")."""
    if not isinstance(name, str):
        raise TypeError(f"chip name must be a str, got {type(name).__name__}")
    want = name.replace(" ", "").lower()
    for chip in CHIPS:
        if chip.name.replace(" ", "").lower() == want:
            return chip
    raise KeyError(f"no chip {name!r}; chips: {list(NAMES)}")
