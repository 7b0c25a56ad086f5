"""Stand-ins for symbolic sizes whose side of one bound a lowering has decided (and guarded).

A launch function branches on sizes: attention takes its decode kernel when `Sq <= decode_max_q`
and splits the keys when `Skv > split_kv_above`. Under dynamic shapes those sizes are sympy
symbols, and `s0 <= 4` is neither True nor False, so the branch cannot run. Rather than write the
branch a second time for compile time, the lowering decides it from the size hint, guards the
decision (Inductor recompiles should a later call fall on the other side), and hands the launch
function a stand-in symbol that answers that one comparison:

    >>> sq = decide(s0, bound=4, name="sq", substitutions=subs)   # s0's hint is 1: decode
    >>> sq <= 4, sq > 4
    (True, False)
    >>> sq + 1          # any other use is an ordinary size expression
    mpsk_sq_0 + 1

The plan then holds `mpsk_sq_0` wherever it used the size; `substitutions` maps it back to `s0`,
and the wrapper renders the graph's own expression (lowerings.mpsk_kernel.normalize).
"""

from __future__ import annotations

import itertools

import sympy
from torch._inductor.virtualized import V


class DecidedSize(sympy.Symbol):
    """A size symbol whose `<=` / `>` against `bound` give the decided Python bool."""

    def __new__(cls, name: str, bound: int, above: bool):
        obj = super().__new__(cls, name, integer=True, positive=True)
        obj._bound, obj._above = bound, above
        return obj

    def __le__(self, other):
        return (not self._above) if other == self._bound else super().__le__(other)

    def __gt__(self, other):
        return self._above if other == self._bound else super().__gt__(other)


_ids = itertools.count()  # unique names: sympy caches symbols by name


def static_int(value) -> int | None:
    """`value` as an int when the graph knows it statically, else None."""
    value = V.graph.sizevars.simplify(sympy.sympify(value))
    return int(value) if value.is_Integer else None


def decide(expr, bound: int, name: str, substitutions: dict):
    """`expr` as a launch function should see it: an int when static; else a `DecidedSize` on the
    side of `bound` its hint falls, that choice guarded. Records stand-in -> `expr` in `substitutions`."""
    static = static_int(expr)
    if static is not None:
        return static
    sizevars = V.graph.sizevars
    above = sizevars.guarding_hint_or_throw(expr) > bound
    sizevars.evaluate_expr(sympy.Gt(expr, bound) if above else sympy.Le(expr, bound))
    stand_in = DecidedSize(f"mpsk_{name}_{next(_ids)}", bound, above)
    substitutions[stand_in] = expr
    return stand_in
