"""Collects what Dynamo and the mpsk passes report during compilation.

Graph breaks, recompilations and the tensors Dynamo guards on come from Dynamo's
structured trace (`torch._logging.trace_structured`, logger ``torch.__trace``):
it is emitted for every backend, including breaks that leave no graph behind,
and it is what tlparse reads, so it is the most complete public record in 2.13.
Graph contents (graph-value dtypes, ATen ops) and the pattern passes' replacements
and near misses arrive through `record_graph` / `record_replacement` /
`record_near_miss`, keyed by Dynamo's compile id (``frame/attempt``, e.g. ``1/0``),
which stays current through AOTAutograd and Inductor inside one compilation.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import report as R

TRACE_LOGGER = "torch.__trace"
UNKNOWN_COMPILE = "unknown"
HAZARD_DTYPES = {torch.float64: "float64", torch.complex64: "complex", torch.complex128: "complex",
                 torch.complex32: "complex"}

_lock = threading.Lock()
_active: list[Collector] = []


def current_compile_id() -> str:
    """Dynamo's id for the compilation in progress (``"frame/attempt"``), or ``"unknown"``."""
    cid = torch._guards.CompileContext.current_compile_id()
    return UNKNOWN_COMPILE if cid is None else f"{cid.frame_id}/{cid.frame_compile_id}"


def _compile_id_from(metadata: Mapping[str, Any]) -> str:
    if "frame_id" in metadata and "frame_compile_id" in metadata:
        return f"{metadata['frame_id']}/{metadata['frame_compile_id']}"
    return UNKNOWN_COMPILE


# ---------------------------------------------------------------- graph-break parsing

_RESUME = re.compile(r"^torch_dynamo_resume_in_(.+)_at_\d+$")
_FRAME = re.compile(r'^\s*File "(?P<file>.+)", line (?P<line>\d+), in (?P<fn>.+)$', re.M)
_TORCH_DIR = str(__import__("pathlib").Path(torch.__file__).parent)
_PKG_DIR = str(__import__("pathlib").Path(__file__).parents[1])


def user_function(name: str) -> str:
    """The user's function name behind a Dynamo resume function (``torch_dynamo_resume_in_f_at_12`` -> ``f``)."""
    m = _RESUME.match(name)
    return m.group(1) if m else name


def is_user_file(path: str) -> bool:
    """Whether a frame belongs to the user rather than torch, this package or the interpreter."""
    return not (path.startswith((_TORCH_DIR, _PKG_DIR, "<")) or "/torch/" in path)


@dataclass
class _Break:
    gb_type: str
    reason: str
    explanation: str
    dynamo_hints: list[str]
    file: str | None
    line: int | None
    function: str | None


def parse_graph_break(payload: str) -> _Break:
    """Parses Dynamo's ``dynamo_graph_break_reason`` artifact (symbolic_convert.log_graph_break)."""
    head, _, rest = payload.partition("\n")
    m = re.match(r"^Graph break in user code at (.*):(\d+)$", head)
    file, line = (m.group(1), int(m.group(2))) if m else (None, None)
    reason = rest.removeprefix("Graph Break Reason: ")
    for stop in ("\n\nStack variable source attribution", "\n\nUser code traceback:", "\nTraceback (most recent"):
        reason = reason.split(stop, 1)[0]
    if not m:  # another producer (exc.unimplemented_with_warning): the payload is the message itself
        reason = payload.split("\nTraceback (most recent", 1)[0]
    user_tb = payload.split("User code traceback:", 1)[1] if "User code traceback:" in payload else ""
    user_tb = user_tb.split("\nTraceback (most recent", 1)[0]
    function = None
    frames = [f for f in _FRAME.finditer(user_tb) if is_user_file(f.group("file"))]
    if frames:  # innermost user frame: the line that broke, even when the break is inside torch code it called
        file, line, function = frames[-1].group("file"), int(frames[-1].group("line")), frames[-1].group("fn")
    lines = reason.splitlines()
    gb_type = next((lines[i - 1].strip() for i in range(1, len(lines)) if lines[i].startswith("  Explanation:")),
                   lines[0].strip() if lines else "")
    explanation = next((ln.split("Explanation:", 1)[1].strip() for ln in lines if ln.startswith("  Explanation:")), "")
    hints = [ln.split("Hint:", 1)[1].strip() for ln in lines if ln.startswith("  Hint:")]
    return _Break(gb_type, reason.strip(), explanation, hints, file, line,
                  user_function(function) if function else None)


