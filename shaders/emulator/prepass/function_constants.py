"""Metal function constants, specialized at compile time as a pipeline specializes them.

`constant T name [[function_constant(n)]];` at program scope gets its value from the host
(`get_kernel_function(kernel, constants={...})` on the emulator): the declaration becomes a
`constexpr` with that value, and `is_function_constant_defined(name)` becomes `true`. A
constant the host did not set becomes an object whose every use stops the launch with an
error naming it (Metal refuses to make such a pipeline), and `is_function_constant_defined`
gives `false`. A buffer declared `[[buffer(k), function_constant(name)]]` exists only when
the constant is true; otherwise the host may leave it unbound (signatures.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .source import Pass, Source

_ATTR = re.compile(r"function_constant\s*\(\s*(\d+)\s*\)")
# Words around `constant` in a declaration (MLX writes `static constant constexpr const bool`).
_SPECIFIERS = frozenset(["static", "constant", "constexpr", "const", "inline"])


@dataclass(frozen=True)
class FunctionConstant:
    name: str
    index: int
    type_text: str


def literal(value: bool | int | float, type_text: str) -> str:
    """C++ for a constant's value, exact for floats (hex), typed as declared."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"(({type_text}){value.hex()}f)"
    return f"(({type_text}){int(value)}l)"


class FunctionConstants(Pass):
    def __init__(self, src: Source, values: dict[str, bool | int | float]):
        super().__init__(src)
        self.values = values
        self.declared: list[FunctionConstant] = []

    def run(self) -> list[FunctionConstant]:
        toks = self.toks
        i = 0
        while i < len(toks):
            t = toks[i]
            if t.kind == "attr_open":
                j = self.attr_end(i)
                m = _ATTR.fullmatch(self.attr_text(i, j))
                if m and j + 1 < len(toks) and toks[j + 1].text == ";" and self.declares_constant(i):
                    self.declaration(i, j, int(m.group(1)))
                i = j + 1
                continue
            if t.text == "is_function_constant_defined" and i + 3 < len(toks) and toks[i + 1].text == "(":
                close = self.match_close(i + 1, "(", ")")
                name = self.span(i + 2, close - 1).strip()
                self.replace(t.start, toks[close].end, "true" if name in self.values else "false")
                i = close + 1
                continue
            i += 1
        return self.declared

    def declares_constant(self, attr: int) -> bool:
        """Whether the statement before the attribute at `attr` declares a variable in the constant
        address space: `constant T name`, `static constant constexpr const T name`, ..."""
        start = self.statement_start(attr)
        words = {t.text for t in self.toks[start:attr]}
        return "constant" in words and self.toks[attr - 1].kind == "ident"

    def declaration(self, attr: int, attr_end: int, index: int) -> None:
        toks = self.toks
        name = toks[attr - 1]
        start = self.statement_start(attr)
        first = start
        while toks[first].text in _SPECIFIERS:
            first += 1
        type_text = " ".join(t.text for t in toks[first : attr - 1] if t.text not in _SPECIFIERS)
        self.declared.append(FunctionConstant(name.text, index, type_text))
        if name.text in self.values:
            new = f"constexpr {type_text} {name.text} = {literal(self.values[name.text], type_text)};"
        else:
            new = (
                f"static constexpr ::mpsk_rt::UnsetConstant<{type_text}> {name.text}"
                f'{{"{name.text}", {index}}};'
            )
        self.replace(toks[start].start, toks[attr_end + 1].end, new)
