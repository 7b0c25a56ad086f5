"""`python -m mps_inductor_ext doctor`: every mpsk op's Metal kernel against its PyTorch reference.

For a nightly job: exits non-zero when any case fails, when an op has no check, or when a case
raises. Each op family brings its cases (families.FAMILIES, ops/doctor_cases.py); an op defined
elsewhere under torch.ops.mpsk registers its own with `register_check`, and one with none fails.
Recorded tuning choices are ignored (tuning.kernels_only): the doctor checks the kernels, even
for shapes where `tune` found the native op faster. ``inject_fault`` perturbs one op's output
inside the doctor before the comparison, a self-test showing the doctor can fail; it never
touches the op itself.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch.utils._pytree import tree_flatten, tree_map

from .. import config, families, shaders, tuning
from ..ops import tolerances
from ..ops.common import poisoned_outputs
from ..ops.doctor_cases import Case
from ..shaders.emulator import cache as emulator_cache

NAMESPACE = "mpsk"


@dataclass(frozen=True)
class Check:
    op: str
    cases_fn: Callable[[], Iterable[Case]]
    reference_fn: Callable[..., Any]


_registered: dict[str, Check] = {}  # ops outside the families


def op_name(name: str) -> str:
    """``"mpsk::rms_norm"``, ``"mpsk.rms_norm"`` or ``"rms_norm"`` -> ``"rms_norm"``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"op name must be a non-empty string, got {name!r}")
    for prefix in (f"{NAMESPACE}::", f"{NAMESPACE}."):
        name = name.removeprefix(prefix)
    if not name.isidentifier():
        raise ValueError(f"not an op name: {name!r}")
    return name


def register_check(op: str, cases_fn: Callable[[], Iterable[Case]], reference_fn: Callable[..., Any]) -> None:
    """The doctor's cases and reference for ``torch.ops.mpsk.<op>``, an op that is no family's; one per op."""
    name = op_name(op)
    if not callable(cases_fn) or not callable(reference_fn):
        raise TypeError("register_check(op, cases_fn, reference_fn): cases_fn and reference_fn must be callable")
    if name in _registered or name in families.NAMES:
        raise ValueError(f"a doctor check for mpsk.{name} is already registered")
    _registered[name] = Check(name, cases_fn, reference_fn)


@functools.cache
def _family_check(name: str) -> Check:
    family = families.get(name)
    return Check(name, family.resolve("doctor_cases"), family.resolve("doctor_reference"))


def get_check(op: str) -> Check | None:
    name = op_name(op)
    return _family_check(name) if name in families.NAMES else _registered.get(name)


def registered_ops() -> list[str]:
    """Every op under ``torch.ops.mpsk`` the dispatcher knows, checked or not (the doctor's to-do list)."""
    for family in families.FAMILIES:
        family.custom_op  # noqa: B018 - importing the op module registers the op
    prefix = f"{NAMESPACE}::"
    names = {n[len(prefix):].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)}
    return sorted(names)


@dataclass
class CaseResult:
    op: str
    label: str
    ok: bool
    max_error: float | None
    tol: float | None
    message: str = ""


def _to(device: str, value: Any) -> Any:
    return tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, value)


