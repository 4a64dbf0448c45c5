"""lib.models.head: the head as numpy, its file read like an untrusted one."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from lib.models import head as dense_head


def _layers(rng: np.random.Generator) -> list:
    return [
        (rng.normal(size=(8, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32), "relu"),
        (rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32), "softmax"),
    ]


def test_round_trip_and_forward(tmp_path):
    rng = np.random.default_rng(0)
    layers = _layers(rng)
    dense_head.DenseHead(layers, "abc").save(tmp_path / "head.npz")
    head = dense_head.load(tmp_path / "head.npz", "abc")
    assert head is not None and head.dims == 8 and head.outputs == 3
    x = rng.normal(size=(4, 8)).astype(np.float32)
    expected = np.maximum(x @ layers[0][0] + layers[0][1], 0) @ layers[1][0] + layers[1][1]
    expected = np.exp(expected - expected.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(head(x), expected, rtol=1e-5)
    assert dense_head.load(tmp_path / "head.npz", "another") is None
    assert dense_head.load(tmp_path / "missing.npz") is None


def test_heads_it_cannot_run_are_not_stored():
    rng = np.random.default_rng(1)
    layers = _layers(rng)
    assert dense_head.usable_layers(layers)
    assert not dense_head.usable_layers([layers[0]])  # no softmax at the end
    assert not dense_head.usable_layers([(layers[0][0], layers[0][1], "gelu"), layers[1]])
    assert not dense_head.usable_layers([layers[1], layers[1]])  # widths don't chain
    assert not dense_head.usable_layers([])


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()  # declares the shape; no data follows


def test_a_crafted_file_is_refused_before_anything_is_allocated(tmp_path):
    rng = np.random.default_rng(2)
    dense_head.DenseHead(_layers(rng), "abc").save(tmp_path / "ok.npz")
    crafted = tmp_path / "crafted.npz"
    with zipfile.ZipFile(tmp_path / "ok.npz") as src, zipfile.ZipFile(crafted, "w") as dst:
        for name in src.namelist():
            data = _npy_header_only((10**6, 10**6)) if name == "kernel0.npy" else src.read(name)
            dst.writestr(name, data)
    assert dense_head.load(crafted) is None  # 10^12 floats declared: refused from the header
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.frombuffer(b"{}", dtype=np.uint8), kernel0=np.array([object()]), bias0=np.zeros(1))
    assert dense_head.load(pickled) is None
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert dense_head.load(tmp_path / "junk.npz") is None
