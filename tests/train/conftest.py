"""Fixtures of the training tests: a warm Python server for the fault tests (see tests/train/warm.py)."""

from __future__ import annotations

import pytest

from tests.train.warm import WarmPython


@pytest.fixture(scope="module")
def warm_python():
    """`python -m ...` processes forked from an interpreter that imported TensorFlow once (per test
    module: its memory goes back when the module's tests are done)."""
    server = WarmPython()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def small_cnn_weights(warm_python, tmp_path_factory):
    """A weights file for SmallCNN at 32 px (untrained): a frozen base that is cheap to build."""
    path = tmp_path_factory.mktemp("weights") / "small_cnn_32.weights.h5"
    code = warm_python.run("tests.train.warm", "small-cnn-weights", str(path), log=path.with_suffix(".log"))
    assert code == 0 and path.is_file(), path.with_suffix(".log").read_text()
    return path
