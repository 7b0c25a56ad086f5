"""Inductor lowerings of the mpsk ops into Metal kernel launches rendered from each op's LaunchPlan.

`install()` registers them (idempotent); the mpsk backend and `aoti_compile_and_package` call it,
so compiled code launches the kernels itself rather than calling the ops' Python implementation.
`uninstall()` removes them.
"""


def install() -> None:
    """Registers one Inductor lowering per mpsk op (see lowerings.ops)."""
    from .ops import install as _install

    _install()


def uninstall() -> None:
    """Removes the lowerings (the mpsk ops fall back to Inductor's default extern call)."""
    from .ops import uninstall as _uninstall

    _uninstall()
