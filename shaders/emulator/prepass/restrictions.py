"""What Metal's C++ dialect leaves out, refused before clang sees the source.

The kernel is compiled as host C++, where all of these work; on a Mac they do not compile
(MSL specification, "Metal and C++": no lambdas before Metal 3.2, recursion, goto, new and
delete, exceptions, virtual functions, thread_local, the C standard library; program-scope
variables must be `constant`), so a kernel that uses them would pass here and fail there.
Where Metal and this check could differ, the check is the stricter: a static local must be
`constexpr` or `constant`, and a function pointer may be a template argument (llama.cpp's
dequantizers) or a parameter (c10's atomic helpers), never a variable. Recursion is found on a call graph of
the source's own non-template functions, keyed by name and argument count; overloads that
share both are left out, so it can miss recursion, never report what is not.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .source import Pass, Source, tokenize

# C library functions the emulator's runtime headers declare (<stdio.h>, <string.h>, <signal.h>,
# <setjmp.h>, <sys/mman.h>, <ucontext.h> and what they pull in), and the C library's allocation,
# process and single-precision math names: none exists in Metal.
_LIBC = """
abort access alarm atexit atof atoi atol bcmp bcopy bsearch bzero calloc chdir close dprintf dup dup2
execl execle execlp execv execve execvp exit _exit fclose fdopen feof ferror fflush fgetc fgets fileno
fopen fork fprintf fputc fputs fread free freopen fscanf fseek ftell fwrite getc getchar getcwd getenv
getline getpid gets kill longjmp lseek makecontext malloc memccpy memchr memcmp memcpy memmem memmove
memset mmap mprotect munmap open perror pipe popen pclose printf putc putchar puts qsort raise rand read
realloc remove rename rewind scanf setjmp siglongjmp sigsetjmp signal sigaction sleep snprintf sprintf
srand sscanf stpcpy strcat strchr strcmp strcpy strcspn strdup strerror strlen strncat strncmp strncpy
strndup strnlen strpbrk strrchr strspn strstr strtod strtof strtok strtol strtoul swapcontext syscall
system tmpfile ungetc unlink usleep vfprintf vprintf vsnprintf vsprintf write
"""
# Metal spells these without the C library's `f` suffix (and has no `l` forms at all).
_MATH = """
acos acosh asin asinh atan atan2 atanh cbrt ceil copysign cos cosh erf erfc exp exp2 expm1 fabs fdim
floor fma fmax fmin fmod frexp hypot ldexp lgamma log log10 log1p log2 modf nearbyint nextafter pow
remainder rint round sin sinh sqrt tan tanh tgamma trunc
"""
LIBC_NAMES = frozenset(_LIBC.split()) | {f"{m}{s}" for m in _MATH.split() for s in ("f", "l")}
_METAL_SPELLING = {f"{m}{s}": m for m in _MATH.split() for s in ("f", "l")}

# Words after which `name(` is not a call (a declaration, or a construct that only looks like one).
_NOT_CALLS = frozenset(
    [
        "if", "for", "while", "switch", "return", "sizeof", "alignof", "decltype", "static_assert", "catch",
        "operator", "new", "delete", "alignas", "noexcept", "throw", "using", "typedef", "template",
    ]
)
# Tokens after which `[` starts a lambda rather than a subscript or an array declarator.
_LAMBDA_AFTER = frozenset(
    ["=", "(", ",", "{", ";", "}", "?", ":", "return", "&&", "||", "!", "+", "-", "*", "/", "<", ">", "==", "!=",
     "<=", ">="]
)
LAMBDAS_FROM = 320


@functools.cache
def _library_names() -> frozenset[str]:
    """The names in the compatibility layer's headers: Metal's functions among them, whose unqualified
    calls from a kernel's helper of the same name are not recursion."""
    include = Path(__file__).parent.parent / "include"
    names: set[str] = set()
    for path in include.rglob("*"):
        if path.is_file():  # many are declared through macros, so every name of two letters or more
            names.update(t.text for t in tokenize(path.read_text()) if t.kind == "ident" and len(t.text) > 1)
    return frozenset(names)


