"""Export: each format loads back with plain TensorFlow / Keras / LiteRT and predicts like the app.

A copy of the serve tests' run (tests/serve/conftest.py: MobileNetV2 at 96 px on conftest's colour
classes, with its model.tflite) is exported once in every format; the tests then unzip and reload
the files themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lib.data.images import decode
from lib.errors import UserError
from lib.models import loader
from lib.serve import export as ex
from tests.serve.conftest import SIZE


@pytest.fixture(scope="module")
def run_dir(run_dir, tmp_path_factory) -> Path:
    """A copy of the serve tests' run (exports go into the run folder; a test touches model.keras)."""
    copy = tmp_path_factory.mktemp("export_runs") / "20250102-000000-MobileNetV2"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def predictor(run_dir):
    return loader.load(run_dir)


@pytest.fixture(scope="module")
def exports(run_dir, predictor):
    """Every format exported once (float formats fail inside export_run if they disagree)."""
    return {fmt: ex.export_run(run_dir, fmt) for fmt in ex.FORMATS}


@pytest.fixture(scope="module")
def images(tiny_dataset) -> np.ndarray:
    """Every tiny image, decoded as the app does (SxS), including ones the export's check never saw."""
    paths = sorted(tiny_dataset.glob("*/*.png"))
    return np.stack([decode(p, size=SIZE) for p in paths]).astype(np.float32)


@pytest.fixture(scope="module")
def app_probs(predictor, images) -> np.ndarray:
    return predictor.predict(images)


def unzip(result: ex.ExportResult, dest: Path) -> Path:
    with zipfile.ZipFile(result.path) as zf:
        names = zf.namelist()
        assert all(not n.startswith("/") and ".." not in n for n in names)
        zf.extractall(dest)
    (folder,) = {n.split("/")[0] for n in names}
    return dest / folder


@pytest.mark.parametrize(
    ("fmt", "model_file"),
    [
        ("keras", "model.keras"),
        ("savedmodel", "saved_model/saved_model.pb"),
        ("tflite", "model.tflite"),
        ("tflite_int8", "model_int8.tflite"),
    ],
)
def test_each_export_is_a_zip_with_model_labels_and_readme(
    exports, run_dir, predictor, fmt, model_file, tmp_path
):
    result = exports[fmt]
    assert result.format == fmt and result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert result.path.parent == run_dir / "exports" and result.path.name == f"{run_dir.name}-{fmt}.zip"
    folder = unzip(result, tmp_path)
    assert (folder / model_file).is_file()
    assert (folder / "labels.txt").read_text().splitlines() == predictor.classes
    readme = (folder / "README.md").read_text()
    assert "0-255" in readme and f"{SIZE}x{SIZE}" in readme and "labels.txt" in readme
    if fmt.startswith("tflite"):
        assert f"[1, {SIZE}, {SIZE}, 3]" in readme
    assert not list(run_dir.glob("exports/.export-*"))  # the temporary folder is gone


@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "tflite"])
def test_float_exports_report_full_agreement(exports, fmt):
    parity = exports[fmt].parity
    assert parity["ok"] and parity["top1_agreement"] == 1.0 and parity["source"] == "validation"
    assert parity["images"] >= 10 and parity["max_abs_diff"] < 1e-4


def test_keras_file_loads_with_plain_keras_and_agrees(exports, images, app_probs, tmp_path):
    import keras

    folder = unzip(exports["keras"], tmp_path)
    model = keras.models.load_model(folder / "model.keras", compile=False)
    probs = model.predict(images, verbose=0)
    assert (probs.argmax(1) == app_probs.argmax(1)).all()
    np.testing.assert_allclose(probs, app_probs, atol=1e-5)


def test_savedmodel_loads_with_plain_tensorflow_and_agrees(exports, images, app_probs, tmp_path):
    import tensorflow as tf

    folder = unzip(exports["savedmodel"], tmp_path)
    loaded = tf.saved_model.load(str(folder / "saved_model"))
    probs = loaded.serve(tf.constant(images)).numpy()
    assert (probs.argmax(1) == app_probs.argmax(1)).all()
    np.testing.assert_allclose(probs, app_probs, atol=1e-5)
    # The serving signature takes other sizes too (the model resizes inside).
    out = loaded.signatures["serving_default"](tf.zeros((2, 150, 120, 3)))
    assert next(iter(out.values())).shape == (2, 3)


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def _run_tflite(interpreter, images: np.ndarray) -> np.ndarray:
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def test_tflite_float_loads_with_litert_fixed_input_builtin_ops_and_agrees(
    exports, images, app_probs, tmp_path
):
    folder = unzip(exports["tflite"], tmp_path)
    interpreter = _interpreter(folder / "model.tflite")
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert list(inp["shape"]) == [1, SIZE, SIZE, 3] and inp["dtype"] == np.float32
    assert list(out["shape"]) == [1, 3] and out["dtype"] == np.float32
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "CUSTOM" not in ops and not any(o.lower().startswith("flex") for o in ops)
    assert "RESIZE_BILINEAR" not in ops  # the fixed-size part only
    probs = _run_tflite(interpreter, images)
    assert (probs.argmax(1) == app_probs.argmax(1)).all()
    np.testing.assert_allclose(probs, app_probs, atol=1e-4)


