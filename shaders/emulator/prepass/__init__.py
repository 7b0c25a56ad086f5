"""Reads Metal kernel signatures and rewrites the source into C++ clang accepts.

Clang ignores Metal's attributes (`[[buffer(0)]]`, `[[thread_position_in_grid]]`), so it
cannot tell which parameter is which; it rejects `[[kernel]]` and attribute lists on explicit
instantiations; and several Metal expressions mean something else in C++ (a cast between
vectors converts in Metal and reinterprets in clang). The pre-pass runs on preprocessed source
(macros expanded, so MLX-style instantiation macros are visible), in passes over one token
stream, as PoCL splits its kernel compiler:

- `source`: tokens, line mapping, and the edit list every pass writes to;
- `restrictions`: what Metal's dialect leaves out of C++ (recursion, goto, the C library, ...);
- `names`: Metal's type names and attributes, and the aliases a source declares;
- `function_constants`: `[[function_constant(n)]]` declarations, specialized by the host;
- `rewrites`: expressions (literals, vector conversions, casts, strings, braced arguments);
- `address_spaces`: class types in device, constant and threadgroup memory;
- `signatures`: kernels, their host names and parameters, threadgroup arrays;
- `entries`: the C++ table the host launches through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .address_spaces import AddressSpaces
from .entries import entry_table
from .function_constants import FunctionConstant, FunctionConstants
from .names import DISPATCH_ATTRIBUTES, VECTOR_TYPES
from .restrictions import Restrictions
from .rewrites import ExpressionRewrites
from .signatures import Declarations, Entry, Kernel, Param
from .source import Source, Token, tokenize

__all__ = [
    "DISPATCH_ATTRIBUTES",
    "VECTOR_TYPES",
    "Entry",
    "Kernel",
    "Param",
    "Prepared",
    "Token",
    "prepare",
    "tokenize",
]


_UNROLL = re.compile(r"^([ \t]*#[ \t]*pragma[ \t]+unroll)[ \t]*\([^\n]*\)", re.M)


@dataclass
class Prepared:
    source: str
    entries: list[Entry] = field(default_factory=list)
    constants: list[FunctionConstant] = field(default_factory=list)


def prepare(
    preprocessed: str, filename: str = "shader.metal", constants: dict[str, bool | int | float] | None = None,
    metal_version: int = 310,
) -> Prepared:
    """Rewrites preprocessed Metal source, with function constants set by name as `constants`
    says; raises SyntaxError for what Metal (of `metal_version`, as __METAL_VERSION__ spells it)
    would reject."""
    constants = constants or {}
    # `#pragma unroll(N)` loses N's macro between the preprocessor and the compiler; the count
    # is only a hint, so it goes (the line stays, so line numbers do too).
    preprocessed = _UNROLL.sub(r"\1", preprocessed)
    src = Source(preprocessed, filename)
    Restrictions(src, metal_version).run()
    declared = FunctionConstants(src, constants).run()
    spaces = AddressSpaces(src)
    spaces.run()
    ExpressionRewrites(src, spaces.aliases, spaces.class_names).run()
    entries = Declarations(src, spaces.behaviour_classes, constants).run()
    return Prepared(src.edited() + entry_table(entries, declared), entries, declared)
