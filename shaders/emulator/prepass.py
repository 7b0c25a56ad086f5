"""Reads Metal kernel signatures and rewrites the source into C++ clang accepts.

Clang ignores Metal's attributes (`[[buffer(0)]]`, `[[thread_position_in_grid]]`),
so it cannot tell which parameter is which; it rejects `[[kernel]]` and attribute
lists on explicit instantiations; and vector constructors such as
`float4(v.xy, v.zw)` and converting `float4(h)` are not C++. This pass runs on
preprocessed source (macros expanded, so MLX-style instantiation macros are
visible), records every kernel's host names and parameter kinds, and rewrites
those constructs. Edits never add or remove newlines, so clang's diagnostics
keep pointing at the user's lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
)

_SCALARS = ("float", "half", "bfloat", "char", "uchar", "short", "ushort", "int", "uint",
            "long", "ulong", "bool")
VECTOR_TYPES = frozenset(f"{s}{n}" for s in _SCALARS for n in (2, 3, 4))

_TOKEN = re.compile(
    r"""
    (?P<pp>(?<![^\n])[ \t]*\#[^\n]*)
  | (?P<ws>[ \t\r\f\v]+|\n)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<number>\.?\d(?:[eEpP][+-]|[\w.])*)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<attr_open>\[\[)
  | (?P<punct>::|->|<<=|>>=|<=|>=|==|!=|&&|\|\||\+\+|--|[-+*/%&|^!~<>=?:;,.(){}\[\]])
    """,
    re.VERBOSE | re.DOTALL,
)

# Words that cannot name a type to the pre-pass's type-name scan.
_KEYWORDS = frozenset(
    [
        "return", "if", "else", "for", "while", "do", "switch", "case", "default", "break", "continue", "goto",
        "sizeof", "alignof", "decltype", "const", "volatile", "static", "inline", "constexpr", "auto", "void",
        "typename", "class", "struct", "template", "using", "typedef", "namespace", "operator", "this", "true",
        "false", "nullptr", "new", "delete",
    ]
)
# Words that start a parameter declaration.
_DECL_WORDS = frozenset(
    [
        "const", "volatile", "device", "constant", "threadgroup", "thread", "auto", "void", "struct", "typename",
        "unsigned", "signed", "float", "half", "bfloat", "char", "uchar", "short", "ushort", "int", "uint", "long",
        "ulong", "bool", "size_t", "int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t",
        "uint64_t",
    ]
)

_FLOAT_LITERAL = re.compile(
    r"^(?:(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|0[xX][0-9a-fA-F.]+[pP][+-]?\d+)"
    r"([fFhHlL]?)$"
)


@dataclass
class Token:
    kind: str
    text: str
    start: int
    end: int


@dataclass
class Param:
    name: str
    type_text: str
    kind: str  # "buffer" or "attribute"
    index: int  # buffer index; for attributes, the position in DISPATCH_ATTRIBUTES
    attribute: str | None = None


@dataclass
class Kernel:
    name: str  # qualified C++ name
    template_header: str | None
    params: list[Param]
    threadgroup_vars: list[tuple[str, str]]  # (type, dims) for static_thread_group_memory_length
    max_threads: int
    uid: int
    host_name: str | None = None  # for non-template kernels


@dataclass
class Entry:
    host_name: str
    kernel: Kernel
    template_args: str | None  # text inside <...> for template kernels


@dataclass
class Prepared:
    source: str
    entries: list[Entry] = field(default_factory=list)


def _split_attrs(text: str) -> list[str]:
    """`kernel, max_total_threads_per_threadgroup(64)` -> its attributes, split at top-level commas."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def _host_name(attr: str) -> str | None:
    """The name in `host_name("a" "b")`, adjacent literals joined as MLX's macros produce them."""
    m = re.fullmatch(r'host_name\s*\(((?:\s*"[^"]*")+)\s*\)', attr)
    return "".join(re.findall(r'"([^"]*)"', m.group(1))) if m else None


class _Lines:
    """Maps offsets in preprocessed text back to the user's line numbers."""

    def __init__(self, text: str):
        self.marks: list[tuple[int, int]] = []  # (offset of line after marker, line number)
        for m in re.finditer(r"^[ \t]*#\s*(?:line\s+)?(\d+)[^\n]*\n", text, re.M):
            self.marks.append((m.end(), int(m.group(1))))
        self.text = text

    def line(self, pos: int) -> int:
        base_off, base_line = 0, 1
        for off, ln in self.marks:
            if off > pos:
                break
            base_off, base_line = off, ln
        return base_line + self.text.count("\n", base_off, pos)


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            tokens.append(Token("other", text[pos], pos, pos + 1))
            pos += 1
            continue
        kind = m.lastgroup
        if kind not in ("ws", "comment", "pp"):
            tokens.append(Token(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    return tokens


class _Rewriter:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.toks = tokenize(text)
        self.lines = _Lines(text)
        self.edits: list[tuple[int, int, str]] = []
        self.kernels: list[Kernel] = []
        self.instantiations: list[tuple[str, str, str]] = []  # (host, name, args)
        self.tg_sites = 0

    # -- helpers ---------------------------------------------------------------
    def error(self, tok_or_pos, message: str) -> SyntaxError:
        pos = tok_or_pos.start if isinstance(tok_or_pos, Token) else tok_or_pos
        line = self.lines.line(pos)
        err = SyntaxError(f"{self.filename}:{line}: error: {message}")
        err.lineno = line
        return err

    def replace(self, start: int, end: int, new: str) -> None:
        newlines = self.text.count("\n", start, end)
        self.edits.append((start, end, new.replace("\n", " ") + "\n" * newlines))

    def blank(self, start: int, end: int) -> None:
        self.replace(start, end, "")

    def match_close(self, i: int, open_: str, close: str) -> int:
        depth = 0
        for j in range(i, len(self.toks)):
            t = self.toks[j].text
            if t == open_ or (open_ == "[[" and self.toks[j].kind == "attr_open"):
                depth += 1
            elif t == close:
                depth -= 1
                if depth == 0:
                    return j
        raise self.error(self.toks[i], f"unbalanced '{open_}'")

    def attr_end(self, i: int) -> int:
        """Index of the second ']' closing the attribute opened at token i."""
        depth = 0
        for j in range(i + 1, len(self.toks)):
            t = self.toks[j].text
            if t in ("(", "["):
                depth += 1
            elif t in (")",) or (t == "]" and depth > 0):
                depth -= 1
            elif t == "]" and depth == 0 and j + 1 < len(self.toks) and self.toks[j + 1].text == "]":
                return j + 1
        raise self.error(self.toks[i], "unterminated attribute '[['")

    def attr_text(self, i: int, j: int) -> str:
        return self.text[self.toks[i].end : self.toks[j - 1].start].strip()

    def angle_close(self, i: int) -> int:
        depth = 0
        for j in range(i, len(self.toks)):
            t = self.toks[j].text
            if t in ("<",):
                depth += 1
            elif t == ">":
                depth -= 1
                if depth == 0:
                    return j
            elif t == ">>":
                depth -= 2
                if depth <= 0:
                    return j
            elif t in (";", "{", "}"):
                break
        raise self.error(self.toks[i], "unbalanced '<' in template arguments")

    def span(self, i: int, j: int) -> str:
        """Source text of tokens i..j inclusive."""
        return self.text[self.toks[i].start : self.toks[j].end]

    # -- the pass --------------------------------------------------------------
    def run(self) -> Prepared:
        self.scan_literals_and_constructors()
        self.scan_declarations()
        return self.assemble()

    def collect_type_names(self) -> set[str]:
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
        return names - set(VECTOR_TYPES) - _KEYWORDS

    def match_open(self, j: int, open_: str, close: str) -> int:
        depth = 0
        for k in range(j, -1, -1):
            t = self.toks[k].text
            if t == close:
                depth += 1
            elif t == open_:
                depth -= 1
                if depth == 0:
                    return k
        raise self.error(self.toks[j], f"unbalanced '{close}'")

    def scan_literals_and_constructors(self) -> None:
        toks = self.toks
        self.type_names = self.collect_type_names()
        for i, t in enumerate(toks):
            if t.kind == "ident" and t.text == "double":
                raise self.error(t, "'double' is not supported in Metal")
            if t.kind == "string" and t.text.startswith('"'):
                self.string_literal(i)
                continue
            if t.kind == "ident" and t.text in ("__func__", "__FUNCTION__", "__PRETTY_FUNCTION__"):
                self.replace(t.start, t.end, f"::mpsk_rt::cstr({t.text})")
                continue
            if t.kind == "number":
                m = _FLOAT_LITERAL.match(t.text)
                if m is None:
                    continue
                suffix = m.group(1)
                if suffix in ("l", "L"):
                    raise self.error(t, f"'{t.text}' is a long double literal, not supported in Metal")
                if suffix == "":
                    self.replace(t.start, t.end, t.text + "f")
                elif suffix in ("h", "H"):
                    self.replace(t.start, t.end, f"((half){t.text[:-1]}f)")
                continue
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is None:
                continue
            prev = toks[i - 1].text if i else ""
            if t.kind == "ident" and t.text in VECTOR_TYPES and nxt.text == "(" and prev not in (
                "::", ".", "->"
            ) or (
                t.kind == "ident"
                and t.text in self.type_names
                and nxt.text == "("
                and prev not in ("::", ".", "->", "operator", "~")
                and not self.is_function_pointer_declarator(i + 1)
            ):
                self.replace(t.start, t.end, f"::metal::vmake<{t.text}>")
            elif (
                t.kind == "ident"
                and (t.text in VECTOR_TYPES or t.text in self.type_names)
                and nxt.kind == "ident"
                and i + 2 < len(toks)
                and toks[i + 2].text == "("
                and prev not in ("::", ".", "->", "<", ",")
                and nxt.text not in _KEYWORDS
            ):
                self.direct_init(i)
            elif t.kind == "ident" and t.text == "vec" and nxt.text == "<" and prev != "::":
                close = self.angle_close(i + 1)
                if close + 1 < len(toks) and toks[close + 1].text == "(":
                    self.replace(t.start, t.start, "::metal::vmake<")
                    self.replace(toks[close].end, toks[close].end, ">")
            elif t.kind == "ident" and t.text == "static_cast" and nxt.text == "<":
                close = self.angle_close(i + 1)
                inner = self.span(i + 2, close - 1) if close > i + 2 else ""
                if inner.strip() in VECTOR_TYPES or inner.strip().startswith("vec<"):
                    self.replace(t.start, t.end, "::metal::vcast")
            elif t.kind == "ident" and t.text == "reinterpret_cast" and nxt.text == "<":
                close = self.angle_close(i + 1)
                if self.is_vector_pointer(i + 2, close):
                    self.replace(t.start, t.end, "::mpsk_rt::vector_pointer")
            elif t.text == "(":
                self.checked_vector_cast(i)

    def string_literal(self, i: int) -> None:
        """A run of adjacent string literals -> `cstr("...")`, a `constant char*` as in Metal;
        left alone where C++ needs the literal itself (static_assert, extern "C", an array's
        initializer, asm)."""
        toks = self.toks
        if i and toks[i - 1].kind == "string":
            return  # inside a run handled at its first literal
        end = i
        while end + 1 < len(toks) and toks[end + 1].kind == "string":
            end += 1
        prev = toks[i - 1].text if i else ""
        if prev in ("extern", "asm", "__asm__", "_Pragma", "operator"):
            return
        if prev == "=" and i >= 2 and toks[i - 2].text == "]":
            return
        depth = 0
        for k in range(i - 1, max(-1, i - 200), -1):
            text = toks[k].text
            if text == ")":
                depth += 1
            elif text == "(":
                if depth == 0:
                    if k and toks[k - 1].text in ("static_assert", "_Static_assert", "__attribute__", "asm"):
                        return
                    break
                depth -= 1
            elif text in (";", "{", "}"):
                break
        self.replace(toks[i].start, toks[i].start, "::mpsk_rt::cstr(")
        self.replace(toks[end].end, toks[end].end, ")")

    def is_function_pointer_declarator(self, k: int) -> bool:
        """Whether tokens from k spell `(*name)(` or `(&name)[`: a declarator, not a call."""
        texts = [t.text for t in self.toks[k : k + 5]]
        return (
            len(texts) == 5
            and texts[1] in ("*", "&")
            and self.toks[k + 2].kind == "ident"
            and texts[3] == ")"
            and texts[4] in ("(", "[")
        )

    def direct_init(self, i: int) -> None:
        """`short2 v(a, b)` -> `short2 v = vmake<short2>(a, b)`, unless it declares a function."""
        toks = self.toks
        open_ = i + 2
        close = self.match_close(open_, "(", ")")
        if close == open_ + 1:
            return  # `T f()` declares a function
        first = toks[open_ + 1]
        if first.text in _DECL_WORDS or first.text in VECTOR_TYPES or first.text in self.type_names:
            return
        depth = 0
        for k in range(open_ + 1, close):
            text = toks[k].text
            if text in ("(", "[", "{"):
                depth += 1
            elif text in (")", "]", "}"):
                depth -= 1
            elif depth == 0 and toks[k].kind == "ident" and toks[k - 1].kind == "ident" and k - 1 > open_:
                return  # `T f(S s)`: a parameter declaration
            elif (
                depth == 0
                and text in ("*", "&")
                and toks[k + 1].kind == "ident"
                and toks[k + 2].text in (",", ")")
                and toks[k - 1].kind == "ident"
                and k - 1 == open_ + 1
            ):
                return  # `T f(S* s)`
        if close + 1 < len(toks) and toks[close + 1].text not in (";", ","):
            return
        name = toks[i].text
        self.replace(toks[open_].start, toks[open_].end, f" = ::metal::vmake<{name}>(")

    def is_vector_pointer(self, start: int, stop: int) -> bool:
        """Whether tokens start..stop-1 spell a pointer to a vector type (`const device float4*`)."""
        toks = self.toks
        if stop - start < 2 or toks[stop - 1].text != "*":
            return False
        k, seen = start, False
        while k < stop - 1:
            word = toks[k].text
            if word in VECTOR_TYPES:
                seen = True
            elif word == "vec" and k + 1 < stop and toks[k + 1].text == "<":
                k = self.angle_close(k + 1)
                seen = True
            elif word not in ("const", "volatile", "device", "constant", "threadgroup", "thread", "metal", "::"):
                return False
            k += 1
        return seen

    def checked_vector_cast(self, i: int) -> None:
        """`(const device float4*)expr` -> a cast that checks the address's alignment.

        Metal leaves a misaligned vector access undefined; clang's alignment sanitizer
        cannot see device or threadgroup pointers, so the cast itself checks.
        """
        toks = self.toks
        close = i + 1
        while close < len(toks) and toks[close].text not in (")", ";", "{", "}"):
            close += 1
        if close >= len(toks) or toks[close].text != ")":
            return
        if not self.is_vector_pointer(i + 1, close):
            self.converting_cast(i, close)
            return
        end = self.unary_end(close + 1)
        if end is None:
            return
        type_text = self.span(i + 1, close - 1)
        self.replace(toks[i].start, toks[close].end, f"::mpsk_rt::vector_pointer<{type_text}>(")
        self.replace(toks[end].end, toks[end].end, ")")

    def converting_cast(self, i: int, close: int) -> None:
        """`(int4)f4` and `(V)x` -> `vcast<int4>(f4)`: Metal converts lane by lane where clang's
        C-style cast between same-size vectors reinterprets the bits."""
        toks = self.toks
        inner = [t.text for t in toks[i + 1 : close]]
        if not inner:
            return
        if len(inner) == 1:
            if not (inner[0] in VECTOR_TYPES or inner[0] in self.type_names):
                return
        elif not (inner[0] == "vec" and inner[1] == "<" or inner[:3] == ["metal", "::", "vec"] or (
            len(inner) == 3 and inner[0] == "metal" and inner[1] == "::" and inner[2] in VECTOR_TYPES
        )):
            return
        prev = toks[i - 1] if i else None
        if prev is not None and (
            (prev.kind == "ident" and prev.text not in ("return", "case", "else", "do"))
            or prev.text in (")", "]", ">", ">>")
            or prev.kind == "number"
        ):
            return  # a call, sizeof(T), or a parameter list: not a cast
        if close + 1 >= len(toks) or toks[close + 1].text in (")", ";", ",", "{", "]", "?", ":", "="):
            return
        end = self.unary_end(close + 1)
        if end is None:
            return
        type_text = self.span(i + 1, close - 1)
        self.replace(toks[i].start, toks[close].end, f"::metal::vcast<{type_text}>(")
        self.replace(toks[end].end, toks[end].end, ")")

    def unary_end(self, k: int) -> int | None:
        """Index of the last token of the unary expression starting at token k (a cast's operand)."""
        toks = self.toks
        while k < len(toks) and toks[k].text in ("&", "*", "-", "+", "!", "~"):
            k += 1
        if k >= len(toks):
            return None
        if toks[k].text == "(":
            end = self.match_close(k, "(", ")")
        elif toks[k].kind in ("ident", "number"):
            end = k
            while end + 2 < len(toks) and toks[end + 1].text == "::" and toks[end + 2].kind == "ident":
                end += 2
        else:
            return None
        while end + 1 < len(toks):
            nxt = toks[end + 1].text
            if nxt == "[":
                end = self.match_close(end + 1, "[", "]")
            elif nxt == "(":
                end = self.match_close(end + 1, "(", ")")
            elif nxt in (".", "->") and end + 2 < len(toks) and toks[end + 2].kind == "ident":
                end += 2
            else:
                break
        return end

    def scan_declarations(self) -> None:
        """Walks namespace scopes looking for kernels and explicit instantiations."""
        toks = self.toks
        ns_stack: list[str | None] = []  # None for a non-namespace brace
        template_header: tuple[int, int] | None = None  # token span of the last template <...>
        i = 0
        while i < len(toks):
            t = toks[i]
            if t.text == "namespace" and t.kind == "ident" and (i == 0 or toks[i - 1].text != "using"):
                j = i + 1
                names = []
                while toks[j].text not in ("{", ";", "="):
                    if toks[j].kind == "ident":
                        names.append(toks[j].text)
                    j += 1
                if toks[j].text == "{":
                    ns_stack.append("::".join(names))
                    i = j + 1
                    continue
            if t.text == "{":
                # A brace we do not descend into: skip its whole body.
                i = self.match_close(i, "{", "}") + 1
                template_header = None
                continue
            if t.text == "}":
                if ns_stack:
                    ns_stack.pop()
                i += 1
                continue
            if t.text == "extern" and i + 2 < len(toks) and toks[i + 1].kind == "string" and toks[
                i + 2
            ].text == "{":
                ns_stack.append("")
                i += 3
                continue
            if t.text == "template" and t.kind == "ident":
                if i + 1 < len(toks) and toks[i + 1].text == "<":
                    close = self.angle_close(i + 1)
                    template_header = (i, close)
                    i = close + 1
                    continue
                i = self.explicit_instantiation(i)
                continue
            if (t.kind == "ident" and t.text == "kernel") or (t.kind == "attr_open" and self.starts_kernel(i)):
                i = self.kernel_definition(i, template_header, ns_stack)
                template_header = None
                continue
            if t.text == ";":
                template_header = None
            i += 1

    def starts_kernel(self, i: int) -> bool:
        """Whether the run of attributes and keywords at token i marks a kernel definition."""
        toks = self.toks
        while i < len(toks):
            if toks[i].kind == "ident" and toks[i].text == "kernel":
                return True
            if toks[i].kind != "attr_open":
                return False
            j = self.attr_end(i)
            if "kernel" in _split_attrs(self.attr_text(i, j)):
                return True
            i = j + 1
        return False

    def collect_attrs(self, i: int) -> tuple[list[str], int]:
        """Attributes and `kernel` keywords starting at token i; returns them and the next index."""
        attrs = []
        while i < len(self.toks):
            t = self.toks[i]
            if t.kind == "attr_open":
                j = self.attr_end(i)
                attrs += _split_attrs(self.attr_text(i, j))
                self.blank(t.start, self.toks[j].end)
                i = j + 1
            elif t.kind == "ident" and t.text == "kernel":
                attrs.append("kernel")
                self.blank(t.start, t.end)
                i += 1
            else:
                break
        return attrs, i

    def explicit_instantiation(self, i: int) -> int:
        start = self.toks[i].start
        attrs, j = self.collect_attrs(i + 1)
        end = j
        while self.toks[end].text != ";":
            end += 1
        if "kernel" not in attrs:
            # An ordinary explicit instantiation; the attributes were blanked already.
            return end + 1
        host = next((h for a in attrs if (h := _host_name(a)) is not None), None)
        if host is None:
            raise self.error(self.toks[i], "explicit kernel instantiation without [[host_name(\"...\")]]")
        toks = self.toks
        if toks[j].text == "decltype":
            close = self.match_close(j + 1, "(", ")")
            k = close + 1
        else:
            k = j
            while toks[k].text != "(" and toks[k].text != ";":
                k += 1
            k -= 1
            while toks[k].text != ">" and toks[k].text != ">>":
                k -= 1
            # back to the name before '<'
            depth = 0
            while True:
                if toks[k].text == ">":
                    depth += 1
                elif toks[k].text == ">>":
                    depth += 2
                elif toks[k].text == "<":
                    depth -= 1
                    if depth == 0:
                        break
                k -= 1
            k -= 1
            while k > j and toks[k - 1].text == "::":
                k -= 2
        # toks[k] starts the qualified name, followed by <args>
        name_parts = []
        m = k
        while toks[m].text != "<":
            name_parts.append(toks[m].text)
            m += 1
        close = self.angle_close(m)
        args = self.span(m + 1, close - 1) if close > m + 1 else ""
        self.instantiations.append((host, "".join(name_parts), args))
        self.blank(start, toks[end].end)
        return end + 1

    def kernel_definition(self, i: int, template_header, ns_stack) -> int:
        toks = self.toks
        attrs, j = self.collect_attrs(i)
        # return type, then name, then '('
        k = j
        while toks[k].text != "(":
            if toks[k].kind == "attr_open":
                more, _ = self.collect_attrs(k)
                attrs += more
                k = self.attr_end(k) + 1
                continue
            k += 1
        name_tok = toks[k - 1]
        if toks[j].text != "void":
            raise self.error(toks[j], f"kernel '{name_tok.text}' must return void")
        close = self.match_close(k, "(", ")")
        params = self.parse_params(name_tok.text, k + 1, close)
        after_attrs, b = self.collect_attrs(close + 1)
        attrs += after_attrs
        if toks[b].text == ";":
            return b + 1  # a declaration; the definition comes later
        if toks[b].text != "{":
            raise self.error(toks[b], f"expected the body of kernel '{name_tok.text}'")
        body_end = self.match_close(b, "{", "}")
        tg_vars = self.threadgroup_vars(b, body_end, name_tok.text)
        max_threads = 1024
        host = None
        for a in attrs:
            m = re.fullmatch(r"max_total_threads_per_threadgroup\s*\(\s*(\d+)\s*\)", a)
            if m:
                max_threads = int(m.group(1))
            if _host_name(a) is not None:
                host = _host_name(a)
        ns = "::".join(n for n in ns_stack if n)
        qual = f"{ns}::{name_tok.text}" if ns else name_tok.text
        header = self.span(*template_header) if template_header else None
        kernel = Kernel(qual, header, params, tg_vars, max_threads, len(self.kernels), host)
        self.kernels.append(kernel)
        if tg_vars:
            sizes = " + ".join(f"::mpsk_rt::round16(sizeof({ty}{dims}))" for ty, dims in tg_vars)
            fn = f" {header or ''} constexpr unsigned long __mpsk_tgmem_{kernel.uid}() {{ return {sizes}; }}"
            self.replace(toks[body_end].end, toks[body_end].end, fn)
        return body_end + 1

    def parse_params(self, kname: str, start: int, stop: int) -> list[Param]:
        toks = self.toks
        groups: list[list[int]] = [[]]
        depth = 0
        k = start
        while k < stop:
            t = toks[k]
            if t.kind == "attr_open":
                e = self.attr_end(k)
                groups[-1].extend(range(k, e + 1))
                k = e + 1
                continue
            if t.text in ("(", "[", "<"):
                depth += 1
            elif t.text in (")", "]", ">"):
                depth -= 1
            elif t.text == ">>":
                depth -= 2
            elif t.text == "," and depth == 0:
                groups.append([])
                k += 1
                continue
            groups[-1].append(k)
            k += 1
        params: list[Param] = []
        used: set[int] = set()
        pending: list[tuple[int, str, str]] = []
        for g in groups:
            if not g:
                continue
            attr = None
            plain = []
            k = 0
            while k < len(g):
                t = toks[g[k]]
                if t.kind == "attr_open":
                    e = g.index(self.attr_end(g[k]))
                    attr = self.attr_text(g[k], g[e])
                    self.blank(t.start, toks[g[e]].end)
                    k = e + 1
                    continue
                plain.append(g[k])
                k += 1
            name = toks[plain[-1]].text
            type_text = self.text[toks[plain[0]].start : toks[plain[-1]].start].strip()
            if attr is None:
                if not re.search(r"\b(device|constant)\b", type_text):
                    raise self.error(
                        toks[plain[-1]],
                        f"parameter '{name}' of kernel '{kname}' has neither [[buffer(n)]] nor a "
                        f"dispatch attribute",
                    )
                pending.append((len(params), name, type_text))
                params.append(Param(name, type_text, "buffer", -1))
                continue
            m = re.fullmatch(r"buffer\s*\(\s*(\d+)\s*\)", attr)
            if m:
                idx = int(m.group(1))
                if idx in used:
                    raise self.error(toks[plain[-1]], f"kernel '{kname}' uses [[buffer({idx})]] twice")
                used.add(idx)
                params.append(Param(name, type_text, "buffer", idx))
            elif attr in DISPATCH_ATTRIBUTES:
                params.append(
                    Param(name, type_text, "attribute", DISPATCH_ATTRIBUTES.index(attr), attr)
                )
            elif re.fullmatch(r"threadgroup\s*\(\s*\d+\s*\)", attr):
                raise self.error(
                    toks[plain[-1]],
                    f"kernel '{kname}': threadgroup memory parameters ([[{attr}]]) cannot be sized "
                    f"through torch.mps.compile_shader or the AOTI shim; declare a threadgroup "
                    f"array in the kernel instead",
                )
            else:
                raise self.error(toks[plain[-1]], f"kernel '{kname}': unsupported attribute [[{attr}]]")
        nxt = 0
        for pos, _name, _type in pending:
            while nxt in used:
                nxt += 1
            params[pos].index = nxt
            used.add(nxt)
        return params

    def top_level(self, idxs: list[int]) -> set[int]:
        """The tokens among `idxs` outside any (), [] or <> nesting."""
        outer, depth = set(), 0
        for d in idxs:
            text = self.toks[d].text
            if text in (">", ")", "]"):
                depth -= 1
            if depth == 0 and text not in ("<", "(", "["):
                outer.add(d)
            if text in ("<", "(", "["):
                depth += 1
        return outer

    def threadgroup_vars(self, body_start: int, body_end: int, kname: str) -> list[tuple[str, str]]:
        """Rewrites kernel-scope `threadgroup T name[N];` into views of the group's shared arena."""
        toks = self.toks
        found: list[tuple[str, str]] = []
        k = body_start + 1
        while k < body_end:
            t = toks[k]
            if not (t.kind == "ident" and t.text == "threadgroup"):
                k += 1
                continue
            prev = toks[k - 1].text
            if prev not in ("{", ";", "}", ")", ":"):
                k += 1
                continue
            end = k
            while toks[end].text != ";":
                end += 1
            decl = list(range(k + 1, end))
            outer = self.top_level(decl)
            # A pointer or reference into threadgroup memory is an ordinary local.
            if any(toks[d].text in ("*", "&") for d in outer):
                k = end + 1
                continue
            declarators: list[list[int]] = [[]]
            for d in decl:
                if d in outer and toks[d].text == ",":
                    declarators.append([])
                else:
                    declarators[-1].append(d)
            first = declarators[0]
            bracket = next((n for n, d in enumerate(first) if toks[d].text == "["), len(first))
            name_at = bracket - 1
            type_text = self.text[toks[first[0]].start : toks[first[name_at]].start].strip()
            out = []
            for n, dl in enumerate(declarators):
                if n == 0:
                    name_tok = toks[first[name_at]]
                    dims_toks = first[name_at + 1 :]
                else:
                    name_tok = toks[dl[0]]
                    dims_toks = dl[1:]
                if any(toks[d].text == "=" for d in dims_toks):
                    raise self.error(name_tok, f"threadgroup variable '{name_tok.text}' cannot have an initializer")
                dims = "".join(toks[d].text for d in dims_toks)
                site = self.tg_sites
                self.tg_sites += 1
                found.append((type_text, dims))
                ref = f"(&{name_tok.text}){dims}" if dims else f"&{name_tok.text}"
                ptr = f"(*){dims}" if dims else "*"
                out.append(
                    f"threadgroup {type_text} {ref} = *(threadgroup {type_text} {ptr})"
                    f"::mpsk_rt::tg_alloc({site}, sizeof({type_text}{dims}), \"{name_tok.text}\");"
                )
            self.replace(t.start, toks[end].end, " ".join(out))
            k = end + 1
        return found

    # -- output ----------------------------------------------------------------
    def assemble(self) -> Prepared:
        by_name = {}
        for kern in self.kernels:
            by_name.setdefault(kern.name, kern)
            by_name.setdefault(kern.name.split("::")[-1], kern)
        entries: list[Entry] = []
        for kern in self.kernels:
            if kern.template_header is None:
                entries.append(Entry(kern.host_name or kern.name.split("::")[-1], kern, None))
        for host, name, args in self.instantiations:
            kern = by_name.get(name) or by_name.get(name.split("::")[-1])
            if kern is None:
                raise SyntaxError(f"{self.filename}: instantiation '{host}' names no kernel '{name}'")
            entries.append(Entry(host, kern, args))
        hosts = [e.host_name for e in entries]
        dup = {h for h in hosts if hosts.count(h) > 1}
        if dup:
            raise SyntaxError(f"{self.filename}: kernel name(s) defined twice: {sorted(dup)}")

        out = []
        pos = 0
        for start, end, new in sorted(self.edits, key=lambda e: (e[0], -e[1])):
            if start < pos:
                continue  # nested edit inside a span already replaced
            out.append(self.text[pos:start])
            out.append(new)
            pos = end
        out.append(self.text[pos:])
        out.append(_entry_table(entries))
        return Prepared("".join(out), entries)


def _entry_table(entries: list[Entry]) -> str:
    lines = ['\n#line 1 "<mpsk kernel entries>"']
    rows = []
    for n, e in enumerate(entries):
        fn = e.kernel.name + (f"<{e.template_args}>" if e.template_args is not None else "")
        specs = ", ".join(
            f"{{{0 if p.kind == 'buffer' else 1}, {p.index}}}" for p in e.kernel.params
        ) or "{0, 0}"
        tg = (
            f"__mpsk_tgmem_{e.kernel.uid}"
            + (f"<{e.template_args}>" if e.template_args is not None else "")
            + "()"
            if e.kernel.threadgroup_vars
            else "0ul"
        )
        lines += [
            f"static const ::mpsk_rt::Spec __mpsk_spec_{n}[] = {{{specs}}};",
            f"static_assert(::mpsk_rt::arity(&{fn}) == {len(e.kernel.params)}, "
            f'"kernel {e.host_name}: parameter count");',
            f"static void __mpsk_entry_{n}(void** b) {{ ::mpsk_rt::invoke(&{fn}, b, __mpsk_spec_{n}); }}",
            f"static void __mpsk_describe_{n}(::mpsk_rt::ParamInfo* o) "
            f"{{ ::mpsk_rt::describe_all(&{fn}, __mpsk_spec_{n}, o); }}",
        ]
        rows.append(
            f'  {{"{e.host_name}", __mpsk_entry_{n}, __mpsk_describe_{n}, {len(e.kernel.params)}, '
            f"{tg}, {e.kernel.max_threads}}},"
        )
    lines += [
        "struct __MpskEntry { const char* name; void (*fn)(void**); "
        "void (*describe)(::mpsk_rt::ParamInfo*); int nparams; unsigned long tgmem; int max_threads; };",
        "static const __MpskEntry __mpsk_entries[] = {",
        *rows,
        '  {nullptr, nullptr, nullptr, 0, 0, 0}',
        "};",
        "#define MPSK_EXPORT extern \"C\" __attribute__((visibility(\"default\")))",
        f"MPSK_EXPORT int mpsk_num_entries() {{ return {len(entries)}; }}",
        "MPSK_EXPORT const char* mpsk_entry_name(int e) { return __mpsk_entries[e].name; }",
        "MPSK_EXPORT int mpsk_entry_nparams(int e) { return __mpsk_entries[e].nparams; }",
        "MPSK_EXPORT unsigned long mpsk_entry_tgmem(int e) { return __mpsk_entries[e].tgmem; }",
        "MPSK_EXPORT int mpsk_entry_max_threads(int e) { return __mpsk_entries[e].max_threads; }",
        "MPSK_EXPORT void mpsk_entry_params(int e, ::mpsk_rt::ParamInfo* out) "
        "{ __mpsk_entries[e].describe(out); }",
        "MPSK_EXPORT const char* mpsk_attr_name(int a) "
        "{ return a >= 0 && a < ::mpsk_rt::kNumAttrs ? ::mpsk_rt::kAttrNames[a] : nullptr; }",
        "MPSK_EXPORT int mpsk_atomic_ranges(unsigned long* out, int max) { int n = ::mpsk_rt::num_atomic_ranges; "
        "for (int i = 0; i < n && i < max; ++i) { out[2 * i] = ::mpsk_rt::atomic_ranges[i][0]; "
        "out[2 * i + 1] = ::mpsk_rt::atomic_ranges[i][1]; } return n; }",
        "MPSK_EXPORT const char* mpsk_undefined_note() { return ::mpsk_rt::undefined_note; }",
        "MPSK_EXPORT int mpsk_launch(int e, void** bufs, const unsigned* grid, const unsigned* group, "
        "int flags, char* err, int errlen) { return ::mpsk_rt::launch(__mpsk_entries[e].fn, bufs, "
        "grid, group, flags, err, errlen); }",
        "",
    ]
    return "\n".join(lines)


def prepare(preprocessed: str, filename: str = "shader.metal") -> Prepared:
    """Rewrites preprocessed Metal source; raises SyntaxError for what Metal would reject."""
    return _Rewriter(preprocessed, filename).run()
