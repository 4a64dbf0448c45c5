"""lib.models.engine: LiteRT and Keras agree (features and predictions), a disagreeing conversion
falls back to Keras and is remembered, the converted-base cache key, and prediction without
TensorFlow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib import runs, settings
from lib.data.images import decode
from lib.errors import UserError
from lib.models import build, engine, loader, registry

ROOT = Path(__file__).resolve().parents[2]


def _sample_pixels(size: int, n: int = 8) -> np.ndarray:
    paths = sorted(settings.sample_dir().rglob("*.jpg"))
    return np.stack([decode(p, size=size) for p in paths[:: max(1, len(paths) // n)][:n]])


def test_choosing_an_engine(monkeypatch):
    monkeypatch.delenv("STUDIO_ENGINE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert engine.choose("keras") == "keras"
    assert engine.choose("litert") == "litert"
    assert engine.choose("auto") == "litert"  # a CPU with ai_edge_litert installed
    assert engine.choose() == "litert"
    monkeypatch.setenv("STUDIO_ENGINE", "Keras")
    assert engine.choose() == "keras"
    monkeypatch.setattr(engine, "litert_available", lambda: False)
    assert engine.choose("litert") == "keras"  # LiteRT missing (Windows): Keras runs
    with pytest.raises(UserError, match="Unknown engine"):
        engine.choose("onnx")


def test_the_converted_base_cache_key_follows_base_weights_size_cut_and_versions(monkeypatch):
    parts = {"kind": "base", "base": "MobileNetV2", "weights": "sha256:abc", "size": 160, "cut": None}
    key = engine.base_key(parts)
    assert engine.base_key(dict(parts)) == key
    for change in ({"base": "ResNet50"}, {"weights": "sha256:abd"}, {"size": 96}, {"cut": "block_13_expand"}):
        assert engine.base_key({**parts, **change}) != key, change
    real = engine.versions()
    monkeypatch.setattr(engine, "versions", lambda: {**real, "ai-edge-litert": "0.0.1"})
    assert engine.base_key(parts) != key


def _base_96():
    spec = registry.get_base("MobileNetV2")
    return spec, build.build_base("MobileNetV2", 96, "bundled")


def test_litert_features_agree_with_keras_and_the_conversion_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    spec, base = _base_96()
    pixels = _sample_pixels(96)
    key_parts = {"base": "MobileNetV2", "weights": registry.weights_identity(spec, "bundled"), "cut": None}
    made = engine.feature_engine(
        spec, 96, base, pooled=True, batch=None, key_parts=key_parts, check_pixels=pixels[:4]
    )
    assert made.lite is not None and not made.cached and made.seconds > 0
    assert made.max_diff is not None and made.max_diff <= engine.TOLERANCE
    lite_features = made.lite(pixels.astype(np.float32))[engine.FEATURES]  # 8 images: one full batch
    reference = np.asarray(build.feature_model(spec, 96, base, pooled=True)(pixels.astype(np.float32)))
    assert lite_features.shape == reference.shape == (len(pixels), 1280)
    np.testing.assert_allclose(lite_features, reference, atol=1e-3)
    odd = made.lite(pixels[:3].astype(np.float32))[engine.FEATURES]  # a padded last batch
    np.testing.assert_allclose(odd, reference[:3], atol=1e-3)

    # A head grafted onto the converted base (what training does for a frozen base): the same
    # features, and the Dense layers' probabilities.
    rng = np.random.default_rng(0)
    k1, b1 = rng.normal(size=(1280, 16)).astype("f4") * 0.05, rng.normal(size=16).astype("f4")
    k2, b2 = rng.normal(size=(16, 3)).astype("f4"), rng.normal(size=3).astype("f4")
    grafted = engine.LiteModel(
        engine.graft_head(made.path.read_bytes(), [(k1, b1, "relu"), (k2, b2, "softmax")])
    )
    out = grafted(pixels[:5].astype(np.float32))
    logits = np.maximum(out[engine.FEATURES] @ k1 + b1, 0) @ k2 + b2
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        out[engine.PROBABILITIES], expected / expected.sum(1, keepdims=True), atol=1e-5
    )
    np.testing.assert_allclose(out[engine.FEATURES], reference[:5], atol=1e-3)

    again = engine.feature_engine(
        spec, 96, base, pooled=True, batch=None, key_parts=key_parts, check_pixels=pixels[:4]
    )
    assert again.cached and again.seconds == 0 and again.path == made.path
    assert len(list((tmp_path / "cache" / "engines").iterdir())) == 1


def test_a_conversion_that_disagrees_falls_back_to_keras_and_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "TOLERANCE", -1.0)  # any difference at all is too much
    spec, base = _base_96()
    key_parts = {"base": "MobileNetV2", "weights": "bundled", "cut": None}
    pixels = _sample_pixels(96, 4)
    first = engine.feature_engine(
        spec, 96, base, pooled=True, batch=8, key_parts=key_parts, check_pixels=pixels
    )
    assert first.lite is None and "disagrees with Keras" in first.reason and not first.cached
    second = engine.feature_engine(
        spec, 96, base, pooled=True, batch=8, key_parts=key_parts, check_pixels=pixels
    )
    assert second.lite is None and second.cached and second.seconds == 0  # not converted again


@pytest.fixture(scope="module")
def lite_run(sample_run, tmp_path_factory) -> Path:
    """A copy of the sample run (trained with the default engine: LiteRT here)."""
    copy = tmp_path_factory.mktemp("engine-run") / sample_run.name
    shutil.copytree(sample_run, copy)
    return copy


def test_training_writes_a_tflite_that_predicts_like_keras_with_features(lite_run):
    assert (lite_run / loader.LITE_FILE).is_file()
    metrics = runs.read_run(lite_run).metrics
    assert metrics["lite_model"] == loader.LITE_FILE and metrics["lite_max_difference"] <= engine.TOLERANCE
    assert metrics["lite_made"] == "grafted"  # the head went onto the shared converted base
    assert (
        metrics["feature_engine"] == "litert" and metrics["feature_engine_max_difference"] <= engine.TOLERANCE
    )

    loader.clear()
    lite = loader.load(lite_run, "litert")
    keras_model = loader.load(lite_run, "keras")
    assert lite.engine == "litert" and keras_model.engine == "keras" and lite is not keras_model
    pixels = _sample_pixels(lite.size).astype(np.float32)
    p_lite, f_lite = lite.predict_with_features(pixels)
    p_keras, f_keras = keras_model.predict_with_features(pixels)
    assert p_lite.shape == (len(pixels), len(lite.classes)) and f_lite.shape == (len(pixels), 1280)
    np.testing.assert_allclose(p_lite, p_keras, atol=1e-3)
    np.testing.assert_allclose(f_lite, f_keras, atol=1e-3)
    np.testing.assert_array_equal(p_lite.argmax(1), p_keras.argmax(1))
    np.testing.assert_allclose(lite.predict(pixels), p_lite, atol=1e-6)
    np.testing.assert_allclose(keras_model.predict(pixels), p_keras, atol=1e-6)
    # The pooled features are what the head sees: the head on them gives the probabilities.
    head = keras_model.keras_model.get_layer("predictions")
    np.testing.assert_allclose(np.asarray(head(f_keras)), p_keras, atol=1e-5)
    # Other sizes than S x S go through Keras (its antialiased resize), still the same answer.
    big = np.stack([decode(p, size=2 * lite.size) for p in sorted(settings.sample_dir().rglob("*.jpg"))[:2]])
    np.testing.assert_allclose(lite.predict(big), keras_model.predict(big), atol=1e-6)


def test_a_new_dataset_reuses_the_converted_base(sample_run, tiny_dataset, tmp_path, monkeypatch):
    from lib.data.scan import load_scan
    from lib.train import features
    from lib.train.config import TrainConfig
    from lib.train.recipe import train

    # The sample run's cache holds its converted base: a run on other data finds it there.
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(sample_run.parent.parent / "cache"))
    config = TrainConfig(data_dir=str(tiny_dataset), weights="bundled", epochs=2, seed=1)
    run_dir = runs.create_run(tmp_path / "models", config)
    metrics = train(config, run_dir)
    assert metrics["feature_engine"] == "litert" and metrics["feature_cache"] == "computed"
    assert metrics["lite_made"] == "grafted"
    assert "the base from the cache" in (run_dir / "log.txt").read_text()
    # The cached features are the Keras base's features.
    resolved = config.resolved()
    data = features.training_data(load_scan(tiny_dataset, resolved.val_fraction, resolved.test_fraction))
    cached = features.cached(resolved, data, "bundled")
    assert cached is not None
    spec, size = registry.get_base("MobileNetV2"), resolved.image_size
    pixels = np.stack([decode(p, size=size) for p in data.paths[:8]]).astype(np.float32)
    keras_base = build.build_base("MobileNetV2", size, "bundled")
    reference = np.asarray(build.feature_model(spec, size, keras_base, pooled=True)(pixels))
    np.testing.assert_allclose(cached.take(np.arange(8)), reference, atol=2e-3)  # stored as float16


def test_a_run_without_a_tflite_gets_one_on_first_use_and_a_disagreeing_one_is_not_used(
    lite_run, tmp_path, monkeypatch
):
    run = tmp_path / lite_run.name
    shutil.copytree(lite_run, run)
    (run / loader.LITE_FILE).unlink()
    (run / (loader.LITE_FILE + ".json")).unlink()
    loader.clear()
    monkeypatch.setattr(engine, "TOLERANCE", -1.0)
    forced = loader.load(run, "litert")
    assert forced.engine == "keras" and "disagrees with Keras" in forced.note
    assert "Keras runs this model" in (run / "log.txt").read_text()
    monkeypatch.undo()
    (run / (loader.LITE_FILE + ".json")).unlink()  # forget the disagreement
    loader.clear()
    made = loader.load(run, "litert")
    assert made.engine == "litert" and (run / loader.LITE_FILE).is_file()
    pixels = _sample_pixels(made.size, 4).astype(np.float32)
    np.testing.assert_allclose(made.predict(pixels), forced.predict(pixels), atol=1e-3)


def test_predict_imports_no_tensorflow(lite_run, tmp_path):
    photo = sorted(settings.sample_dir().rglob("*.jpg"))[0]
    code = (
        "import contextlib, io, sys\n"
        "from lib import cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    code = cli.main(['predict', '--run', {str(lite_run)!r}, {str(photo)!r}, '--json'])\n"
        "assert code == 0, code\n"
        "import json\n"
        "result = json.loads(out.getvalue())['results'][0]\n"
        "assert result['ok'] and result['predicted'], result\n"
        "print('TF' if {'tensorflow', 'keras'} & set(sys.modules) else 'clean')\n"
    )
    env_cache = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "STUDIO_CACHE_DIR": str(env_cache), "STUDIO_ENGINE": "auto"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "clean"


def test_the_engine_flag(lite_run, monkeypatch, capsys):
    from lib import cli

    monkeypatch.setenv("STUDIO_ENGINE", "auto")  # restored afterwards: the CLI sets it for its process
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--run", str(lite_run), "x.jpg", "--engine", "onnx"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    photo = sorted(settings.sample_dir().rglob("*.jpg"))[0]
    loader.clear()
    assert cli.main(["predict", "--run", str(lite_run), str(photo), "--engine", "keras"]) == 0
    assert os.environ["STUDIO_ENGINE"] == "keras" and engine.choose() == "keras"
    assert capsys.readouterr().out.startswith(str(photo))


def test_two_converters_of_one_model_convert_it_once(tmp_path, monkeypatch):
    """The app's background preparation of the demo and a visitor's page both ask for the same
    conversion: the second waits for the first and takes what it kept (here a remembered failure,
    so no TensorFlow is needed)."""
    import threading
    import time

    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def make():
        calls.append(threading.current_thread().name)
        time.sleep(0.5)
        raise RuntimeError("no converter for this op")

    results = []

    def ask() -> None:
        results.append(
            engine.cached_conversion(tmp_path / "m.tflite", {"model": "x"}, make, lambda lite: 0.0)
        )

    threads = [threading.Thread(target=ask, name=f"visitor-{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r.cached for r in results) == [False, True, True]
    assert all(r.lite is None and "no converter" in r.reason for r in results)
