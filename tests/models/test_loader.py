"""lib.models.loader: one checked load per model file, one bounded cache shared by every page."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lib import runs
from lib.errors import UserError
from lib.models import build, loader, registry


def _config(base="MobileNetV2"):
    return {"data_dir": "/data", "base": base, "image_size": 32, "classes": ["a", "b"]}


def test_a_copied_run_loads_its_model_and_lambda_models_are_refused(tmp_path):
    import keras

    run = runs.create_run(tmp_path / "a", _config("ResNet50"))
    spec = registry.get_base("SmallCNN")
    model = build.build_classifier(spec, 32, build.build_base("SmallCNN", 32, "none"), 2, build.HeadSpec())
    # A custom layer too, so loading needs lib.models.layers registered.
    from lib.models.layers import CaffePreprocess

    inputs = keras.Input((None, None, 3))
    wrapped = keras.Model(inputs, model(CaffePreprocess()(inputs)))
    wrapped.save(run / "model.keras")
    pixels = np.random.default_rng(0).integers(0, 256, (1, 40, 40, 3)).astype("float32")
    expected = wrapped.predict(pixels, verbose=0)

    copy = tmp_path / "elsewhere" / run.name
    shutil.copytree(run, copy)
    shutil.rmtree(run)
    loaded = loader.load(copy)
    np.testing.assert_allclose(loaded.predict(pixels), expected, atol=1e-6)
    assert loaded.classes == ["a", "b"] and loaded.size == 32

    lam = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    lam.save(copy / "model.keras")
    with pytest.raises(UserError, match="cannot be loaded|Lambda"):
        loader.load(copy)
    (copy / "model.keras").unlink()
    with pytest.raises(UserError, match="no saved model"):
        loader.load(copy)


def test_one_copy_per_model_file_and_the_cache_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MAX_LOADED_MODELS", "2")
    loader.clear()
    spec = registry.get_base("SmallCNN")
    folders = []
    for i in range(3):
        run = runs.create_run(tmp_path, _config("SmallCNN"))
        model = build.build_classifier(
            spec, 32, build.build_base("SmallCNN", 32, "none"), 2, build.HeadSpec()
        )
        model.save(run / "model.keras")
        runs.write_status(run, "finished")
        folders.append(run)
    first = loader.load(folders[0])
    assert loader.load(runs.read_run(folders[0])) is first  # Evaluate and Predict share one copy
    assert loader.loaded_count() == 1
    loader.load(folders[1])
    loader.load(folders[2])
    assert loader.loaded_count() == 2  # the least recently used left
    assert loader.load(folders[0]) is not first
    shutil.copy(folders[1] / "model.keras", folders[0] / "model.keras")  # a replaced file loads again
    assert loader.load(folders[0]).keras_model is not None
    loader.clear()


def test_a_model_whose_outputs_do_not_match_its_classes_is_refused(tmp_path):
    run = runs.create_run(tmp_path, {**_config("SmallCNN"), "classes": ["a", "b", "c"]})
    spec = registry.get_base("SmallCNN")
    model = build.build_classifier(spec, 32, build.build_base("SmallCNN", 32, "none"), 2, build.HeadSpec())
    model.save(run / "model.keras")
    with pytest.raises(UserError, match="gives 2 outputs but the run lists 3 classes"):
        loader.load(run)


def test_a_copied_run_is_checked_in_a_child_once_and_the_app_s_own_models_are_not(tmp_path, monkeypatch):
    from lib.models import safety
    from lib.train import recipe

    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []
    real = safety.check_isolated
    monkeypatch.setattr(
        safety, "check_isolated", lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k)
    )
    spec = registry.get_base("SmallCNN")
    model = build.build_classifier(spec, 32, build.build_base("SmallCNN", 32, "none"), 2, build.HeadSpec())

    copied = runs.create_run(tmp_path / "copied", _config("SmallCNN"))
    model.save(copied / "model.keras")  # a file the app didn't record: as if copied in
    loader.clear()
    loader.load(copied, "keras")
    assert calls == [str(copied / "model.keras")]
    loader.clear()
    loader.load(copied, "keras")
    assert len(calls) == 1, "checked once: the file's content is remembered"

    trained = runs.create_run(tmp_path / "trained", _config("SmallCNN"))
    recipe._save_model(model, trained)  # how training saves: recorded as made here
    loader.load(trained, "keras")
    assert len(calls) == 1
    loader.clear()
