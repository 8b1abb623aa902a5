"""Shared test settings: everything offline, small thread counts on a 2-core machine; fixtures used
by more than one package's tests. Plain helpers (not fixtures) live in tests/helpers/, on pytest's
``pythonpath`` (pyproject.toml), and are imported as top-level modules."""

import os

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

# the helpers' own asserts report like a test's
pytest.register_assert_rewrite("cli_runs")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two OpenMP threads on two shared cores stall at every barrier when neighbours are busy:
    training tests run torch on one thread (``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_cuda(monkeypatch):
    """The fake cuda-python runtime of helpers/fake_tensorrt.py, installed as ``cuda.bindings``
    (runtime and calibration tests against the FAKE tensorrt module)."""
    from fake_tensorrt import FakeCudaRuntime, install_fake_cuda

    rt = FakeCudaRuntime()
    install_fake_cuda(monkeypatch, rt)
    return rt
