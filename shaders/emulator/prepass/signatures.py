"""Kernel signatures: which functions are kernels, under which host names, and how the host
binds each parameter (buffer index or dispatch attribute); kernel-scope threadgroup arrays
become views of the group's shared arena, sized for static_thread_group_memory_length."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .names import DISPATCH_ATTRIBUTES
from .source import Pass, Source

MAX_THREADGROUP_PARAMS = 8  # mpsk_rt::kMaxThreadgroupParams
BINDING_ATTRIBUTES = frozenset(
    ["buffer", "threadgroup", "texture", "sampler", "function_constant", "stage_in", "user", "id"]
)


@dataclass
class Param:
    name: str
    type_text: str
    kind: str  # "buffer" or "attribute"
    index: int  # buffer index; for attributes, the position in DISPATCH_ATTRIBUTES
    attribute: str | None = None
    optional: bool = False  # a buffer behind a [[function_constant]] that is off

    @property
    def space(self) -> int:
        """The address space the declaration names: 1 device, 2 constant, 3 threadgroup, 0 thread."""
        words = set(re.findall(r"\w+", self.type_text))
        return next((n for n, w in ((1, "device"), (2, "constant"), (3, "threadgroup")) if w in words), 0)


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
    address: str | None = None  # the kernel's address, when its template arguments are deduced


def split_attrs(text: str) -> list[str]:
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


def host_name_of(attr: str) -> str | None:
    """The name in `host_name("a" "b")`, adjacent literals joined as MLX's macros produce them."""
    m = re.fullmatch(r'host_name\s*\(((?:\s*"[^"]*")+)\s*\)', attr)
    return "".join(re.findall(r'"([^"]*)"', m.group(1))) if m else None