def _perturb(out: Any) -> Any:
    """The injected fault: the first element of every output tensor moves by 1 + |value|."""
    def bump(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return t
        t = t.clone()
        flat = t.view(-1)
        flat[0] += 1 + flat[0].abs()
        return t
    return tree_map(bump, out)


def compare(op: str, label: str, got: Any, ref: Any, tol: float | None) -> CaseResult:
    """Every output tensor against the reference in float32, with its dtype's tolerance (rtol = atol)."""
    got_flat, _ = tree_flatten(got)
    ref_flat, _ = tree_flatten(ref)
    if len(got_flat) != len(ref_flat):
        return CaseResult(op, label, False, None, tol, f"{len(got_flat)} outputs, reference has {len(ref_flat)}")
    worst, used_tol = 0.0, tol
    for i, (g, r) in enumerate(zip(got_flat, ref_flat, strict=True)):
        if not isinstance(g, torch.Tensor) or not isinstance(r, torch.Tensor):
            if g != r:
                return CaseResult(op, label, False, None, tol, f"output {i}: {g!r} != reference {r!r}")
            continue
        if g.shape != r.shape or g.dtype != r.dtype:
            return CaseResult(op, label, False, None, tol, f"output {i}: {g.dtype} {tuple(g.shape)}, reference "
                              f"{r.dtype} {tuple(r.shape)}")
        t = tol if tol is not None else tolerances.TOLERANCES.get(g.dtype, 1e-5)
        used_tol = t
        gf, rf = g.detach().cpu().float(), r.detach().cpu().float()
        if gf.numel() == 0:
            continue
        err = (gf - rf).abs()
        err = torch.where(torch.isnan(gf) & torch.isnan(rf), torch.zeros_like(err), err)
        err = torch.nan_to_num(err, nan=math.inf)
        worst = max(worst, err.max().item())
        if not torch.allclose(gf, rf, rtol=t, atol=t, equal_nan=True):
            return CaseResult(op, label, False, worst, t, f"output {i} differs from the reference")
    return CaseResult(op, label, True, worst, used_tol)


def run_op(op: str, backend: str, inject_fault: bool = False) -> list[CaseResult]:
    """All cases of one op; an op without a check, or a case that raises, is a failure."""
    check = get_check(op)
    if check is None:
        return [CaseResult(op, "-", False, None, None, "no check registered (add one with "
                           "mps_inductor_ext.diagnostics.doctor.register_check)")]
    device = "mps" if backend == "mps" else "cpu"
    fn = getattr(torch.ops.mpsk, op)
    results = []
    try:
        cases = list(check.cases_fn())
    except Exception as e:  # noqa: BLE001 - reported as a failure, the doctor goes on
        return [CaseResult(op, "-", False, None, None, f"cases_fn raised {type(e).__name__}: {e}")]
    if not cases:
        return [CaseResult(op, "-", False, None, None, "the check has no cases")]
    for case in cases:
        try:
            with config.patch(emulate_metal=backend == "cpu"), poisoned_outputs(), tuning.kernels_only():
                got = fn(*_to(device, case.args), **_to(device, dict(case.kwargs)))
            if inject_fault:
                got = _perturb(got)
            ref = check.reference_fn(*case.args, **case.kwargs)
            results.append(compare(op, case.label, got, ref, case.tol))
        except Exception as e:  # noqa: BLE001 - one broken case must not hide the others
            results.append(CaseResult(op, case.label, False, None, case.tol, f"raised {type(e).__name__}: {e}"))
    return results


def cache_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under path; (0, 0) when it does not exist yet."""
    if not path.is_dir():
        return 0, 0
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def run(backend: str = "auto", ops: list[str] | None = None, inject_fault: str | None = None,
        out: TextIO | None = None) -> int:
    """Prints the health check and returns the exit status: 0 when everything passed, 1 otherwise."""
    out = out or sys.stdout
    resolved = shaders.resolve_backend(backend)
    known = registered_ops()
    selected = known if not ops else [op_name(o) for o in ops]
    unknown = [o for o in selected + ([op_name(inject_fault)] if inject_fault else []) if o not in known]
    if unknown:
        raise ValueError(f"no op(s) {unknown} under torch.ops.mpsk; registered: {known}")
    fault = op_name(inject_fault) if inject_fault else None
    where = "Apple GPU via torch.mps.compile_shader" if resolved == "mps" else "emulated: Metal compiled for the CPU"
    print(f"shader backend: {resolved} ({where})", file=out)
    print(f"torch {torch.__version__}; ops under torch.ops.mpsk: {', '.join(known) or '(none)'}", file=out)
    if fault:
        print(f"self-test: injecting a fault into mpsk.{fault}'s output; the doctor must report it", file=out)
    failed = passed = 0
    for op in selected:
        results = run_op(op, resolved, inject_fault=op == fault)
        bad = [r for r in results if not r.ok]
        print(f"\n{op}: {len(results) - len(bad)}/{len(results)} passed", file=out)
        for r in results:
            err = "-" if r.max_error is None else f"{r.max_error:.3g}"
            tol = "" if r.tol is None else f" (tol {r.tol:g})"
            msg = f"  {r.message}" if r.message else ""
            print(f"  {'PASS' if r.ok else 'FAIL'}  {r.label:<32} max abs error {err}{tol}{msg}", file=out)
        failed += len(bad)
        passed += len(results) - len(bad)
    cache = emulator_cache.cache_dir()
    n_files, n_bytes = cache_size(cache)
    print(f"\nemulator compiler cache: {cache} ({n_files} files, {_fmt_bytes(n_bytes)})"
          + ("" if os.environ.get("MPSK_CACHE_DIR") else "; set MPSK_CACHE_DIR to move it"), file=out)
    print(f"{'FAILED' if failed else 'OK'}: {passed} passed, {failed} failed", file=out)
    return 1 if failed else 0
