"""Errors raised by the shader runtime."""


class KernelError(RuntimeError):
    """A kernel misbehaved at run time: divergent barrier, out-of-bounds write, bad lane."""


class UndefinedBehaviorWarning(UserWarning):
    """A kernel did something Metal leaves undefined but that need not be a bug (it read an
    inactive lane); the emulator poisons the value and says where."""
