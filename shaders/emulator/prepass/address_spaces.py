"""Class types in device, constant and threadgroup memory.

The compatibility layer models Metal's address spaces with clang's `address_space`
attributes, which is what makes a device pointer passed for a threadgroup one a compile
error. Clang gives a class object in such a space no copy constructor, no copy assignment
and no member calls (it has no `this` qualified by an address space), all of which Metal
has. Two kinds of class are handled differently:

- classes with behaviour (member functions or operators, a member of such a class, and the
  library's metal::array, packed vectors, matrices, uniform): the address space qualifier is
  dropped, so `params.sizes[d]` on a metal::array in a `constant` struct, `p->get()` and
  copies work; a member function's `this` qualifier goes too, and methods that differed only
  in it (MLX's `operator float() const device` beside `... const threadgroup`, one body) keep
  the first; overloads with different bodies are an error, since they can no longer be told
  apart. The cost: a pointer to a member of such an object is a generic pointer here.
- plain data (c10's ErrorMessages, llama.cpp's blocks, parameter structs): the qualifier
  stays, so `&msgs->msg[i].file` is still a `device char*`; whole-object copies are routed
  through the layer instead: `S s = in[i];` loads, `out[i] = s;` stores.

Scalars, vectors and atomics keep their address spaces, so the mix-up checks still hold.
"""

from __future__ import annotations

from .names import KEYWORDS, TypeNames
from .source import Pass, Source

SPACES = ("device", "constant", "threadgroup")
# What may stand between a function's parameter list and its body or initializer list.
_AFTER_PARAMETERS = frozenset(
    ["const", "volatile", "noexcept", "thread", "device", "constant", "threadgroup", "override", "final", ":"]
)
# Words between an address space and the type name it qualifies.
_SKIP = {"const", "volatile", "thread", "device", "constant", "threadgroup", "struct", "typename", "::"}