class Restrictions(Pass):
    """Raises SyntaxError naming the first construct of the source that Metal does not have."""

    def __init__(self, src: Source, metal_version: int = 310):
        super().__init__(src)
        self.metal_version = metal_version

    def run(self) -> None:
        toks = self.toks
        self.template_params = self._template_parameter_tokens()
        declared = self._declared_names()
        scopes: list[tuple[str, bool]] = [("ns", False)]  # (kind, inside a template)
        stmt = 0
        functions: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (name, arity) -> [(open, close)]
        templated: set[tuple[str, int]] = set()
        for i, t in enumerate(toks):
            kind, in_template = scopes[-1]
            self._check_token(i, t, kind, declared)
            if t.text == "{":
                if kind in ("func", "init"):
                    scopes.append((kind, in_template))
                    continue
                new = self._classify(stmt, i)
                tmpl = in_template or any(toks[k].text == "template" for k in range(stmt, i))
                if new == "func":
                    name = self._function_name(stmt, i)
                    if name is not None:
                        key = (toks[name].text, self._arity(name + 1))
                        functions.setdefault(key, []).append((i, self.match_close(i, "{", "}")))
                        if tmpl:
                            templated.add(key)
                scopes.append((new, tmpl))
                if new != "init":
                    stmt = i + 1
            elif t.text == "}":
                if len(scopes) > 1:  # an unbalanced '}' is clang's to report
                    scopes.pop()
                if kind != "init" and scopes[-1][0] != "func":
                    stmt = i + 1
            elif t.text == ";" and kind in ("ns", "class"):
                if kind == "ns":
                    self._check_program_scope(stmt, i)
                stmt = i + 1
            elif t.text == ";" and kind == "func":
                self._check_static_local(self.statement_start(i), i)
        self._check_recursion(functions, templated)

    def _check_token(self, i: int, t, scope: str, declared: set[str]) -> None:
        toks = self.toks
        if not t.text.isascii():
            bad = next(c for c in t.text if not c.isascii())
            raise self.error(t, f"non-ASCII character U+{ord(bad):04X} in '{t.text}': kernel source outside "
                                "comments must be ASCII")
        if t.kind != "ident":
            if t.text == "[" and self.metal_version < LAMBDAS_FROM and self._is_lambda(i):
                raise self.error(t, f"lambda expression: Metal has lambdas from Metal 3.2 (__METAL_VERSION__ "
                                    f"{LAMBDAS_FROM}) on, and kernels here compile as __METAL_VERSION__ "
                                    f"{self.metal_version}")
            if t.text == "(" and i not in self.template_params and self._is_function_pointer(i):
                raise self.error(t, "function pointer variable: Metal has no function pointer values outside "
                                    "[[visible]] functions (a function may be a parameter or a template argument)")
            return
        prev = toks[i - 1].text if i else ""
        nxt = toks[i + 1].text if i + 1 < len(toks) else ""
        word = t.text
        if word == "goto":
            raise self.error(t, "'goto' is not supported in Metal")
        if word in ("thread_local", "_Thread_local", "__thread"):
            raise self.error(t, f"'{word}': Metal has no thread-local storage")
        if word == "virtual":
            raise self.error(t, "'virtual': Metal has no virtual functions or virtual base classes")
        if word == "new" or (word == "delete" and not (prev == "=" and nxt == ";")):
            raise self.error(t, f"'{word}': Metal has no dynamic allocation (operators new and delete)")
        if word == "static" and scope == "func":
            return  # checked once its statement ends
        if word in LIBC_NAMES and nxt == "(" and prev not in (".", "->", "::") and word not in declared:
            hint = f" (Metal's is '{_METAL_SPELLING[word]}')" if word in _METAL_SPELLING else ""
            raise self.error(t, f"'{word}' is a C library function; Metal has no C library{hint}")

    def _template_parameter_tokens(self) -> set[int]:
        """Indices of the tokens inside `template <...>` parameter lists."""
        inside: set[int] = set()
        toks = self.toks
        for i, t in enumerate(toks):
            if t.text == "template" and i + 1 < len(toks) and toks[i + 1].text == "<":
                try:
                    close = self.angle_close(i + 1)
                except SyntaxError:
                    continue
                inside.update(range(i + 1, close + 1))
        return inside

    def _declared_names(self) -> set[str]:
        """Names the source declares as functions (`type name(`): its own, so not the C library's."""
        toks = self.toks
        out = set()
        for i in range(1, len(toks) - 1):
            t, prev = toks[i], toks[i - 1]
            if t.kind == "ident" and toks[i + 1].text == "(" and (
                (prev.kind == "ident" and prev.text not in _NOT_CALLS) or prev.text in ("*", "&", ">", "~")
            ):
                out.add(t.text)
        return out

    def _is_lambda(self, i: int) -> bool:
        toks = self.toks
        prev = toks[i - 1].text if i else ""
        if prev not in _LAMBDA_AFTER:
            return False
        try:
            close = self.match_close(i, "[", "]")
        except SyntaxError:
            return False
        return close + 1 < len(toks) and toks[close + 1].text in ("(", "{", "mutable", "->", "<")

    def _is_function_pointer(self, i: int) -> bool:
        """`(*name)(` or `(&name)(` outside any parentheses of its statement: a variable (or member)
        holding a function, or a call through one. As a parameter it is a function Metal's compiler
        resolves where the call is inlined (c10's atomic helpers take their operation so)."""
        texts = [t.text for t in self.toks[i : i + 5]]
        if not (len(texts) == 5 and texts[1] in ("*", "&") and self.toks[i + 2].kind == "ident"
                and texts[3] == ")" and texts[4] == "("):
            return False
        depth = 0
        for t in self.toks[self.statement_start(i) : i]:
            depth += (t.text == "(") - (t.text == ")")
        return depth == 0

    def _top(self, a: int, b: int) -> list[int]:
        """Indices in [a, b) outside any (), [] or template <> nesting, attributes skipped."""
        toks = self.toks
        out, k = [], a
        while k < b:
            text = toks[k].text
            if toks[k].kind == "attr_open":
                k = self.attr_end(k) + 1
                continue
            if text == "template" and k + 1 < b and toks[k + 1].text == "<":
                k = self.angle_close(k + 1) + 1
                continue
            if text in ("(", "["):
                out.append(k)
                k = self.match_close(k, text, ")" if text == "(" else "]") + 1
                continue
            out.append(k)
            k += 1
        return out

    def _classify(self, a: int, brace: int) -> str:
        """What the `{` at `brace` opens, from its statement's tokens a..brace-1 at namespace or class scope."""
        toks = self.toks
        top = self._top(a, brace)
        words = [toks[k].text for k in top]
        if "namespace" in words or (words[:1] == ["extern"] and len(top) > 1 and toks[top[1]].kind == "string"):
            return "ns"
        for k in top:
            if toks[k].text == "=" and (k == 0 or toks[k - 1].text != "operator"):
                return "init"
        if any(w in ("struct", "class", "union", "enum") for w in words) and "(" not in words:
            return "class"
        return "func" if "(" in words else "init"

    def _function_name(self, a: int, brace: int) -> int | None:
        """Index of the name of the function whose body opens at `brace`."""
        for k in self._top(a, brace):
            if self.toks[k].text == "(" and k > a and self.toks[k - 1].kind == "ident":
                return k - 1
        return None

    def _arity(self, open_: int) -> int:
        """Number of arguments (or parameters) in the parentheses opening at `open_`."""
        close = self.match_close(open_, "(", ")")
        if close == open_ + 1 or (close == open_ + 2 and self.toks[open_ + 1].text == "void"):
            return 0
        depth, n = 0, 1
        for k in range(open_ + 1, close):
            text = self.toks[k].text
            if text in ("(", "[", "{"):
                depth += 1
            elif text in (")", "]", "}"):
                depth -= 1
            elif text == "," and depth == 0:
                n += 1
        return n

    def _check_program_scope(self, a: int, end: int) -> None:
        """A variable declared at program scope must be `constant` (or constexpr): Metal has no
        writable program-scope variables."""
        toks = self.toks
        if a >= end or toks[a].kind == "attr_open":
            return
        first = toks[a].text
        if first in ("typedef", "using", "static_assert", "namespace", "template", "extern", "friend", "struct",
                     "class", "union", "enum", "typename") or first.startswith("#"):
            return
        top = self._top(a, end)
        before_init = [k for k in top if toks[k].text not in ("=",)]
        eq = next((k for k in top if toks[k].text == "="), end)
        if any(toks[k].text == "(" for k in before_init if k < eq):
            return  # a function declaration
        words = {toks[k].text for k in range(a, end)}
        if words & {"constant", "constexpr"}:
            return
        names = [toks[k] for k in top if k < eq and toks[k].kind == "ident"]
        if len(names) < 2 and not (len(names) == 1 and a > 0 and toks[a - 1].text == "}"):
            return
        raise self.error(toks[a], f"program-scope variable '{names[-1].text}' must be declared in the constant "
                                  "address space: Metal has no writable program-scope variables")

    def _check_static_local(self, a: int, end: int) -> None:
        words = {t.text for t in self.toks[a:end]}
        if "static" in words and not words & {"constexpr", "constant"}:
            raise self.error(self.toks[a], "static local variable: Metal has none (a static local must be "
                                           "constexpr or in the constant address space)")

    def _check_recursion(self, functions: dict, templated: set) -> None:
        toks = self.toks
        library = _library_names()
        defined = {key: spans[0] for key, spans in functions.items()
                   if len(spans) == 1 and key not in templated and key[0] not in library}
        calls: dict[tuple[str, int], list[tuple[tuple[str, int], int]]] = {}
        for key, (open_, close) in defined.items():
            for k in range(open_ + 1, close):
                t = toks[k]
                if t.kind != "ident" or toks[k + 1].text != "(" or toks[k - 1].text in (".", "->", "::"):
                    continue
                if toks[k - 1].kind == "ident" and toks[k - 1].text not in ("return", "else", "do"):
                    continue  # a declaration (`float4 v(a, b)`), not a call
                callee = (t.text, self._arity(k + 1))
                if callee in defined:
                    calls.setdefault(key, []).append((callee, k))
        state: dict[tuple[str, int], int] = {}

        def visit(key, path):
            state[key] = 1
            for callee, site in calls.get(key, ()):
                if state.get(callee) == 1:
                    cycle = [*path[path.index(callee):], callee] if callee in path else [key, callee]
                    chain = " -> ".join(name for name, _ in cycle)
                    raise self.error(toks[site], f"recursive call ({chain}): Metal has no recursion")
                if callee not in state:
                    visit(callee, [*path, callee])
            state[key] = 2

        for key in defined:
            if key not in state:
                visit(key, [key])