# (category, test on gb_type + explanation, hint). First match wins; the hint is ours, Dynamo's follow it.
_BREAK_KINDS: list[tuple[str, Any, str]] = [
    ("print", lambda t, e: "`print`" in e or "builtin `print`" in e,
     "print() inside compiled code splits the graph. Remove it, guard it with "
     "`if not torch.compiler.is_compiling():`, or add print to "
     "torch._dynamo.config.reorderable_logging_functions."),
    ("logging", lambda t, e: "logging" in e.lower() and "logger" in e.lower(),
     "A logging call splits the graph: move it outside the compiled function or add the function to "
     "torch._dynamo.config.reorderable_logging_functions."),
    ("item", lambda t, e: "Tensor.item()" in t or "Tensor.item()" in e,
     ".item() copies a value to the host (a GPU sync on MPS) and splits the graph. Keep the value a tensor "
     "(torch.where instead of `if`), or set torch._dynamo.config.capture_scalar_outputs = True."),
    ("data_dependent_branch", lambda t, e: "data-dependent" in t.lower() or "data-dependent" in e.lower(),
     "Python control flow on a tensor's value: use torch.where, or torch.cond for whole branches."),
    ("explicit", lambda t, e: "graph_break()" in e or "Call to `torch._dynamo.graph_break()`" in t,
     "An explicit torch._dynamo.graph_break() call."),
    ("unsupported_builtin", lambda t, e: "marked as skipped" in t or "builtin" in e.lower()
     or "C/C++" in e,
     "A builtin or C-extension function Dynamo cannot trace. Move the call outside the compiled region, or "
     "wrap it in a custom op (torch.library.custom_op) so it becomes one graph node."),
]


def classify_break(gb_type: str, explanation: str, dynamo_hints: list[str]) -> tuple[str, str | None]:
    """A category and our hint for a graph break; else Dynamo's first useful hint."""
    for category, test, hint in _BREAK_KINDS:
        if test(gb_type, explanation):
            return category, hint
    useful = [h for h in dynamo_hints if "report an issue" not in h.lower()]
    return "other", (useful[0] if useful else None)


def recompile_hint(reason: str) -> str | None:
    """A hint for the commonest guard failures."""
    if "size mismatch" in reason:
        return ("A tensor's shape changed. If it varies at run time, mark it dynamic "
                "(torch._dynamo.mark_dynamic(x, dim) or torch.compile(dynamic=True)).")
    if "dtype mismatch" in reason:
        return "A tensor's dtype changed: each dtype compiles its own graph."
    if "___check_obj_id" in reason or "id mismatch" in reason or "== " in reason:
        return "A Python value the graph specialized on changed; pass it as a tensor if it varies."
    return None


# ---------------------------------------------------------------- locations

def location_from_stack_trace(stack_trace: str | None) -> R.Location | None:
    """The innermost user frame of an FX node's ``meta['stack_trace']``."""
    if not stack_trace:
        return None
    frames = [f for f in _FRAME.finditer(stack_trace) if is_user_file(f.group("file"))]
    frames = frames or list(_FRAME.finditer(stack_trace))
    if not frames:
        return None
    f = frames[-1]
    return R.Location.at(f.group("file"), int(f.group("line")), user_function(f.group("fn").strip()))


def location_from_meta(node_meta: Any) -> R.Location | None:
    """Accepts an FX node, its ``meta`` dict, or None."""
    if node_meta is None:
        return None
    if isinstance(node_meta, torch.fx.Node):
        node_meta = node_meta.meta
    if not isinstance(node_meta, Mapping):
        raise TypeError(f"node_meta must be a torch.fx.Node, its .meta dict or None, got {type(node_meta).__name__}")
    return location_from_stack_trace(node_meta.get("stack_trace"))


