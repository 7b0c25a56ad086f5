"""The shapes `profile` runs: named presets of op calls, one list per family.

`llama3-8b` is Llama-3-8B's (hidden 4096, 32 query heads and 8 KV heads of 128, fp16), in decode
(one token) and prefill (2048 tokens); `tiny` is small enough for a test. A family a preset does
not list is profiled on its doctor cases (ops/doctor_cases.py), so a new family shows up in every
preset without an entry here.

A case too slow to count on the emulator at full size may say how to count it on a smaller shape
(`Scaled`): the factor and the reason its traffic is exactly linear in what was scaled. Only the
KV-group (head) dimension is ever scaled: every (batch, KV head) group of an attention launch is an
independent set of threadgroups reading only its own rows, so its counts add up across groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch

from .. import families

Build = Callable[[torch.dtype, str], tuple[tuple, dict]]  # (dtype, device) -> (args, kwargs)


@dataclasses.dataclass(frozen=True)
class Scaled:
    build: Build
    factor: int
    reason: str


@dataclasses.dataclass(frozen=True)
class ProfileCase:
    family: str
    label: str
    build: Build
    scaled: Scaled | None = None


def _rand(device: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        if device == "meta":
            return torch.empty(*shape, dtype=dtype, device="meta")
        return torch.randn(*shape, generator=g).to(dtype)

    return rand


def _norm(family: str, rows: int, cols: int) -> ProfileCase:
    def build(dtype, device):
        r = _rand(device, dtype, rows)
        if family == "rms_norm":
            return (r(rows, cols), r(cols), 1e-6), {}
        return (r(rows, cols), r(cols), r(cols), 1e-5), {}

    return ProfileCase(family, f"{rows}x{cols}", build)


def _softmax(rows: int, cols: int) -> ProfileCase:
    return ProfileCase("softmax", f"{rows}x{cols}",
                       lambda dtype, device: ((_rand(device, dtype, cols)(rows, cols), -1, False), {}))


def _rope(heads: int, seq: int, dim: int) -> ProfileCase:
    def build(dtype, device):
        r = _rand(device, dtype, seq)
        return (r(1, heads, seq, dim), r(seq, dim), r(seq, dim), False), {}

    return ProfileCase("rope", f"(1,{heads},{seq},{dim}) cos/sin ({seq},{dim})", build)


GROUP_REASON = ("counted on one KV group (its 4 query heads) and multiplied by the 8 groups: each "
                "(batch, KV head) group runs its own threadgroups over its own K/V rows, so the traffic "
                "is exactly linear in the number of groups")


def _attention(sq: int, skv: int, hq: int, hkv: int, dim: int, causal: bool, scale_groups: bool) -> ProfileCase:
    def make(kv_heads: int) -> Build:
        def build(dtype, device):
            r = _rand(device, dtype, skv)
            q = r(1, hq * kv_heads // hkv, sq, dim)
            return (q, r(1, kv_heads, skv, dim), r(1, kv_heads, skv, dim), None, None, causal, -1), {}

        return build

    kind = "prefill causal" if causal else "decode"
    label = f"{kind} q (1,{hq},{sq},{dim}) kv (1,{hkv},{skv},{dim})"
    scaled = Scaled(make(1), hkv, GROUP_REASON) if scale_groups else None
    return ProfileCase("attention", label, make(hkv), scaled)


def _llama3_8b() -> list[ProfileCase]:
    out = [_norm("rms_norm", 1, 4096), _norm("rms_norm", 2048, 4096), _norm("layer_norm", 1, 4096),
           _softmax(32, 4096), _softmax(1, 32000), _rope(32, 1, 128), _rope(32, 2048, 128)]
    out += [_attention(1, n, 32, 8, 128, False, scale_groups=n > 4096) for n in (512, 4096, 32768)]
    out.append(_attention(2048, 2048, 32, 8, 128, True, scale_groups=True))
    return out


def _tiny() -> list[ProfileCase]:
    return [_norm("rms_norm", 4, 4096), _norm("layer_norm", 4, 256), _softmax(4, 256), _rope(4, 8, 64),
            _attention(1, 64, 4, 2, 64, False, scale_groups=False),
            _attention(16, 16, 4, 2, 64, True, scale_groups=False)]


PRESETS: dict[str, Callable[[], list[ProfileCase]]] = {"llama3-8b": _llama3_8b, "tiny": _tiny}


def _doctor_cases(family: families.OpFamily, dtype: torch.dtype) -> list[ProfileCase]:
    """The family's first doctor case in `dtype` (else its first case), as a profile case."""
    cases = list(family.resolve("doctor_cases")())
    typed = [c for c in cases if next((a.dtype for a in c.args if isinstance(a, torch.Tensor)), None) == dtype]
    case = (typed or cases)[:1]
    return [ProfileCase(family.name, f"doctor case {c.label}",
                        lambda _dtype, device, c=c: (tuple(c.args), dict(c.kwargs))) for c in case]


def cases(preset: str, dtype: torch.dtype, ops: Iterable[str] | None = None) -> list[ProfileCase]:
    """The preset's cases for the families named in `ops` (default: every family), a family the
    preset does not list taking its doctor case."""
    if preset not in PRESETS:
        raise KeyError(f"no preset {preset!r}; presets: {list(PRESETS)}")
    names = list(families.NAMES) if ops is None else list(ops)
    for name in names:
        families.get(name)
    listed = PRESETS[preset]()
    out = []
    for name in names:
        mine = [c for c in listed if c.family == name]
        out += mine or _doctor_cases(families.get(name), dtype)
    return out
