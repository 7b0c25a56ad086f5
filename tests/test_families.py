"""The op-family registry: every record resolves, and every per-family table is derived from it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._inductor import decomposition, lowering

import mps_inductor_ext as mpsk
from mps_inductor_ext import config, families, lowerings, patterns, shaders
from mps_inductor_ext.diagnostics import doctor


@pytest.mark.parametrize("family", families.FAMILIES, ids=families.NAMES)
def test_every_record_resolves(family):
    for field in ("pattern", "launch", "reference", "lowering", "doctor_cases", "doctor_reference"):
        assert callable(family.resolve(field)), field
    op = family.custom_op
    assert isinstance(op, torch._ops.OpOverload) and op.name() == f"mpsk::{family.name}"
    assert (Path(shaders.__file__).parent / f"{family.kernels}.metal").is_file()
    assert family.policy is None or family.policy in config.SETTINGS
    # The lowering takes the op's own arguments, by the op's names.
    schema_args = [a.name for a in op._schema.arguments]
    assert list(inspect.signature(family.resolve("lowering")).parameters) == schema_args


def test_tables_derive_from_the_registry():
    assert config.PATTERNS == families.NAMES
    assert set(config.patterns) == set(families.NAMES)
    lowerings.install()
    ops = [f.custom_op for f in families.FAMILIES]
    assert all(op in lowering.lowerings for op in ops)
    assert all(op in decomposition.decompositions for op in ops)
    assert all(doctor.get_check(name) is not None for name in families.NAMES)
    assert set(families.NAMES) <= set(doctor.registered_ops())


def test_pattern_order_is_the_registry_order(monkeypatch):
    """Eager attention holds a softmax: with attention first it becomes one mpsk.attention; a
    registry listing softmax first would take the softmax out of it instead."""

    def f(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v

    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))

    def replaced(order):
        monkeypatch.setattr(patterns, "FAMILIES", order)
        mpsk.reset_counters()
        torch._dynamo.reset()
        with config.patch(emulate_metal=True):
            torch.compile(f, backend="mpsk")(q, k, v)
        return dict(mpsk.counters)

    assert replaced(families.FAMILIES) == {"attention": 1}
    softmax_first = tuple(sorted(families.FAMILIES, key=lambda fam: fam.name != "softmax"))
    assert replaced(softmax_first) == {"softmax": 1}


def test_fused_residual_norms_come_before_the_norms_they_hold(monkeypatch):
    """`h = x + r; norm(h)` holds a norm: with add_rms_norm first the pair becomes one fused op; a
    registry listing rms_norm first would take the norm alone and leave the add a launch of its own."""

    def f(x, r, w):
        h = x + r
        return F.rms_norm(h, (16,), w, 1e-6), h

    x, r, w = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)

    def replaced(order):
        monkeypatch.setattr(patterns, "FAMILIES", order)
        mpsk.reset_counters()
        torch._dynamo.reset()
        with config.patch(emulate_metal=True):
            torch.compile(f, backend="mpsk")(x, r, w)
        return dict(mpsk.counters)

    names = list(families.NAMES)
    assert names.index("add_rms_norm") < names.index("rms_norm")
    assert names.index("add_layer_norm") < names.index("layer_norm")
    assert replaced(families.FAMILIES) == {"add_rms_norm": 1}
    norm_first = tuple(sorted(families.FAMILIES, key=lambda fam: fam.name != "rms_norm"))
    assert replaced(norm_first) == {"rms_norm": 1}


def test_unknown_family_and_bad_record():
    with pytest.raises(KeyError, match="no op family 'nope'"):
        families.get("nope")
    broken = dataclasses.replace(families.get("rope"), lowering="lowerings.ops:lower_nothing")
    with pytest.raises(AttributeError, match="lower_nothing"):
        broken.resolve("lowering")
