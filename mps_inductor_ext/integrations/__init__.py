"""Using the Metal kernels without torch.compile: eager patching of a model's modules (patch,
unpatch) and transformers' extension points (the "mpsk" attention implementation, a `kernels` mapping)."""

from .hub_kernels import kernel_mapping
from .patching import patch, unpatch
from .report import PatchReport, Site

__all__ = ["PatchReport", "Site", "kernel_mapping", "patch", "unpatch"]
