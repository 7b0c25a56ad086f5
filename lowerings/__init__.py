"""Inductor lowerings of the mpsk ops into Metal kernel launches rendered from each op's LaunchPlan.

`install()` registers them (idempotent); the mpsk backend and `aoti_compile_and_package` call it,
so compiled code launches the kernels itself rather than calling the ops' Python implementation;
where no kernel can run, the ops decompose into ATen math that Inductor compiles as usual.
`uninstall()` removes them.
"""


def install() -> None:
    """Registers one Inductor lowering per mpsk op (see lowerings.ops), and their decompositions into
    ATen math where no Metal kernel runs (lowerings.decompose)."""
    from . import decompose, ops

    ops.install()
    decompose.install()


def uninstall() -> None:
    """Removes both (the mpsk ops fall back to Inductor's default extern call)."""
    from . import decompose, ops

    ops.uninstall()
    decompose.uninstall()