_SOURCE_PART = re.compile(r"\._(?:modules|parameters|buffers)\['([^']+)'\]")


def pretty_source(source: str) -> str:
    """Dynamo's guard source as the user would write it: ``L['self']._modules['lin']._parameters['w']`` -> ``lin.w``."""
    s = re.sub(r"^[LG]\['([^']+)'\]", r"\1", source)
    s = _SOURCE_PART.sub(r".\1", s)
    return s.removeprefix("self.")


def _source_kind(source: str) -> str:
    if "_parameters[" in source:
        return "parameter"
    if "_buffers[" in source:
        return "buffer"
    return "input"


# ---------------------------------------------------------------- MPS kernels

def mps_dispatch_available() -> bool:
    """Whether this PyTorch build has MPS kernels registered, so the dispatcher can say which ops lack one
    (not so on the emulated mps device, whose MPS key runs every op through one CPU fallback)."""
    from ..emulated_mps import installed

    return bool(torch.backends.mps.is_built()) and not installed()


# Kernels written in terms of other ops, so they run wherever those do. Not
# CompositeExplicitAutogradNonFunctional: that one calls the backend's own out= kernel.
_COMPOSITE_KEYS = ("CompositeImplicitAutograd", "CompositeExplicitAutograd")


def has_mps_kernel(op: torch._ops.OpOverload) -> bool:
    """An MPS kernel, or a composite one that runs as other ops on any device."""
    name = op.name()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return has(name, "MPS") or any(has(name, k) for k in _COMPOSITE_KEYS)


# ---------------------------------------------------------------- the collector

@dataclass
class _GraphRecord:
    compile_id: str
    stages: dict[str, int] = field(default_factory=dict)  # stage -> op count
    replacements: list[R.Replacement] = field(default_factory=list)
    near_misses: list[R.NearMiss] = field(default_factory=list)


class _TraceHandler(logging.Handler):
    def __init__(self, collector: Collector) -> None:
        super().__init__(logging.DEBUG)
        self.collector = collector

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.collector._on_trace(getattr(record, "metadata", None) or {}, getattr(record, "payload", None))
        except Exception:  # a diagnostics bug must never break the user's compilation
            logging.getLogger(__name__).exception("mpsk diagnostics: failed to read a trace event")


