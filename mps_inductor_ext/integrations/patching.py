"""patch() and unpatch(): the kernels in a model's eager forward, and the model back exactly as it was."""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field

from torch import nn

from . import norms, rotary
from .report import PatchReport, Site
from .swap import is_swapped, restore_forward, swap_forward


@dataclass
class _Record:
    """What patch() changed in one model, for unpatch()."""

    modules: list[nn.Module] = field(default_factory=list)
    rope_modeling: list[str] = field(default_factory=list)
    configs: list[tuple[object, object]] = field(default_factory=list)


_patched: weakref.WeakKeyDictionary[nn.Module, _Record] = weakref.WeakKeyDictionary()


def _patch_norms(model: nn.Module, enabled: dict[str, bool], report: PatchReport, record: _Record) -> None:
    for name, module in model.named_modules():
        if is_swapped(module):
            continue
        found = norms.recognize(module)
        if found is None:
            continue
        if isinstance(found, str):
            report.skipped.append(Site(name, "norm", found))
        elif not enabled[found.kind]:
            report.skipped.append(Site(name, found.kind, f"{found.kind}=False"))
        else:
            swap_forward(module, norms.patched_forward(found))
            record.modules.append(module)
            report.patched.append(Site(name, found.kind, found.describe()))


def _patch_rope(model: nn.Module, report: PatchReport, record: _Record) -> None:
    for modeling in rotary.modeling_modules(model):
        users = [(n, m) for n, m in rotary.callers(model, modeling) if not is_swapped(m)]
        if not users:
            continue
        spec = rotary.recognize(rotary.original_function(modeling))
        if isinstance(spec, str):
            report.skipped.append(Site(f"{modeling.__name__}.{rotary.FUNCTION}", "rope", spec))
            continue
        rotary.install(modeling, spec)
        record.rope_modeling.append(modeling.__name__)
        for name, module in users:
            swap_forward(module, rotary.scoped_forward)
            record.modules.append(module)
            report.patched.append(Site(name, "rope", spec.describe()))


def _configs(model: nn.Module) -> list[object]:
    """Every transformers config the model's submodels use, sub-configs included (each once)."""
    found: dict[int, object] = {}
    todo = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "sub_configs")]
    while todo:
        config = todo.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        todo += [c for key in config.sub_configs if (c := getattr(config, key, None)) is not None]
    return list(found.values())


def _attention_sites(model: nn.Module) -> list[str]:
    """The modules whose forward dispatches through transformers' attention interface."""
    names = []
    for name, module in model.named_modules():
        code = getattr(inspect.unwrap(type(module).forward), "__code__", None)
        if code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names:
            names.append(name)
    return names


def _patch_attention(model: nn.Module, report: PatchReport, record: _Record) -> None:
    if not callable(getattr(model, "set_attn_implementation", None)):
        return  # not a transformers model: attention is not recognized by module
    sites = _attention_sites(model) or [""]
    if not model._can_set_attn_implementation():
        report.skipped += [Site(n, "attention", "the model does not dispatch through transformers' "
                                "AttentionInterface") for n in sites]
        return
    from .hf_register import register_now

    register_now()
    before = [(c, c._attn_implementation_internal) for c in _configs(model)]
    try:
        model.set_attn_implementation("mpsk")
    except (ValueError, KeyError) as exc:
        for config, value in before:
            config._attn_implementation_internal = value
        report.skipped += [Site(n, "attention", f"set_attn_implementation('mpsk') refused: {exc}") for n in sites]
        return
    record.configs = before
    report.patched += [Site(n, "attention", "mpsk.attention (attn_implementation='mpsk')") for n in sites]


def patch(model: nn.Module, rms_norm: bool = True, layer_norm: bool = True, rope: bool = True,
          attention: bool = True) -> PatchReport:
    """Replaces, in place, the forwards of the modules of `model` that compute what an mpsk op computes
    (RMSNorm in the Llama, Gemma `1 + w` and T5 forms, nn.RMSNorm, nn.LayerNorm, transformers'
    apply_rotary_pos_emb, and transformers' attention through attn_implementation="mpsk"), so the
    Metal kernels run without torch.compile. Returns what was patched and what was recognized but
    left alone, with why. The patched model still trains and still compiles with backend="mpsk";
    `unpatch(model)` restores it."""
    if model in _patched:
        raise RuntimeError("this model is already patched; unpatch(model) first")
    report, record = PatchReport(), _Record()
    _patched[model] = record
    try:
        if rms_norm or layer_norm:
            _patch_norms(model, {"rms_norm": rms_norm, "layer_norm": layer_norm}, report, record)
        if rope:
            _patch_rope(model, report, record)
        if attention:
            _patch_attention(model, report, record)
    except BaseException:
        unpatch(model)
        raise
    return report


def unpatch(model: nn.Module) -> None:
    """Puts back every forward, function and attention implementation patch(model) replaced."""
    record = _patched.pop(model, None)
    if record is None:
        raise ValueError("this model is not patched")
    for module in record.modules:
        restore_forward(module)
    for name in record.rope_modeling:
        rotary.uninstall(name)
    for config, value in record.configs:
        config._attn_implementation_internal = value
