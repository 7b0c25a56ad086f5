"""Using the Metal kernels without torch.compile: eager patching of a model's modules (patch,
unpatch) and transformers' extension points (the "mpsk" attention implementation)."""

from .patching import patch, unpatch
from .report import PatchReport, Site

__all__ = ["PatchReport", "Site", "patch", "unpatch"]