class Declarations(Pass):
    """Walks namespace scopes for kernel definitions and explicit kernel instantiations."""

    def __init__(
        self,
        src: Source,
        class_names: set[str] | frozenset[str] = frozenset(),
        constants: dict[str, bool | int | float] | None = None,
    ):
        super().__init__(src)
        self.class_names = class_names
        self.constants = constants or {}
        self.kernels: list[Kernel] = []
        self.instantiations: list[tuple[str, str, str | None]] = []  # (host, name, args)
        self.addresses: dict[str, str] = {}  # host -> address expression, for deduced instantiations
        self.tg_sites = 0

    def run(self) -> list[Entry]:
        self.scan_declarations()
        self.strip_binding_attributes()
        return self.entries()

    def strip_binding_attributes(self) -> None:
        """Blanks Metal's binding and dispatch attributes wherever they stand outside kernel
        signatures (helper functions, function typedefs): Metal ignores them there, and clang
        would read `threadgroup` inside `[[threadgroup(0)]]` as the address-space macro."""
        toks = self.toks
        for i, t in enumerate(toks):
            if t.kind != "attr_open":
                continue
            j = self.attr_end(i)
            names = [re.match(r"\w+", a).group(0) for a in split_attrs(self.attr_text(i, j)) if re.match(r"\w+", a)]
            if names and all(n in BINDING_ATTRIBUTES or n in DISPATCH_ATTRIBUTES for n in names):
                self.blank(t.start, toks[j].end)

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
            if "kernel" in split_attrs(self.attr_text(i, j)):
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
                attrs += split_attrs(self.attr_text(i, j))
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
        host = next((h for a in attrs if (h := host_name_of(a)) is not None), None)
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
            if toks[k].text == "(" and toks[k - 1].text not in (">", ">>"):
                self.deduced_instantiation(host, k, end)
                self.blank(start, toks[end].end)
                return end + 1
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

    def deduced_instantiation(self, host: str, open_: int, end: int) -> None:
        """`template [[host_name("k1")]] [[kernel]] void k(device float*, constant P<1>*, ...);`:
        the template arguments come from the parameter types, so the entry takes the kernel's
        address through a cast to that function type, which instantiates it as C++ deduces."""
        toks = self.toks
        name = toks[open_ - 1].text
        k = open_ - 1
        while k >= 2 and toks[k - 1].text == "::" and toks[k - 2].kind == "ident":
            k -= 2
            name = toks[k].text + "::" + name
        close = self.match_close(open_, "(", ")")
        params = re.sub(r"\[\[.*?\]\]", " ", self.src.edited_span(toks[open_].end, toks[close].start), flags=re.S)
        self.instantiations.append((host, name, None))
        self.addresses[host] = f"(*static_cast<void (*)({' '.join(params.split())})>(&::{name}))"

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
            if host_name_of(a) is not None:
                host = host_name_of(a)
        ns = "::".join(n for n in ns_stack if n)
        qual = f"{ns}::{name_tok.text}" if ns else name_tok.text
        header = self.span(*template_header) if template_header else None
        kernel = Kernel(qual, header, params, tg_vars, max_threads, len(self.kernels), host)
        self.kernels.append(kernel)
        if tg_vars:
            sizes = " + ".join(f"::mpsk_rt::round16(sizeof({ty}{dims}))" for ty, dims in tg_vars)
            local = " ".join(self.compile_time_locals(b, body_end, " ".join(t + d for t, d in tg_vars)))
            fn = (
                f" {header or ''} inline unsigned long __mpsk_tgmem_{kernel.uid}() "
                f"{{ {local} return {sizes}; }}"
            )
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
            attrs = split_attrs(attr)
            m = re.fullmatch(r"buffer\s*\(\s*(\d+)\s*\)", attrs[0])
            gate = next((re.fullmatch(r"function_constant\s*\(\s*(\w+)\s*\)", a) for a in attrs[1:]), None)
            if m and (len(attrs) == 1 or (len(attrs) == 2 and gate)):
                idx = int(m.group(1))
                if idx in used:
                    raise self.error(toks[plain[-1]], f"kernel '{kname}' uses [[buffer({idx})]] twice")
                used.add(idx)
                optional = gate is not None and not self.constants.get(gate.group(1), False)
                params.append(Param(name, type_text, "buffer", idx, optional=optional))
            elif len(attrs) == 1 and attr in DISPATCH_ATTRIBUTES:
                params.append(
                    Param(name, type_text, "attribute", DISPATCH_ATTRIBUTES.index(attr), attr)
                )
            elif len(attrs) == 1 and (tg := re.fullmatch(r"threadgroup\s*\(\s*(\d+)\s*\)", attr)):
                k = int(tg.group(1))
                if k >= MAX_THREADGROUP_PARAMS:
                    raise self.error(
                        toks[plain[-1]],
                        f"kernel '{kname}': [[{attr}]]: the emulator takes threadgroup memory indices "
                        f"below {MAX_THREADGROUP_PARAMS}",
                    )
                if "threadgroup" not in type_text:
                    raise self.error(toks[plain[-1]], f"kernel '{kname}': [[{attr}]] needs a threadgroup pointer")
                params.append(Param(name, type_text, "threadgroup", k))
            else:
                raise self.error(toks[plain[-1]], f"kernel '{kname}': unsupported attribute [[{attr}]]")
        nxt = 0
        for pos, _name, _type in pending:
            while nxt in used:
                nxt += 1
            params[pos].index = nxt
            used.add(nxt)
        return params

    @staticmethod
    def base_name(type_text: str) -> str:
        """`const metal::array<float, 4>` -> `array`: the name a type's spelling ends in."""
        words = re.findall(r"[A-Za-z_]\w*", type_text.split("<", 1)[0])
        words = [w for w in words if w not in ("const", "volatile", "struct", "metal")]
        return words[-1] if words else ""

    def compile_time_locals(self, body_start: int, body_end: int, sizes: str) -> list[str]:
        """The kernel body's top-level statements that threadgroup array sizes depend on
        (`constexpr int N = 32; threadgroup float s[N];`, typedefs, `using` aliases, and a plain
        `Tile t;` whose `decltype(t)` a size names), copied into the size function, which stands
        outside the body. Statements the sizes do not need stay out, since they may name
        run-time values."""
        toks = self.toks
        statements: list[tuple[str, set[str], str]] = []  # (declared name, names used, text)
        k = body_start + 1
        while k < body_end:
            t = toks[k]
            if t.text == "{":
                k = self.match_close(k, "{", "}") + 1
                continue
            if toks[k - 1].text not in ("{", ";", "}"):
                k += 1
                continue
            end = k
            depth = 0
            while end < body_end and not (toks[end].text in (";", "{") and depth == 0):
                depth += toks[end].text in ("(", "[")
                depth -= toks[end].text in (")", "]")
                end += 1
            if end < body_end and toks[end].text == "{":  # `for (...) {`, `if (...) {`: not a declaration
                k = end
                continue
            words = [x.text for x in toks[k:end] if x.kind == "ident"]
            declared = self.declared_name(k, end)
            if declared is not None:
                statements.append((declared, set(words), self.span(k, end).replace("\n", " ")))
            k = end + 1
        needed = set(re.findall(r"[A-Za-z_]\w*", sizes))
        keep: set[int] = set()
        changed = True
        while changed:
            changed = False
            for n, (name, used, _) in enumerate(statements):
                if n not in keep and name in needed:
                    keep.add(n)
                    needed |= used
                    changed = True
        return [text for n, (_, _, text) in enumerate(statements) if n in keep]

    def declared_name(self, start: int, end: int) -> str | None:
        """The name a body statement declares, if it is one the size function may copy:
        `constexpr T N = ...;`, `typedef ... X;`, `using X = ...;`, or `T t;` (no initializer)."""
        toks = self.toks
        first = toks[start].text
        if first == "using" and end - start >= 3 and toks[start + 2].text == "=":
            return toks[start + 1].text
        if first == "typedef" and toks[end - 1].kind == "ident":
            return toks[end - 1].text
        words = [t.text for t in toks[start:end]]
        if "constexpr" in words[:3] and "=" in words:
            eq = words.index("=")
            return words[eq - 1] if toks[start + eq - 1].kind == "ident" else None
        plain_declaration = end - start >= 2 and toks[end - 1].kind == "ident" and "=" not in words
        if plain_declaration and "(" not in words and first not in ("return", "threadgroup", "device", "constant"):
            return toks[end - 1].text
        return None

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
                init = None
                eq = next((n for n, d in enumerate(dims_toks) if toks[d].text == "="), None)
                if eq is not None:
                    init = self.text[toks[dims_toks[eq + 1]].start : toks[dims_toks[-1]].end]
                    dims_toks = dims_toks[:eq]
                dims = "".join(toks[d].text for d in dims_toks)
                site = self.tg_sites
                self.tg_sites += 1
                found.append((type_text, dims))
                ref = f"(&{name_tok.text}){dims}" if dims else f"&{name_tok.text}"
                ptr = f"(*){dims}" if dims else "*"
                # A class type loses its address space (see address_spaces.py); the rest keep it.
                space = "" if self.base_name(type_text) in self.class_names else "threadgroup "
                out.append(
                    f"{space}{type_text} {ref} = *({space}{type_text} {ptr})"
                    f"::mpsk_rt::tg_alloc({site}, sizeof({type_text}{dims}), \"{name_tok.text}\");"
                )
                if init is not None:
                    # Metal accepts an initializer (MLX writes `threadgroup float buf[32] = {0};`):
                    # the group's storage starts with it, set once, when the first thread allocates.
                    tmp = f"__mpsk_init_{site}"
                    out.append(
                        f"if (::mpsk_rt::tg_fresh({site})) {{ {type_text} {tmp}{dims} = {init}; "
                        f"__builtin_memcpy((void*)(unsigned long)&{name_tok.text}, &{tmp}, sizeof {tmp}); }}"
                    )
            self.replace(t.start, toks[end].end, " ".join(out))
            k = end + 1
        return found

    def entries(self) -> list[Entry]:
        """One entry per host name: non-template kernels, then explicit instantiations."""
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
                raise SyntaxError(f"{self.src.filename}: instantiation '{host}' names no kernel '{name}'")
            entries.append(Entry(host, kern, args, self.addresses.get(host)))
        hosts = [e.host_name for e in entries]
        dup = {h for h in hosts if hosts.count(h) > 1}
        if dup:
            raise SyntaxError(f"{self.src.filename}: kernel name(s) defined twice: {sorted(dup)}")

        return entries
