"""Tests on the emulated mps device. They run only in a process started with MPSK_EMULATE_MPS=1, where
importing mps_inductor_ext installed the device first (tests/test_mps_device_suite.py starts one):
`MPSK_EMULATE_MPS=1 python -m pytest tests/mps_device`."""

import pytest

from mps_inductor_ext import emulated_mps


@pytest.fixture(autouse=True)
def _device_installed():
    assert emulated_mps.installed(), "tests/mps_device need MPSK_EMULATE_MPS=1 (see conftest.py)"
