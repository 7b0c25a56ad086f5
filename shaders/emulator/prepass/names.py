"""What the pre-pass knows of Metal's names: dispatch attributes, scalar and vector
types, keywords, and the names a source declares as types it cannot resolve itself."""

from __future__ import annotations

import re

from .source import Pass

DISPATCH_ATTRIBUTES = (
    "thread_position_in_grid",
    "threadgroup_position_in_grid",
    "thread_position_in_threadgroup",
    "threads_per_threadgroup",
    "dispatch_threads_per_threadgroup",
    "threadgroups_per_grid",
    "threads_per_grid",
    "thread_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup",
    "threads_per_simdgroup",
    "simdgroups_per_threadgroup",
    "dispatch_simdgroups_per_threadgroup",
    "thread_execution_width",
    "thread_index_in_quadgroup",
    "quadgroup_index_in_threadgroup",
    "quadgroups_per_threadgroup",
    "dispatch_quadgroups_per_threadgroup",
)

SCALARS = ("float", "half", "bfloat", "char", "uchar", "short", "ushort", "int", "uint",
            "long", "ulong", "bool")
VECTOR_TYPES = frozenset(f"{s}{n}" for s in SCALARS for n in (2, 3, 4))
# Types whose every cast goes through the compatibility layer: the vectors (clang's casts
# between them reinterpret bits) and half / bfloat (clang has no cast between the two).
CONVERTED_TYPES = VECTOR_TYPES | {"half", "bfloat"}

# Words that cannot name a type to the pre-pass's type-name scan.
KEYWORDS = frozenset(
    [
        "return", "if", "else", "for", "while", "do", "switch", "case", "default", "break", "continue", "goto",
        "sizeof", "alignof", "decltype", "const", "volatile", "static", "inline", "constexpr", "auto", "void",
        "typename", "class", "struct", "template", "using", "typedef", "namespace", "operator", "this", "true",
        "false", "nullptr", "new", "delete",
    ]
)
# Words that start a parameter declaration.
DECL_WORDS = frozenset(
    [
        "const", "volatile", "device", "constant", "threadgroup", "thread", "auto", "void", "struct", "typename",
        "unsigned", "signed", "float", "half", "bfloat", "char", "uchar", "short", "ushort", "int", "uint", "long",
        "ulong", "bool", "size_t", "int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t",
        "uint64_t",
    ]
)

FLOAT_LITERAL = re.compile(
    r"^(?:(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|0[xX][0-9a-fA-F.]+[pP][+-]?\d+)"
    r"([fFhHlL]?)$"
)


# Class types of the compatibility layer that kernels keep in device or constant memory.
LIBRARY_CLASSES = frozenset(
    ["array", "simd_vote", "quad_vote", "uniform", "packed_vec", "matrix"]
    + [f"{t}{c}x{r}" for t in ("float", "half", "bfloat") for c in (2, 3, 4) for r in (2, 3, 4)]
    + [f"packed_{s}{n}" for s in SCALARS if s != "bool" for n in (2, 3, 4)]
)


class TypeNames(Pass):
    """Collects the type names of a source that are not Metal's own."""

    def aliases(self) -> set[str]:
        """Names that stand for a type the pre-pass cannot see: template type parameters and
        `using` / `typedef` aliases. `V(x)` and `(V)x` with such a V may be vector conversions,
        which clang would compile as bit casts, so they are routed through vmake / vcast."""
        toks = self.toks
        names: set[str] = set()
        for i, t in enumerate(toks):
            if t.kind != "ident":
                continue
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if t.text in ("typename", "class") and nxt is not None and nxt.kind == "ident":
                after = toks[i + 2].text if i + 2 < len(toks) else ""
                if after in (",", ">", "=", ">>", "..."):
                    names.add(nxt.text)
            elif t.text == "using" and nxt is not None and nxt.kind == "ident" and i + 2 < len(toks) and toks[
                i + 2
            ].text == "=":
                names.add(nxt.text)
            elif t.text == "typedef":
                j = i + 1
                depth = 0
                while j < len(toks) and not (toks[j].text == ";" and depth == 0):
                    depth += toks[j].text in ("(", "[", "{", "<")
                    depth -= toks[j].text in (")", "]", "}", ">")
                    j += 1
                k = j - 1
                while k > i and toks[k].text == "]":
                    k = self.match_open(k, "[", "]") - 1
                if k > i and toks[k].kind == "ident":
                    names.add(toks[k].text)
        return names - set(VECTOR_TYPES) - KEYWORDS

    def classes(self) -> tuple[set[str], set[str]]:
        """Class types the source defines or declares, split into those with behaviour (member
        functions, or a member of such a type, transitively; and the library's) and plain data."""
        toks = self.toks
        bodies: dict[str, tuple[int, int]] = {}
        declared: set[str] = set()
        templates: set[str] = set()
        for i, t in enumerate(toks[:-2]):
            if t.kind != "ident" or t.text not in ("struct", "class", "union"):
                continue
            at = i + 1
            while toks[at].text == "alignas" or toks[at].kind == "attr_open":  # `struct alignas(8) S {`
                at = self.match_close(at + 1, "(", ")") + 1 if toks[at].text == "alignas" else self.attr_end(at) + 1
            nxt, after = toks[at], toks[at + 1].text
            if nxt.kind == "ident" and after in ("{", ":", ";", "<", "final"):
                declared.add(nxt.text)
                k = at + 1
                while k < len(toks) and toks[k].text not in ("{", ";"):
                    k += 1
                if k < len(toks) and toks[k].text == "{":
                    bodies.setdefault(nxt.text, (k, self.match_close(k, "{", "}")))
                    if i >= 2 and toks[i - 1].text in (">", ">>"):
                        templates.add(nxt.text)  # `template <...> struct X {`
            elif nxt.text == "{" and i and toks[i - 1].text == "typedef":
                close = self.match_close(i + 1, "{", "}")
                if close + 1 < len(toks) and toks[close + 1].kind == "ident":
                    declared.add(toks[close + 1].text)
                    bodies[toks[close + 1].text] = (i + 1, close)
        # A class template counts as having behaviour: its instances (`Pair<float>`) are spelled in
        # ways the plain-data copy rewrite cannot follow.
        behaviour = set(LIBRARY_CLASSES) | templates | {
            n for n, (a, b) in bodies.items() if self.has_member_functions(a, b)
        }
        changed = True
        while changed:  # a class holding a member of a class with behaviour needs it too
            changed = False
            for name, (a, b) in bodies.items():
                if name not in behaviour and any(
                    toks[k].text in behaviour and toks[k].kind == "ident" for k in range(a + 1, b)
                ):
                    behaviour.add(name)
                    changed = True
        data = declared - behaviour - KEYWORDS
        return behaviour - KEYWORDS, data

    def has_member_functions(self, open_: int, close: int) -> bool:
        """Whether a class body declares a member function or operator (not only data)."""
        toks = self.toks
        k = open_ + 1
        statement_has_eq = False
        while k < close:
            text = toks[k].text
            if text == "{":
                k = self.match_close(k, "{", "}") + 1
                statement_has_eq = False
                continue
            if text in (";", "}", ":") and not (text == ":" and toks[k + 1].text == ":"):
                statement_has_eq = False
            elif text == "=":
                statement_has_eq = True
            elif text == "operator" or (
                text == "(" and not statement_has_eq and toks[k - 1].kind == "ident"
                and toks[k - 1].text not in ("alignas", "__attribute__", "decltype", "sizeof", "alignof")
            ):
                return True
            k += 1
        return False
