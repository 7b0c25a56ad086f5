"""Errors raised by the shader runtime."""


class KernelError(RuntimeError):
    """A kernel misbehaved at run time: divergent barrier, out-of-bounds write, bad lane."""
