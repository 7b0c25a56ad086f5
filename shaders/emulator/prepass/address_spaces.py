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

    def run(self) -> None:
        toks = self.toks
        self.data_copies()
        for i, t in enumerate(toks):
            if t.kind != "ident" or t.text not in (*SPACES, "thread"):
                continue
            if self.qualifies_this(i):
                self.drop_this_qualifier(i)
            else:
                if t.text != "thread" and self.qualified_type(i) in (*self.behaviour_classes, "auto"):
                    self.replace(t.start, t.end, "const" if t.text == "constant" else "")
                self.array_parameter(i)

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
            if t.text != "=" or toks[i + 1].text not in locals_ or toks[i + 2].text != ";":
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
            self.replace(toks[start].start, toks[start].start, "::mpsk_rt::store(")
            self.replace(t.start, t.end, ",")
            self.replace(toks[i + 1].end, toks[i + 1].end, ")")

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
            if text in (")", "]", "}"):
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
            while k + 2 < len(toks) and toks[k + 1].text == "::" and toks[k + 2].kind == "ident":
                k += 2  # `c10::metal::ErrorMessage` -> ErrorMessage
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
        return nxt in ("{", ";", "->", "const", "volatile", "noexcept", "=", "thread", *SPACES) or toks[
            i + 1
        ].kind == "attr_open"

    def drop_this_qualifier(self, i: int) -> None:
        """`T f() const device {...}` -> `T f() const {...}`; a second definition that differed only
        in that qualifier is removed whole."""
        toks = self.toks
        t = toks[i]
        k = i - 1
        has_const = False
        while toks[k].text != ")":
            has_const |= toks[k].text == "const"
            k -= 1
        has_const |= any(toks[j].text == "const" for j in range(i + 1, min(i + 3, len(toks))))
        self.replace(t.start, t.end, "" if has_const or t.text != "constant" else "const")
        close = k
        open_ = self.match_open(close, "(", ")")
        start = open_
        depth = 0
        while start > 0:
            text = toks[start - 1].text
            if text in (")", "]", ">"):
                depth += 1
            elif text in ("(", "[", "<"):
                depth -= 1
            if depth == 0 and text in (";", "{", "}", ":") and not (text == ":" and toks[start - 2].text == ":"):
                break
            start -= 1
        end = i + 1
        while end < len(toks) and toks[end].text not in ("{", ";"):
            end += 1
        if end < len(toks) and toks[end].text == "{":
            end = self.match_close(end, "{", "}")
        signature = " ".join(x.text for x in toks[start : close + 1]) + (
            " const" if has_const or t.text == "constant" else ""
        )
        scope = self.enclosing_brace(start)
        body = " ".join(x.text for x in toks[i + 1 : end + 1])
        kept = self._methods.get((scope, signature))
        if kept is None:
            self._methods[(scope, signature)] = body
        elif kept == body:
            self.blank(toks[start].start, toks[end].end)
        else:
            raise self.error(
                toks[open_ - 1],
                f"'{toks[open_ - 1].text}' is overloaded on the address space of 'this' with different "
                f"bodies; the emulator drops that qualifier for class types and cannot tell the overloads "
                f"apart (give them one body, or different names)",
            )

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
