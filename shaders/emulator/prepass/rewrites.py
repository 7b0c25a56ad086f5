"""Rewrites of Metal expressions that clang would compile differently or not at all.

- float literals without a suffix are float (Metal has no double), `1.0h` is half, `1.0L` an error;
- vector constructors and every cast to a vector, half or bfloat (`float4(h4)`, `(int4)f4`,
  `static_cast<V>(x)`, `V(x)` with V an alias or template parameter, `short2 v(a, b)`)
  convert lane by lane through the compatibility layer, where clang would splat or reinterpret;
- a braced list passed as an argument (`f({a, b, c})`) converts to the parameter's type;
- string literals and `__func__` are `constant char*`;
- casts to vector pointers check the address's alignment.
"""

from __future__ import annotations

from .names import CONVERTED_TYPES, DECL_WORDS, FLOAT_LITERAL, KEYWORDS, SCALARS, VECTOR_TYPES
from .source import Pass, Source


class ExpressionRewrites(Pass):
    def __init__(self, src: Source, type_names: set[str], class_names: set[str] | frozenset[str] = frozenset()):
        super().__init__(src)
        self.type_names = type_names
        self.class_names = class_names

    def run(self) -> None:
        toks = self.toks
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
                m = FLOAT_LITERAL.match(t.text)
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
            if t.kind == "ident" and t.text in CONVERTED_TYPES and nxt.text == "(" and prev not in (
                "::", ".", "->", "operator"
            ) and not self.is_function_pointer_declarator(i + 1) or (
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
                and nxt.text not in KEYWORDS
            ):
                self.direct_init(i)
            elif t.kind == "ident" and t.text == "vec" and nxt.text == "<" and (
                prev not in ("::", "operator") or (prev == "::" and i >= 2 and toks[i - 2].text == "metal")
            ):
                close = self.angle_close(i + 1)
                if close + 1 < len(toks) and toks[close + 1].text == "(":
                    # `vec<T, 2>(a, b)` and `metal::vec<T, 2>(a, b)` construct lane by lane
                    first = i if prev != "::" else i - 2
                    if prev == "::" and i >= 3 and toks[i - 3].text == "::":
                        first = i - 3
                    self.replace(toks[first].start, toks[first].start, "::metal::vmake<")
                    self.replace(toks[close].end, toks[close].end, ">")
            elif t.kind == "ident" and t.text == "static_cast" and nxt.text == "<":
                close = self.angle_close(i + 1)
                inner = self.span(i + 2, close - 1) if close > i + 2 else ""
                inner = inner.strip()
                if inner in CONVERTED_TYPES or inner in self.type_names or inner.startswith(("vec<", "metal::vec<")):
                    self.replace(t.start, t.end, "::metal::vcast")
            elif t.kind == "ident" and t.text == "reinterpret_cast" and nxt.text == "<":
                close = self.angle_close(i + 1)
                if self.is_vector_pointer(i + 2, close):
                    self.replace(t.start, t.end, "::mpsk_rt::vector_pointer")
            elif t.text == "(":
                self.checked_vector_cast(i)
            elif t.text == "{" and prev in ("(", ",") and self.in_call_arguments(i):
                close = self.match_close(i, "{", "}")
                self.replace(t.start, t.end, "::metal::braced(")
                self.replace(toks[close].start, toks[close].end, ")")

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
        is_type = first.text in DECL_WORDS or first.text in VECTOR_TYPES or first.text in self.type_names
        if is_type and toks[open_ + 2].text != "(":
            return  # `T f(const S& s)`; but `short2 v(short(a), ...)` holds functional casts
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
                and (toks[k - 1].text in DECL_WORDS or toks[k - 1].text in self.type_names
                     or toks[k - 1].text in self.class_names)
            ):
                return  # `T f(S* s)`, S a type (`short2 v(g * n, l)` is an expression)
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
        self.wrap_cast(i, close, "::mpsk_rt::vector_pointer")

    def in_call_arguments(self, i: int) -> bool:
        """Whether token i sits directly inside a call's parentheses: `f({a, b}, c)`."""
        toks = self.toks
        depth = 0
        for k in range(i - 1, -1, -1):
            text = toks[k].text
            if text in (")", "]", "}"):
                depth += 1
            elif text in ("(", "[", "{"):
                if depth:
                    depth -= 1
                    continue
                if text != "(" or k == 0:
                    return False
                before = toks[k - 1]
                return (before.kind == "ident" and before.text not in KEYWORDS) or before.text in (">", ")")
            elif text == ";" and depth == 0:
                return False
        return False

    def is_cast_prefix(self, k: int) -> bool:
        """Whether the parentheses at token k hold just a type name, as in a C-style cast."""
        close = self.match_close(k, "(", ")")
        inner = [t.text for t in self.toks[k + 1 : close]]
        return len(inner) == 1 and (inner[0] in VECTOR_TYPES or inner[0] in self.type_names or inner[0] in SCALARS)

    def converting_cast(self, i: int, close: int) -> None:
        """`(int4)f4` and `(V)x` -> `vcast<int4>(f4)`: Metal converts lane by lane where clang's
        C-style cast between same-size vectors reinterprets the bits."""
        toks = self.toks
        inner = [t.text for t in toks[i + 1 : close]]
        if not inner:
            return
        if len(inner) == 1:
            if not (inner[0] in CONVERTED_TYPES or inner[0] in self.type_names):
                return
        elif not (inner[0] == "vec" and inner[1] == "<" or inner[:3] == ["metal", "::", "vec"] or (
            len(inner) == 3 and inner[0] == "metal" and inner[1] == "::" and inner[2] in VECTOR_TYPES
        )):
            return
        prev = toks[i - 1] if i else None
        after_cast = prev is not None and prev.text == ")" and self.is_cast_prefix(self.match_open(i - 1, "(", ")"))
        if prev is not None and not after_cast and (
            (prev.kind == "ident" and prev.text not in ("return", "case", "else", "do"))
            or prev.text in (")", "]", ">", ">>")
            or prev.kind == "number"
        ):
            return  # a call, sizeof(T), or a parameter list: not a cast
        if close + 1 >= len(toks) or toks[close + 1].text in (")", ";", ",", "{", "]", "?", ":", "="):
            return
        self.wrap_cast(i, close, "::metal::vcast")

    def wrap_cast(self, i: int, close: int, callee: str) -> None:
        """`(T)operand`, the type between tokens i and close -> `callee<T>(operand)`."""
        toks = self.toks
        end = self.unary_end(close + 1)
        if end is None:
            return
        self.replace(toks[i].start, toks[close].end, f"{callee}<{self.span(i + 1, close - 1)}>(")
        self.replace(toks[end].end, toks[end].end, ")")

    def unary_end(self, k: int) -> int | None:
        """Index of the last token of the unary expression starting at token k (a cast's operand)."""
        toks = self.toks
        while k < len(toks):
            if toks[k].text in ("&", "*", "-", "+", "!", "~"):
                k += 1
            elif toks[k].text == "(" and self.is_cast_prefix(k):
                k = self.match_close(k, "(", ")") + 1  # `(int4)(V)x`: the operand is itself a cast
            else:
                break
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
