"""The C++ table appended to a rewritten source: one launcher, parameter description and
threadgroup-memory size per host name, behind the `mpsk_*` C functions the host calls."""

from __future__ import annotations

from .function_constants import FunctionConstant
from .signatures import Entry

_KINDS = {"buffer": 0, "attribute": 1, "threadgroup": 2}  # mpsk_rt::ParamKind


def entry_table(entries: list[Entry], constants: list[FunctionConstant] = ()) -> str:
    lines = ['\n#line 1 "<mpsk kernel entries>"']
    rows = []
    for n, e in enumerate(entries):
        fn = e.address or "::" + e.kernel.name + (f"<{e.template_args}>" if e.template_args is not None else "")
        specs = ", ".join(
            f"{{{_KINDS[p.kind]}, {p.index}, {int(p.optional)}, {p.space}}}" for p in e.kernel.params
        ) or "{0, 0, 0, 0}"
        tg = (
            f"__mpsk_tgmem_{e.kernel.uid}"
            + (f"<{e.template_args}>" if e.template_args is not None else "")
            + "()"
            if e.kernel.threadgroup_vars and e.address is None
            else "0ul"  # a deduced instantiation's arguments are unknown here: its size is reported as 0
        )
        lines += [
            f"static const ::mpsk_rt::Spec __mpsk_spec_{n}[] = {{{specs}}};",
            f"static_assert(::mpsk_rt::arity(&{fn}) == {len(e.kernel.params)}, "
            f'"kernel {e.host_name}: parameter count");',
            f"static void __mpsk_entry_{n}(void** __mpsk_bufs) "
            f"{{ ::mpsk_rt::invoke(&{fn}, __mpsk_bufs, __mpsk_spec_{n}); }}",
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
        f"MPSK_EXPORT int mpsk_num_entries() {{ return {len(entries)}; }}",
        "MPSK_EXPORT const char* mpsk_entry_name(int e) { return __mpsk_entries[e].name; }",
        "MPSK_EXPORT int mpsk_entry_nparams(int e) { return __mpsk_entries[e].nparams; }",
        "MPSK_EXPORT unsigned long mpsk_entry_tgmem(int e) { return __mpsk_entries[e].tgmem; }",
        "MPSK_EXPORT int mpsk_entry_max_threads(int e) { return __mpsk_entries[e].max_threads; }",
        "MPSK_EXPORT void mpsk_entry_params(int e, ::mpsk_rt::ParamInfo* out) "
        "{ __mpsk_entries[e].describe(out); }",
        f"MPSK_EXPORT int mpsk_num_function_constants() {{ return {len(constants)}; }}",
        "static const struct { const char* name; int index; const char* type; } __mpsk_constants[] = {",
        *[f'  {{"{c.name}", {c.index}, "{c.type_text}"}},' for c in constants],
        '  {nullptr, 0, nullptr}',
        "};",
        "MPSK_EXPORT const char* mpsk_function_constant(int i, int* index, const char** type) "
        "{ *index = __mpsk_constants[i].index; *type = __mpsk_constants[i].type; return __mpsk_constants[i].name; }",
        "MPSK_EXPORT int mpsk_launch(int e, void** bufs, const unsigned* grid, const unsigned* group, "
        "const unsigned long* tg_params, int flags, char* err, int errlen) { return "
        "::mpsk_rt::launch(__mpsk_entries[e].fn, bufs, grid, group, tg_params, flags, err, errlen); }",
        "",
    ]
    return "\n".join(lines)
