"""Inductor lowerings of the mpsk ops into Metal kernel launches rendered from each op's LaunchPlan.

`install()` registers them (idempotent), `uninstall()` removes them. The mpsk backend does not
call `install()` yet: tests/test_models.py proves kernels ran by spying on the ops' `run_plan`,
which lowered code no longer calls (see the slice report).
"""


def install() -> None:
    """Registers one Inductor lowering per mpsk op (see lowerings.ops)."""
    from .ops import install as _install

    _install()


def uninstall() -> None:
    """Removes the lowerings (the mpsk ops fall back to Inductor's default extern call)."""
    from .ops import uninstall as _uninstall

    _uninstall()
