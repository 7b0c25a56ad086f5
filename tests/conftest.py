"""Fixtures and collection settings only; helpers that tests import live in tests/helpers.py."""

import os

import pytest

from mps_inductor_ext.shaders import compile_shader

# tests/mps_device run on the emulated mps device, which changes the whole process (is_available()
# turns True): they run in a process of their own (test_mps_device_suite.py starts it).
collect_ignore = [] if os.environ.get("MPSK_EMULATE_MPS") == "1" else ["mps_device"]


@pytest.fixture
def emulate():
    """Compiles Metal source on the CPU emulator (strict: the lint for this project's kernels)."""

    def build(source: str, strict: bool = False):
        return compile_shader(source, backend="cpu", strict=strict)

    return build


@pytest.fixture(params=[False, True], ids=["precise", "fast_math"])
def math_mode(request, monkeypatch):
    """Runs a test with the emulator compiling kernels in Metal's default (precise) math and in fast
    math (MPSK_EMULATOR_FAST_MATH, as torch under PYTORCH_MPS_FAST_MATH=1 on a Mac)."""
    from mps_inductor_ext.shaders.emulator.library import FAST_MATH_VARIABLE

    monkeypatch.setenv(FAST_MATH_VARIABLE, "1" if request.param else "0")
    return request.param


# Files whose tests take longest run first, so that under pytest-xdist (`-n auto --dist loadfile`, the
# README's command) the other workers share the rest instead of waiting on them at the end.
LONGEST_FIRST = ("test_mps_device_suite.py", "test_benchmarks.py", "test_demo.py", "test_aoti_package.py",
                 "test_models.py", "test_models_quantized.py")


def pytest_configure(config):
    """Under pytest-xdist each worker has a core of its own: ATen's intra-op threads would only
    oversubscribe the cores the other workers use."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
