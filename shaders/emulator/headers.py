"""`#include`s resolved the way torch.mps.compile_shader resolves them.

torch inlines every `#include <...>` or `"..."` it finds under torch's include folder
(the wheel ships `c10/metal/*.h`, which every kernel of Inductor's MPS codegen includes)
before handing the source to Metal; anything else, `<metal_stdlib>` included, is left for
the compiler. The emulator does the same, with the same helper torch uses, so a source
that compiles on a Mac through torch compiles here and nowhere else does an include
resolve differently.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils._cpp_embed_headers import _embed_headers

TORCH_INCLUDE_DIR = Path(torch.__file__).parent / "include"


def embed_torch_headers(source: str) -> str:
    """`source` with the headers found under torch's include folder inlined, as torch does."""
    if "#include" not in source:
        return source
    return _embed_headers([line + "\n" for line in source.split("\n")], [TORCH_INCLUDE_DIR], set())
