"""`#include`s resolved the way torch.mps.compile_shader resolves them.

torch inlines every `#include <...>` or `"..."` it finds under torch's include folder
(the wheel ships `c10/metal/*.h`, which every kernel of Inductor's MPS codegen includes)
before handing the source to Metal; anything else, `<metal_stdlib>` included, is left for
the compiler. The emulator does the same, with the same helper torch uses, so a source
that compiles on a Mac through torch compiles here and nowhere else does an include
resolve differently.

Shader source is code that runs as the user (it is compiled as host C++), but it should not
read host files by accident or through a cache another user planted: only Metal's headers and
torch's `c10/metal` headers may be included, by a name written in the source (no computed
`#include`, no `#embed`, no absolute or `..` path), so nothing else reaches the compiler or
its error messages.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.utils._cpp_embed_headers import _embed_headers

TORCH_INCLUDE_DIR = Path(torch.__file__).parent / "include"


def embed_torch_headers(source: str) -> str:
    """`source` with the headers found under torch's include folder inlined, as torch does
    (after `check_includes`: torch's helper would inline any file an absolute path names)."""
    check_includes(source)
    if "#include" not in source:
        return source
    return _embed_headers([line + "\n" for line in source.split("\n")], [TORCH_INCLUDE_DIR], set())


_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(include_next|include|import|embed)\b[ \t]*(.*)$", re.M)
# A bare name (`<metal_stdlib>`, or one that does not exist, which the compiler then reports) can
# only resolve among the compiler's Metal header stubs.
_METAL_HEADER = re.compile(r"\w[\w.-]*")
_TORCH_HEADER = re.compile(r"c10/metal/\w+\.h")


def check_includes(source: str, filename: str = "shader.metal", *, names: bool = True) -> None:
    """Raises SyntaxError at any `#embed` and, unless `names` is False, at the first `#include` of
    something other than a Metal header (`<metal_stdlib>`, ...) or one of torch's `c10/metal` headers.
    (After torch's headers are inlined, their `#include <array>` for host builds remains in an
    inactive branch: the compiler's own record of what it read is checked then.)"""
    text = source.replace("\\\n", "")
    for m in _DIRECTIVE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        directive, rest = m.group(1), m.group(2).strip()
        where = f"{filename}:{line}: error: "
        if directive == "embed" or directive == "import":
            raise SyntaxError(f"{where}'#{directive}' is not supported: Metal source cannot read host files")
        if not names:
            continue
        name = re.match(r'<([^>]*)>|"([^"]*)"', rest)
        if name is None:
            raise SyntaxError(f"{where}computed '#{directive}': name the header in the source")
        header = name.group(1) if name.group(1) is not None else name.group(2)
        if (_METAL_HEADER.fullmatch(header) and not (TORCH_INCLUDE_DIR / header).exists()) or (
            _TORCH_HEADER.fullmatch(header) and (TORCH_INCLUDE_DIR / header).is_file()
        ):
            continue
        raise SyntaxError(
            f"{where}'#{directive}' of '{header}': shaders may include only Metal's headers (<metal_stdlib>, ...) "
            "and torch's <c10/metal/...> headers"
        )