class Collector:
    """Records compilations while active; `report()` turns the record into a `Report`.

    Use as a context manager (``with Collector("mpsk") as c: model(x)``) or with
    `start` / `stop`. Several may be active at once; each sees everything.
    """

    def __init__(self, backend: str, target: str = "") -> None:
        if not isinstance(backend, str) or not isinstance(target, str):
            raise TypeError("Collector(backend, target) takes two strings")
        self.backend, self.target = backend, target
        self._handler = _TraceHandler(self)
        self._lock = threading.Lock()
        self._breaks: dict[tuple, R.GraphBreak] = {}
        self._compiles: dict[str, dict[str, Any]] = {}
        self._guard_failures: dict[str, list[str]] = {}
        self._tensors: dict[tuple, str] = {}  # (describer, id) -> dtype
        self._sources: dict[tuple, str] = {}
        self._graphs: dict[str, _GraphRecord] = {}
        self._hazards: dict[tuple, R.Hazard] = {}
        self.active = False

    # lifecycle
    def start(self) -> Collector:
        if self.active:
            raise RuntimeError("this Collector is already active")
        logging.getLogger(TRACE_LOGGER).addHandler(self._handler)
        with _lock:
            _active.append(self)
        self.active = True
        return self

    def stop(self) -> None:
        if not self.active:
            return
        logging.getLogger(TRACE_LOGGER).removeHandler(self._handler)
        with _lock:
            _active.remove(self)
        self.active = False

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # trace events
    def _on_trace(self, metadata: Mapping[str, Any], payload: str | None) -> None:
        if "artifact" in metadata:
            name = metadata["artifact"].get("name")
            if name == "dynamo_graph_break_reason" and payload:
                self._add_break(parse_graph_break(payload), _compile_id_from(metadata))
            elif name == "recompile_reasons" and payload:
                try:  # a list arrives JSON-encoded, a single reason as the bare string
                    reasons = json.loads(payload)
                except ValueError:
                    reasons = payload
                reasons = [reasons] if isinstance(reasons, str) else [str(r) for r in reasons]
                with self._lock:
                    self._guard_failures[_compile_id_from(metadata)] = [guard_text(r) for r in reasons]
        elif "compilation_metrics" in metadata:
            m = metadata["compilation_metrics"]
            with self._lock:
                self._compiles[str(m.get("compile_id") or _compile_id_from(metadata))] = dict(m)
        elif "describe_tensor" in metadata:
            d = metadata["describe_tensor"]
            with self._lock:
                self._tensors[(d.get("describer_id"), d.get("id"))] = str(d.get("dtype"))
        elif "describe_source" in metadata:
            d = metadata["describe_source"]
            with self._lock:
                self._sources[(d.get("describer_id"), d.get("id"))] = str(d.get("source"))

    def _add_break(self, b: _Break, compile_id: str) -> None:
        category, hint = classify_break(b.gb_type, b.explanation, b.dynamo_hints)
        key = (b.file, b.line, b.gb_type)
        with self._lock:
            existing = self._breaks.get(key)
            if existing is not None:  # the same site again (a recompilation retraces it)
                existing.occurrences += 1
                existing.compile_ids.append(compile_id)
                return
            loc = R.Location.at(b.file, b.line, b.function) if b.file and b.line else None
            self._breaks[key] = R.GraphBreak(category=category, type=b.gb_type, reason=b.reason,
                                             explanation=b.explanation, hint=hint, dynamo_hints=b.dynamo_hints,
                                             location=loc, compile_ids=[compile_id])

    # hooks (called through the module-level functions)
    def _graph(self, compile_id: str) -> _GraphRecord:
        return self._graphs.setdefault(compile_id, _GraphRecord(compile_id))

    def add_graph(self, gm: torch.fx.GraphModule, stage: str, compile_id: str) -> None:
        ops = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
        hazards = list(_graph_hazards(gm, stage))
        with self._lock:
            self._graph(compile_id).stages.setdefault(stage, len(ops))
            for h in hazards:
                self._hazards.setdefault(h.key(), h)

    def add_replacement(self, item: R.Replacement, compile_id: str) -> None:
        with self._lock:
            self._graph(compile_id).replacements.append(item)

    def add_near_miss(self, item: R.NearMiss, compile_id: str) -> None:
        with self._lock:
            self._graph(compile_id).near_misses.append(item)

    def add_hazard(self, h: R.Hazard) -> None:
        with self._lock:
            self._hazards.setdefault(h.key(), h)

    # the report
    def report(self) -> R.Report:
        """A snapshot of everything recorded so far."""
        with self._lock:
            compiles = dict(self._compiles)
            hazards = dict(self._hazards)
            for key, dtype in self._tensors.items():
                src = self._sources.get(key)
                kind = "float64" if dtype == "torch.float64" else "complex" if "complex" in dtype else None
                if kind and src:
                    h = R.Hazard(kind=kind, where=_source_kind(src), name=pretty_source(src), dtype=dtype,
                                 message=dtype_message(kind))
                    hazards.setdefault(h.key(), h)
            recompiles = []
            for cid, m in compiles.items():
                reason = m.get("recompile_reason")
                if reason:
                    failures = self._guard_failures.get(cid) or [guard_text(reason)]
                    recompiles.append(R.Recompilation(
                        compile_id=cid, function=user_function(str(m.get("co_name"))),
                        location=_frame_location(m), guard_failures=failures, hint=recompile_hint(failures[0])))
            graphs = []
            for cid in _sorted_ids(set(self._graphs) | {c for c, m in compiles.items() if m.get("graph_op_count")}):
                g = self._graphs.get(cid) or _GraphRecord(cid)
                m = compiles.get(cid, {})
                op_count = g.stages.get("dynamo", m.get("graph_op_count"))
                graphs.append(R.Graph(
                    compile_id=cid, function=user_function(str(m["co_name"])) if m.get("co_name") else None,
                    location=_frame_location(m), op_count=op_count, aten_op_count=g.stages.get("aten"),
                    replacements=list(g.replacements), near_misses=list(g.near_misses)))
            failed = [f"compilation {cid} of {user_function(str(m.get('co_name')))} did not produce a graph: "
                      f"{_fail_summary(m)}" for cid, m in compiles.items() if m.get("fail_type")]
            notes = failed
            breaks = list(self._breaks.values())
        if compiles and not any(g.stages for g in self._graphs.values()):
            notes.append("The backend recorded no graph contents (it does not call diagnostics.record_graph): "
                         "graph-value hazards and ATen-op checks are missing; graph breaks, recompilations and "
                         "input hazards are complete.")
        if not mps_dispatch_available():
            notes.append("Ops without an MPS kernel could not be checked: this PyTorch build has no MPS support "
                         "(torch.backends.mps.is_built() is False). Run on a Mac to check them.")
        return R.Report(backend=self.backend, target=self.target, torch_version=torch.__version__,
                        compilations=len(compiles), graph_breaks=breaks,
                        recompilations=sorted(recompiles, key=lambda r: _id_key(r.compile_id)),
                        graphs=graphs, hazards=list(hazards.values()), notes=notes)


