"""Registering "mpsk" with transformers' attention and mask interfaces, without importing transformers.

Importing transformers takes seconds, so `import mps_inductor_ext` must not do it. If transformers'
modeling_utils is already loaded the names are registered at once; otherwise a meta-path hook
registers them right after transformers loads it, before any model can be built. Both names are
needed: transformers builds the mask only for implementations its mask interface knows
(masking_utils._preprocess_mask_arguments returns no mask at all for others), so an attention
function registered alone would silently see no padding mask.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from .hf_attention import NAME, mpsk_attention_forward

TRIGGER = "transformers.modeling_utils"


def register_now() -> None:
    """Registers mpsk_attention_forward and the SDPA mask function (a boolean 4-D mask, or None when
    the causal flag suffices) under "mpsk"."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, mpsk_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


class _Hook(importlib.abc.MetaPathFinder):
    """Finds TRIGGER through the other finders and has its loader register once the module has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TRIGGER:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the find_spec below from finding this hook
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            run = loader.exec_module

            def exec_module(module):
                run(module)
                register_now()

            loader.exec_module = exec_module  # this module's own loader instance
        return spec


def register_lazily() -> None:
    """Registers now if transformers' modeling_utils is loaded, when it is loaded otherwise, and
    never if transformers is not installed."""
    if TRIGGER in sys.modules:
        register_now()
    elif importlib.util.find_spec("transformers") is not None and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
