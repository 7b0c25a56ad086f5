"""A cost model you can run without a Mac: each mpsk kernel run on the emulator with counters
(device, constant and threadgroup bytes, threads per group) against the ideal of touching every
input and output once, and MODELED roofline times on named Apple chips.

    p = mps_inductor_ext.profile("rms_norm", x, w, 1e-6)
    p.counts, p.ideal, p.traffic_ratio, p.modeled(chips.get("M2 Max"))

`python -m mps_inductor_ext profile` prints it for a preset of shapes (cli.py).
"""

from . import chips
from .cases import PRESETS, ProfileCase, cases
from .chips import CHIPS, Chip
from .counters import MemoryCounts
from .ideal import Ideal, ideal
from .kernels import LaunchProfile, OpProfile, profile
from .roofline import Modeled, roofline
from .run import run_case

__all__ = ["CHIPS", "PRESETS", "Chip", "Ideal", "LaunchProfile", "MemoryCounts", "Modeled", "OpProfile",
           "ProfileCase", "cases", "chips", "ideal", "profile", "roofline", "run_case"]
