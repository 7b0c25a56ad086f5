"""AOTInductor support: the emulated MPS shim (`aoti_torch_mps_*`) for machines without libtorch's."""

from .emulated_shim import last_error, load

__all__ = ["last_error", "load"]
