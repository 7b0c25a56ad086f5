"""The explain report: plain dataclasses with three renderings (text, JSON, HTML).

The JSON form is the reference: `to_dict` produces it, `schema.json` in this
package documents and validates it, and the text and HTML forms render the same
fields, so the three never disagree.
"""

from __future__ import annotations

import dataclasses
import html
import json
import linecache
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema.json")
CONTEXT_LINES = 3


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that `Report.to_json()` output validates against."""
    return json.loads(SCHEMA_PATH.read_text())


@dataclass
class SourceContext:
    start: int  # line number of lines[0]
    lines: list[str]


@dataclass
class Location:
    file: str
    line: int
    function: str | None = None
    context: SourceContext | None = None

    @classmethod
    def at(cls, file: str, line: int, function: str | None = None) -> Location:
        """A location with the source lines around it, read now (the file may change before rendering)."""
        start = max(1, line - CONTEXT_LINES)
        lines = [linecache.getline(file, n).rstrip("\n") for n in range(start, line + CONTEXT_LINES + 1)]
        while lines and not lines[-1]:
            lines.pop()
        ctx = SourceContext(start, lines) if any(lines) else None
        return cls(file, line, function, ctx)

    def short(self) -> str:
        where = f"{os.path.basename(self.file)}:{self.line}"
        return f"{where} in {self.function}" if self.function else where

    def code(self) -> str | None:
        """The text of the line itself."""
        if self.context is None:
            return None
        i = self.line - self.context.start
        return self.context.lines[i].strip() if 0 <= i < len(self.context.lines) else None


@dataclass
class GraphBreak:
    category: str  # print | logging | item | data_dependent_branch | explicit | unsupported_builtin | other
    type: str  # Dynamo's graph-break type (gb_type)
    reason: str  # Dynamo's full message
    explanation: str
    hint: str | None
    dynamo_hints: list[str]
    location: Location | None
    compile_ids: list[str]
    occurrences: int = 1


@dataclass
class Recompilation:
    compile_id: str
    function: str
    location: Location | None
    guard_failures: list[str]
    hint: str | None = None


@dataclass
class Replacement:
    kind: str
    location: Location | None
    detail: str | None = None


@dataclass
class NearMiss:
    kind: str
    reason: str
    location: Location | None
    detail: str | None = None


@dataclass
class Graph:
    compile_id: str
    function: str | None
    location: Location | None
    op_count: int | None
    aten_op_count: int | None = None
    replacements: list[Replacement] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)


@dataclass
class Hazard:
    kind: str  # float64 | complex | no_mps_kernel
    where: str  # input | parameter | buffer | graph
    name: str
    message: str
    dtype: str | None = None
    op: str | None = None
    location: Location | None = None

    def key(self) -> tuple:
        """Identity for de-duplication: one value seen at the Dynamo and ATen stages is one hazard."""
        if self.location is not None and self.where == "graph":
            return (self.kind, self.where, self.location.file, self.location.line, self.dtype or self.op)
        return (self.kind, self.where, self.name, self.dtype, self.op)


@dataclass
class Report:
    backend: str
    target: str
    torch_version: str
    compilations: int
    graph_breaks: list[GraphBreak]
    recompilations: list[Recompilation]
    graphs: list[Graph]
    hazards: list[Hazard]
    notes: list[str]

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"schema_version": SCHEMA_VERSION, **d, "graph_break_count": len(self.graph_breaks),
                "recompilation_count": len(self.recompilations)}

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON; validates against `load_schema()` (schema.json in this package)."""
        return json.dumps(self.to_dict(), indent=indent)

    # ------------------------------------------------------------ text
    def summary_line(self) -> str:
        def n(k: int, word: str) -> str:
            return f"{k} {word}{'' if k == 1 else 's'}"

        return ", ".join([n(len(self.graph_breaks), "graph break"), n(len(self.graphs), "graph"),
                          n(len(self.recompilations), "recompilation"), n(len(self.hazards), "MPS hazard")])

    def __str__(self) -> str:
        out = [f"mpsk explain: {self.target or '(all compilations)'}",
               f"backend: {self.backend}; torch {self.torch_version}; {self.compilations} Dynamo compilation(s)",
               self.summary_line(), ""]
        out.append(f"Graph breaks ({len(self.graph_breaks)})")
        for i, b in enumerate(self.graph_breaks, 1):
            where = b.location.short() if b.location else "(location unknown)"
            times = f", {b.occurrences} times" if b.occurrences > 1 else ""
            out.append(f"  {i}. {where} [{b.category}{times}] {b.type}")
            if b.location and b.location.code():
                out.append(f"       > {b.location.code()}")
            if b.explanation:
                out.append(f"       {b.explanation}")
            if b.hint:
                out.append(f"       hint: {b.hint}")
        out += ["", f"Recompilations ({len(self.recompilations)})"]
        for r in self.recompilations:
            where = f" ({r.location.short()})" if r.location else ""
            out.append(f"  compile {r.compile_id}: {r.function}{where}")
            out += [f"       guard failed: {g}" for g in r.guard_failures]
            if r.hint:
                out.append(f"       hint: {r.hint}")
        out += ["", f"Graphs ({len(self.graphs)})"]
        for g in self.graphs:
            where = f" ({g.location.short()})" if g.location else ""
            aten = f", {g.aten_op_count} ATen ops" if g.aten_op_count is not None else ""
            ops = "?" if g.op_count is None else g.op_count
            out.append(f"  graph {g.compile_id}: {g.function or '?'}{where}: {ops} ops{aten}; "
                       f"{len(g.replacements)} replaced, {len(g.near_misses)} near misses")
            for r in g.replacements:
                out.append(f"       replaced {r.kind}" + (f" at {r.location.short()}" if r.location else "")
                           + (f" ({r.detail})" if r.detail else ""))
            for m in g.near_misses:
                out.append(f"       near miss {m.kind}" + (f" at {m.location.short()}" if m.location else "")
                           + f": {m.reason}")
        out += ["", f"MPS hazards ({len(self.hazards)})"]
        for h in self.hazards:
            what = " ".join(x for x in (h.dtype, h.op) if x)
            where = f" at {h.location.short()}" if h.location else ""
            out.append(f"  {h.kind}: {h.where} {h.name} ({what}){where}: {h.message}")
        if self.notes:
            out += ["", "Notes"] + [f"  - {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------ HTML
    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Writes one self-contained page (inline CSS, no scripts, no network) and returns its path."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"to_html(path) needs a file path, got {type(path).__name__}")
        p = Path(path)
        if p.is_dir():
            raise IsADirectoryError(f"to_html: {p} is a directory; give a file name such as {p / 'report.html'}")
        try:
            p.write_text(render_html(self), encoding="utf-8")
        except OSError as e:
            raise OSError(e.errno, f"cannot write the HTML report to {p}: {e.strerror}") from e
        return p


# ---------------------------------------------------------------- HTML rendering

_CSS = """
body{font-family:-apple-system,system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.summary{background:#f4f6f8;padding:.6em 1em;border-radius:6px}
.item{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;margin:.7em 0}
.tag{display:inline-block;background:#e3e8ef;border-radius:4px;padding:0 .4em;font-size:.85em;margin-right:.4em}
.hint{color:#05570f}.muted{color:#666;font-size:.9em}
pre{background:#fafafa;border:1px solid #eee;padding:.4em;overflow-x:auto;font-size:.85em;margin:.4em 0}
pre .hl{background:#fff3b0;display:block}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left;vertical-align:top}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _source_html(loc: Location | None) -> str:
    if loc is None:
        return ""
    head = f'<div class="muted">{_e(loc.file)}:{loc.line}' + (f" in {_e(loc.function)}" if loc.function else "")
    head += "</div>"
    if loc.context is None:
        return head
    rows = []
    for i, text in enumerate(loc.context.lines):
        n = loc.context.start + i
        line = f"{n:>5}  {_e(text)}"
        rows.append(f'<span class="hl">{line}</span>' if n == loc.line else line + "\n")
    return head + "<pre>" + "".join(rows) + "</pre>"


def render_html(r: Report) -> str:
    parts = [f"<h1>mpsk explain: {_e(r.target or '(all compilations)')}</h1>",
             f'<p class="summary">{_e(r.summary_line())}<br><span class="muted">backend: {_e(r.backend)}; '
             f"torch {_e(r.torch_version)}; {r.compilations} Dynamo compilation(s)</span></p>"]
    parts.append(f'<h2 id="breaks">Graph breaks ({len(r.graph_breaks)})</h2>')
    for i, b in enumerate(r.graph_breaks, 1):
        times = f" ({b.occurrences} times)" if b.occurrences > 1 else ""
        where = b.location.short() if b.location else "location unknown"
        parts.append(f'<div class="item break"><b>{i}. {_e(where)}</b> <span class="tag">{_e(b.category)}</span>'
                     f"{_e(b.type)}{_e(times)}" + _source_html(b.location)
                     + (f"<div>{_e(b.explanation)}</div>" if b.explanation else "")
                     + (f'<div class="hint">Hint: {_e(b.hint)}</div>' if b.hint else "")
                     + f'<details><summary class="muted">Dynamo\'s message</summary><pre>{_e(b.reason)}</pre>'
                     "</details></div>")
    parts.append(f'<h2 id="recompilations">Recompilations ({len(r.recompilations)})</h2>')
    for rc in r.recompilations:
        parts.append(f'<div class="item recompile"><b>compile {_e(rc.compile_id)}: {_e(rc.function)}</b>'
                     + "".join(f"<div>guard failed: <code>{_e(g)}</code></div>" for g in rc.guard_failures)
                     + (f'<div class="hint">Hint: {_e(rc.hint)}</div>' if rc.hint else "")
                     + _source_html(rc.location) + "</div>")
    parts.append(f'<h2 id="graphs">Graphs ({len(r.graphs)})</h2>')
    for g in r.graphs:
        aten = f", {g.aten_op_count} ATen ops" if g.aten_op_count is not None else ""
        ops = "?" if g.op_count is None else g.op_count
        body = [f'<div class="item graph"><b>graph {_e(g.compile_id)}: {_e(g.function or "?")}</b> '
                f'<span class="muted">{_e(ops)} ops{_e(aten)}</span>']
        if g.location:
            body.append(f'<div class="muted">{_e(g.location.short())}</div>')
        for rp in g.replacements:
            body.append(f'<div class="replacement"><span class="tag">replaced</span>{_e(rp.kind)}'
                        + (f" ({_e(rp.detail)})" if rp.detail else "") + _source_html(rp.location) + "</div>")
        for m in g.near_misses:
            body.append(f'<div class="near-miss"><span class="tag">near miss</span>{_e(m.kind)}: {_e(m.reason)}'
                        + (f" ({_e(m.detail)})" if m.detail else "") + _source_html(m.location) + "</div>")
        parts.append("".join(body) + "</div>")
    parts.append(f'<h2 id="hazards">MPS hazards ({len(r.hazards)})</h2>')
    if r.hazards:
        rows = "".join(f"<tr><td>{_e(h.kind)}</td><td>{_e(h.where)}</td><td>{_e(h.name)}</td>"
                       f"<td>{_e(' '.join(x for x in (h.dtype, h.op) if x))}</td>"
                       f"<td>{_e(h.location.short()) if h.location else ''}</td><td>{_e(h.message)}</td></tr>"
                       for h in r.hazards)
        parts.append("<table><tr><th>kind</th><th>where</th><th>name</th><th>dtype / op</th><th>source</th>"
                     f"<th>why</th></tr>{rows}</table>")
    if r.notes:
        parts.append('<h2 id="notes">Notes</h2><ul>' + "".join(f"<li>{_e(n)}</li>" for n in r.notes) + "</ul>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>mpsk explain: {_e(r.target or 'report')}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