def guard_text(reason: str) -> str:
    """A guard failure's first line without the source comment Dynamo appends (`1/0: n == 1  # ...`)."""
    return reason.strip().splitlines()[0].split("  #", 1)[0].strip() if reason.strip() else reason


_NESTED_BREAK = "*** While handling this graph break, another graph break occurred: ***"


def _fail_summary(m: Mapping[str, Any]) -> str:
    """One line for a compilation Dynamo abandoned: the first graph break and the one that ended it."""
    text = str(m.get("fail_reason") or "")
    first = text.strip().splitlines()[0] if text.strip() else ""
    summary = f"{m.get('fail_type')}: {first}"
    if _NESTED_BREAK in text:
        after = [ln.strip() for ln in text.split(_NESTED_BREAK, 1)[1].splitlines() if ln.strip()]
        if after:
            summary += f", then {after[0]}"
    return summary


def dtype_message(kind: str) -> str:
    if kind == "float64":
        return "MPS has no float64: this tensor cannot be moved to the GPU; use float32."
    return "MPS support for complex tensors is partial; many ops on them fail or fall back to the CPU."


def _frame_location(m: Mapping[str, Any]) -> R.Location | None:
    if not m.get("co_filename") or not m.get("co_firstlineno"):
        return None
    return R.Location.at(str(m["co_filename"]), int(m["co_firstlineno"]), user_function(str(m.get("co_name"))))


def _id_key(cid: str) -> tuple:
    parts = cid.split("/")
    return tuple(int(p) if p.isdigit() else -1 for p in parts) if all(parts) else (-1,)


def _sorted_ids(ids: set[str]) -> list[str]:
    return sorted(ids, key=_id_key)


def _graph_hazards(gm: torch.fx.GraphModule, stage: str):
    """float64 / complex values in a graph, and (on builds with MPS) ATen ops with no MPS kernel."""
    check_ops = mps_dispatch_available()
    for node in gm.graph.nodes:
        val = node.meta.get("val", node.meta.get("example_value"))
        loc = location_from_meta(node.meta)
        if node.op not in ("output", "placeholder"):  # inputs come from Dynamo's tensor descriptions
            for t in (val if isinstance(val, (list, tuple)) else [val]):
                kind = HAZARD_DTYPES.get(t.dtype) if isinstance(t, torch.Tensor) else None
                if kind:
                    yield R.Hazard(kind=kind, where="graph", name=node.name, dtype=str(t.dtype),
                                   op=str(node.target), location=loc, message=dtype_message(kind))
                    break
        if check_ops and node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
                and not has_mps_kernel(node.target):
            yield R.Hazard(kind="no_mps_kernel", where="graph", name=node.name, op=str(node.target), location=loc,
                           message="no MPS kernel: falls back to the CPU with PYTORCH_ENABLE_MPS_FALLBACK=1, "
                                   "else fails")


def active_collectors() -> list[Collector]:
    with _lock:
        return list(_active)
