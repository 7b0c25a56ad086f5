"""An emulated `mps` device for the CPU build of torch: the program a Mac runs, run here.

`emulate_mps_device()` (or MPSK_EMULATE_MPS=1 before importing mps_inductor_ext) makes
`device="mps"` work on a machine without MPS: host-memory tensors, eager ops on CPU kernels, and
every Metal kernel (Inductor's and this project's) on the Metal emulator. `count_launches()`
reports what a block launched.
"""

from .install import MACS, emulate_mps_device, hooks_active, installed, mac
from .launches import LaunchCounts, count_launches

__all__ = ["MACS", "LaunchCounts", "count_launches", "emulate_mps_device", "hooks_active", "installed", "mac"]
