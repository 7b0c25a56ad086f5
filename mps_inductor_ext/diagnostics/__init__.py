"""Why a model is slow under ``backend="mpsk"``: graph breaks, recompilations, fusions, MPS hazards.

- `explain(fn, *args, **kwargs)` runs `fn` once under torch.compile and returns a `Report`
  (``str(report)``, ``report.to_json()``, ``report.to_html(path)``).
- ``MPSK_EXPLAIN=1 python script.py`` prints one report for all of the script's compilations at
  exit (on stderr, so the script's own output stays clean); ``python -m mps_inductor_ext explain
  script.py`` does the same for a script that does not import this package.
- Hooks for the backend and its pattern passes, cheap no-ops when nothing is collecting:
  `record_graph(gm, stage)` for each graph the backend compiles (``"dynamo"`` at entry,
  ``"aten"`` after AOTAutograd), `record_replacement(kind, node)` for each subgraph replaced by an
  mpsk op, `record_near_miss(kind, reason, node)` for each one that resembles a pattern but was
  left alone. ``node`` is the FX node (or its ``meta``) whose ``stack_trace`` names the user's line.
  Replacements and near misses count once their compilation completes (`attempts`): an attempt
  Dynamo abandons reports nothing.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

import torch

from .. import attempts
from .collector import Collector, active_collectors, current_compile_id, location_from_meta
from .explain import explain
from .report import (
    SCHEMA_PATH,
    Graph,
    GraphBreak,
    Hazard,
    Location,
    NearMiss,
    Recompilation,
    Replacement,
    Report,
    load_schema,
)

ENV_VAR = "MPSK_EXPLAIN"
STAGES = ("dynamo", "aten")


def _check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"kind must be a non-empty string such as 'rms_norm', got {kind!r}")
    return kind


def _check_detail(detail: object) -> str | None:
    if detail is not None and not isinstance(detail, str):
        raise TypeError(f"detail must be a string or None, got {type(detail).__name__}")
    return detail


def record_graph(gm: torch.fx.GraphModule, stage: str = "dynamo") -> None:
    """Called by the backend for each graph it compiles: counts ops, finds float64/complex values and
    (on builds with MPS) ATen ops with no MPS kernel. ``stage`` is ``"dynamo"`` or ``"aten"``."""
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"record_graph needs a torch.fx.GraphModule, got {type(gm).__name__}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    collectors = active_collectors()
    if collectors:
        cid = current_compile_id()
        for c in collectors:
            c.add_graph(gm, stage, cid)


def record_replacement(kind: str, node_meta: Any, *, detail: str | None = None) -> None:
    """Called by a pattern pass when it replaces a subgraph with an mpsk op.

    ``node_meta``: the matched FX node (or its ``meta`` dict, or None) whose ``stack_trace`` gives
    the user's file and line. The graph is the compilation in progress.
    """
    _check_kind(kind)
    _check_detail(detail)
    collectors = active_collectors()
    if collectors:
        item = Replacement(kind=kind, location=location_from_meta(node_meta), detail=detail)
        cid = current_compile_id()
        attempts.defer(lambda: [c.add_replacement(item, cid) for c in collectors])


def record_near_miss(kind: str, reason: str, node_meta: Any, *, detail: str | None = None) -> None:
    """Called by a pattern pass for a subgraph that resembles ``kind`` but was not replaced, with why
    (e.g. ``"softmax over dim 1, not the last"``, ``"dropout p=0.1 > 0"``, ``"pattern switched off"``)."""
    _check_kind(kind)
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"reason must be a non-empty string, got {reason!r}")
    _check_detail(detail)
    collectors = active_collectors()
    if collectors:
        item = NearMiss(kind=kind, reason=reason, location=location_from_meta(node_meta), detail=detail)
        cid = current_compile_id()
        attempts.defer(lambda: [c.add_near_miss(item, cid) for c in collectors])


_env_collector: Collector | None = None


def install_from_env() -> Collector | None:
    """If ``MPSK_EXPLAIN`` is set to 1, collects every compilation of this process and prints the
    report to stderr at exit. Idempotent; does nothing (and costs nothing) when the variable is unset."""
    global _env_collector
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return None
    if raw not in ("1", "true", "yes", "on"):
        raise ValueError(f"environment variable {ENV_VAR} must be 0 or 1, got {raw!r}")
    if _env_collector is None:
        _env_collector = Collector(backend="as chosen by the script (torch.compile's backend argument)").start()
        atexit.register(_print_env_report)
    return _env_collector


def _print_env_report() -> None:
    if _env_collector is None:
        return
    _env_collector.stop()
    report = _env_collector.report()
    if not report.compilations:
        print(f"[{ENV_VAR}] no torch.compile compilation ran in this process", file=sys.stderr)
        return
    print(f"[{ENV_VAR}] report for all compilations of this process:\n{report}", file=sys.stderr, end="")


__all__ = [
    "ENV_VAR", "SCHEMA_PATH", "Collector", "Graph", "GraphBreak", "Hazard", "Location", "NearMiss", "Recompilation",
    "Replacement", "Report", "explain", "install_from_env", "load_schema", "record_graph", "record_near_miss",
    "record_replacement",
]

install_from_env()