def test_tflite_int8_is_quantized_with_float_io_and_mostly_agrees(exports, images, app_probs, tmp_path):
    folder = unzip(exports["tflite_int8"], tmp_path)
    interpreter = _interpreter(folder / "model_int8.tflite")
    (inp,) = interpreter.get_input_details()
    assert list(inp["shape"]) == [1, SIZE, SIZE, 3] and inp["dtype"] == np.float32
    assert any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
    assert exports["tflite_int8"].size_bytes < exports["tflite"].size_bytes / 2
    probs = _run_tflite(interpreter, images)
    agreement = float((probs.argmax(1) == app_probs.argmax(1)).mean())
    assert agreement >= 0.9
    parity = exports["tflite_int8"].parity
    assert parity["ok"] and parity["required"] is None and 0.0 <= parity["top1_agreement"] <= 1.0
    assert parity["images"] >= 10


def test_second_export_is_reused_until_the_model_changes(exports, run_dir, monkeypatch):
    monkeypatch.setattr(ex, "tflite_bytes", lambda *a, **k: pytest.fail("converted again"))
    again = ex.export_run(run_dir, "tflite")
    assert again.path == exports["tflite"].path and again.parity == exports["tflite"].parity
    model = run_dir / "model.keras"
    st = model.stat()
    try:
        os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert ex.cached_export(run_dir, "tflite") is None
    finally:
        os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ex.cached_export(run_dir, "tflite") is not None


def test_read_only_run_exports_to_the_cache(run_dir, tmp_path, monkeypatch):
    from lib import runs

    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runs.Run, "writable", property(lambda self: self.path != run_dir))
    result = ex.export_run(run_dir, "keras", force=True)
    assert (tmp_path / "cache" / "exports") in result.path.parents
    assert result.parity["ok"]


def test_missing_dataset_float_uses_generated_images_and_int8_refuses(run_dir, tmp_path):
    moved = tmp_path / "copied-run"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("exports"))
    config = json.loads((moved / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "not-here")
    (moved / "config.json").write_text(json.dumps(config))
    result = ex.export_run(moved, "keras")
    assert result.parity["source"] == "synthetic" and result.parity["ok"]
    with pytest.raises(ex.ExportError, match="not on this machine.*TFLite float32"):
        ex.export_run(moved, "tflite_int8")


def test_unknown_format_and_broken_run_are_plain_errors(tmp_path):
    with pytest.raises(ex.ExportError, match="Unknown export format"):
        ex.export_run(tmp_path, "onnx")
    with pytest.raises(UserError, match="no config.json"):
        ex.export_run(tmp_path, "keras")


def test_parity_numbers_and_float_requirement():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    same = ex.parity(ref, ref + 1e-7, source="validation", must_agree=True)
    assert same["ok"] and same["top1_agreement"] == 1.0 and same["max_abs_diff"] < 1e-6
    flipped = ref.copy()
    flipped[2] = [0.4, 0.6]
    strict = ex.parity(ref, flipped, source="validation", must_agree=True)
    assert not strict["ok"] and strict["agreed"] == 2 and strict["top1_agreement"] == pytest.approx(2 / 3)
    loose = ex.parity(ref, flipped, source="validation", must_agree=False)
    assert loose["ok"] and "different answer" in loose["note"]


def test_fixed_size_model_drops_resizing(predictor):
    import keras

    fixed = ex.fixed_size_model(predictor.keras_model, SIZE)
    assert tuple(fixed.input.shape) == (1, SIZE, SIZE, 3)
    flat = []

    def walk(layer):
        flat.append(layer)
        for sub in getattr(layer, "layers", []) or []:
            walk(sub)

    walk(fixed)
    assert not any(isinstance(layer, keras.layers.Resizing) for layer in flat)
    x = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(fixed.predict_on_batch(x), predictor.predict(x), atol=1e-5)