class AddressSpaces(Pass):
    def __init__(self, src: Source):
        super().__init__(src)
        names = TypeNames(src)
        self.aliases = names.aliases()
        self.behaviour_classes, self.data_classes = names.classes()
        self.class_names = self.behaviour_classes | self.data_classes
        self._methods: dict[tuple[int, str], str] = {}
        self._stripped: set[int] = set()  # address-space tokens dropped
        self._functions: set[tuple[int, int, int]] = set()  # (start, close paren, end) to dedupe

    def run(self) -> None:
        toks = self.toks
        self.data_copies()
        for i, t in enumerate(toks):
            if t.kind != "ident" or t.text not in (*SPACES, "thread"):
                continue
            if self.qualifies_this(i):
                self.drop_this_qualifier(i)
                continue
            if self.qualified_type(i) in (*self.behaviour_classes, "auto"):
                # `thread` is already nothing; it is noted so that its overloads dedupe too.
                if t.text != "thread":
                    self.replace(t.start, t.end, "const" if t.text == "constant" else "")
                self._stripped.add(i)
                self.function_of(i)
            elif t.text != "thread" and self.qualified_type(i) in self.aliases and not self.deduces(i):
                self.dependent_space(i)
            self.array_parameter(i)
        for start, close, end in sorted(self._functions):
            self.dedupe(start, close, end)

    def data_copies(self) -> None:
        """`S s = e;` -> `S s = ::mpsk_rt::load(e);` and `x = s;` -> `::mpsk_rt::store(x, s);` for
        plain-data classes S, whose objects in an address space clang cannot copy."""
        toks = self.toks
        locals_: set[str] = set()
        for i, t in enumerate(toks[:-3]):
            if t.kind != "ident" or t.text not in self.data_classes or (i and toks[i - 1].text in ("struct", "::")):
                continue
            name, eq = toks[i + 1], toks[i + 2]
            if name.kind != "ident" or name.text in KEYWORDS:
                continue
            if eq.text in (";", ",", ")", "["):
                locals_.add(name.text)
            elif eq.text == "=" and toks[i + 3].text != "{":
                end = i + 3
                depth = 0
                while not (depth == 0 and toks[end].text in (";", ",")):
                    depth += toks[end].text in ("(", "[", "{")
                    depth -= toks[end].text in (")", "]", "}")
                    end += 1
                locals_.add(name.text)
                self.replace(toks[i + 3].start, toks[i + 3].start, "::mpsk_rt::load(")
                self.replace(toks[end - 1].end, toks[end - 1].end, ")")
        for i, t in enumerate(toks[:-2]):
            if t.text != "=":
                continue
            whole_local = toks[i + 1].text in locals_ and toks[i + 2].text == ";"
            if not whole_local and not self.cast_copy(i):
                continue
            start = i
            depth = 0
            while start > 0:
                text = toks[start - 1].text
                if text in (")", "]"):
                    depth += 1
                elif text in ("(", "["):
                    depth -= 1
                if depth == 0 and text in (";", "{", "}"):
                    break
                start -= 1
            if toks[start].text in self.class_names or toks[start].text in KEYWORDS or start >= i:
                continue  # a declaration (`S t = s;`), copied natively
            semi = i + 1
            depth = 0
            while not (depth == 0 and toks[semi].text == ";"):
                depth += toks[semi].text in ("(", "[", "{")
                depth -= toks[semi].text in (")", "]", "}")
                semi += 1
            self.replace(toks[start].start, toks[start].start, "::mpsk_rt::store(")
            self.replace(t.start, t.end, ",")
            self.replace(toks[semi - 1].end, toks[semi - 1].end, ")")

    def deduces(self, i: int) -> bool:
        """Whether the address space at token i qualifies a parameter of a function that is not
        a kernel: a function template deduces its parameters from that type, which `in_space`
        would hide, so there it stays as written."""
        toks = self.toks
        open_ = self.enclosing_paren(i)
        if open_ is None or open_ == 0:
            return False
        before = toks[open_ - 1]
        if before.text == ")" or not (before.kind == "ident" or before.text == ">"):
            return False  # a cast, a function pointer's type, an initializer
        return not self.is_kernel(open_)

    def is_kernel(self, open_: int) -> bool:
        """Whether the parameter list opening at token `open_` is a kernel's."""
        toks = self.toks
        k = open_ - 1
        while k >= 0 and toks[k].text not in (";", "{", "}", ">"):
            if toks[k].text == "kernel":
                return True
            if toks[k].kind == "attr_open" and "kernel" in self.attr_text(k, self.attr_end(k)):
                return True
            k -= 1
        return False

    def dependent_space(self, i: int) -> None:
        """`device T*` with T a template parameter or alias: which kind of class T is becomes known
        only at instantiation, so the address space goes through `in_space`, which keeps it for
        scalars and vectors and drops it for class types, as above."""
        toks = self.toks
        k = i + 1
        while toks[k].text in ("const", "volatile"):
            k += 1
        while k + 2 < len(toks) and toks[k + 1].text == "::" and toks[k + 2].kind == "ident":
            k += 2
        if k + 1 < len(toks) and toks[k + 1].text == "<":
            k = self.angle_close(k + 1)
        while k + 1 < len(toks) and toks[k + 1].text in ("const", "volatile"):
            k += 1
        space = {"device": 1, "constant": 2, "threadgroup": 3}[toks[i].text]
        inner = self.span(i + 1, k)
        self.replace(toks[i].start, toks[k].end, f"::mpsk_rt::in_space<{space}, {inner}>")

    def cast_copy(self, i: int) -> bool:
        """Whether the assignment at token i copies a whole plain-data object through a cast
        pointer: `*((threadgroup Chunk*)p) = *((const device Chunk*)q);`."""
        toks = self.toks
        k = i + 1
        rhs_deref = toks[k].text == "*"
        depth = 0
        names = False
        while k < len(toks) and not (depth == 0 and toks[k].text == ";"):
            depth += toks[k].text in ("(", "[", "{")
            depth -= toks[k].text in (")", "]", "}")
            if depth < 0:
                return False  # a default argument or an initializer inside parentheses
            names |= toks[k].text in self.data_classes
            k += 1
        if k == len(toks):
            return False
        j = self.statement_start(i - 1)
        lhs_deref = toks[j].text == "*"
        names |= any(toks[n].text in self.data_classes for n in range(j, i))
        return names and (lhs_deref or rhs_deref)

    def array_parameter(self, i: int) -> None:
        """`constant const long strides[2]` as a parameter -> `... long* strides`: the array
        decays to a pointer in Metal as in C++, but clang rejects an address space on it."""
        toks = self.toks
        k = i + 1
        while k + 1 < len(toks) and toks[k].text not in (",", ")", ";", "=", "{", "}", "(", "["):
            k += 1
        if toks[k].text != "[" or toks[k - 1].kind != "ident":
            return
        close = self.match_close(k, "[", "]")
        if close + 1 >= len(toks) or toks[close + 1].text not in (",", ")"):
            return
        if self.enclosing_paren(i) is None:
            return
        name = toks[k - 1]
        self.replace(name.start, name.start, "*")
        self.blank(toks[k].start, toks[close].end)

    def enclosing_paren(self, k: int) -> int | None:
        depth = 0
        for j in range(k - 1, -1, -1):
            text = self.toks[j].text
            if self.toks[j].kind == "attr_open":
                depth -= 2  # `[[` is one token, its `]]` two
            elif text in (")", "]", "}"):
                depth += 1
            elif text in ("(", "[", "{"):
                if depth == 0:
                    return j if text == "(" else None
                depth -= 1
            elif text == ";" and depth == 0:
                return None
        return None

    def qualified_type(self, i: int) -> str | None:
        """The base name of the type the address space at token i qualifies (`const device S*` -> S)."""
        toks = self.toks
        k = i + 1
        while k < len(toks) and toks[k].text in _SKIP:
            k += 1
        if k < len(toks) and toks[k].text == "auto":
            return "auto"
        if k < len(toks) and toks[k].kind == "ident" and toks[k].text not in KEYWORDS:
            while True:  # `c10::metal::ErrorMessage` -> ErrorMessage; `A<float>::type` -> type
                if k + 1 < len(toks) and toks[k + 1].text == "<":
                    close = self.angle_close(k + 1)
                    if close + 2 < len(toks) and toks[close + 1].text == "::" and toks[close + 2].kind == "ident":
                        k = close + 2
                        continue
                    break
                if k + 2 < len(toks) and toks[k + 1].text == "::" and toks[k + 2].kind == "ident":
                    k += 2
                    continue
                break
            return toks[k].text
        prev = toks[i - 1] if i else None
        if prev is not None and prev.kind == "ident" and prev.text not in KEYWORDS and toks[k].text in ("*", "&"):
            return prev.text  # `S device*`
        return None

    def qualifies_this(self, i: int) -> bool:
        """Whether the address space at token i follows a member function's parameter list."""
        toks = self.toks
        k = i - 1
        while k >= 0 and toks[k].text in ("const", "volatile", "thread", *SPACES):
            k -= 1
        if k < 0 or toks[k].text != ")":
            return False
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        return nxt in ("{", ";", "->", ":", "const", "volatile", "noexcept", "=", "thread", *SPACES) or toks[
            i + 1
        ].kind == "attr_open"

    def drop_this_qualifier(self, i: int) -> None:
        """`T f() const device {...}` -> `T f() const {...}`; `S() thread : v(0) {}` -> `S() : v(0) {}`."""
        toks = self.toks
        t = toks[i]
        k = i - 1
        has_const = False
        while toks[k].text != ")":
            has_const |= toks[k].text == "const"
            k -= 1
        has_const |= any(toks[j].text == "const" for j in range(i + 1, min(i + 3, len(toks))))
        open_ = self.match_open(k, "(", ")")
        constructor = open_ > 0 and toks[open_ - 1].text == self.enclosing_class(open_)
        self.replace(t.start, t.end, "" if has_const or constructor or t.text != "constant" else "const")
        self._stripped.add(i)
        self.function_of(i, close=k)

    def function_of(self, i: int, close: int | None = None) -> None:
        """Records the function definition whose signature holds the dropped token i, if any,
        for `dedupe`."""
        toks = self.toks
        if close is None:
            k = i
            while k < len(toks) and toks[k].text not in ("(", ";", "{", "=", ")", ","):
                k += 1
            if k < len(toks) and toks[k].text == "(":
                close = self.match_close(k, "(", ")")  # i is in the return type
            else:
                open_ = self.enclosing_paren(i)
                if open_ is None:
                    return
                close = self.match_close(open_, "(", ")")
        open_ = self.match_open(close, "(", ")")
        name = toks[open_ - 1] if open_ else None
        if name is None or name.text in KEYWORDS:
            return
        if name.kind != "ident" and not self.names_operator(open_):
            return  # a function pointer's `(*f)(`, a call through an expression: no definition
        end = close + 1
        depth = 0
        init_list = False  # a constructor's initializer list: `: v(0), w(1)`
        while end < len(toks) and not (
            depth == 0 and (toks[end].text in ("{", ";", "=", ")") or (toks[end].text == "," and not init_list))
        ):
            if depth == 0 and not init_list and toks[end].text not in _AFTER_PARAMETERS:
                return  # not `) const device {` nor `) : v(0) {`
            init_list |= depth == 0 and toks[end].text == ":"
            depth += toks[end].text == "("
            depth -= toks[end].text == ")"
            end += 1
        if end >= len(toks) or toks[end].text != "{":
            return  # a declaration or a call, not a definition
        start = open_
        depth = 0
        while start > 0:
            text = toks[start - 1].text
            if text in (")", "]"):  # not `<` / `>`, which may be comparisons
                depth += 1
            elif text in ("(", "["):
                depth -= 1
            if depth == 0 and text in (";", "{", "}") or (
                depth == 0 and text == ":" and toks[start - 2].text in ("public", "private", "protected")
            ):
                break
            start -= 1
        self._functions.add((start, close, self.match_close(end, "{", "}")))

    def names_operator(self, open_: int) -> bool:
        """Whether the parameter list at `open_` follows `operator`: `operator+=(`, `operator()(`,
        a conversion `operator vec<T, 2>(`."""
        k = open_ - 1
        while k >= 0 and open_ - k <= 12 and self.toks[k].text not in (";", "{", "}"):
            if self.toks[k].text == "operator":
                return True
            k -= 1
        return False

    def dedupe(self, start: int, close: int, end: int) -> None:
        """Definitions that differed only in address spaces dropped here are one function now:
        the first is kept, later ones with the same body are removed, and with another body it
        is an error (the emulator cannot tell them apart)."""
        toks = self.toks
        if any(s <= start and end <= e and (s, e) != (start, end) for s, _, e in self._functions):
            return  # nested in a function that is itself handled
        signature = " ".join(
            x.text for n, x in enumerate(toks[start : close + 1], start) if n not in self._stripped
        )
        body = " ".join(x.text for n, x in enumerate(toks[close + 1 : end + 1], close + 1) if n not in self._stripped)
        key = (self.enclosing_brace(start), signature)
        kept = self._methods.get(key)
        if kept is None:
            self._methods[key] = body
        elif kept == body:
            self.blank(toks[start].start, toks[end].end)
        else:
            open_ = self.match_open(close, "(", ")")
            raise self.error(
                toks[open_ - 1],
                f"'{toks[open_ - 1].text}' is overloaded on the address space of 'this' or of a class "
                f"parameter with different bodies; the emulator drops that qualifier for class types and "
                f"cannot tell the overloads apart (give them one body, or different names)",
            )

    def enclosing_class(self, k: int) -> str | None:
        """The name of the struct or class whose body holds token k, if any."""
        brace = self.enclosing_brace(k)
        j = brace - 1
        while j >= 0 and self.toks[j].text not in (";", "{", "}"):
            if self.toks[j].text in ("struct", "class", "union") and self.toks[j + 1].kind == "ident":
                return self.toks[j + 1].text
            j -= 1
        return None

    def enclosing_brace(self, k: int) -> int:
        depth = 0
        for j in range(k - 1, -1, -1):
            text = self.toks[j].text
            if text == "}":
                depth += 1
            elif text == "{":
                if depth == 0:
                    return j
                depth -= 1
        return -1
