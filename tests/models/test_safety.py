"""Untrusted model and weights files: standard ones pass, anything that could run code is refused."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lib import settings
from lib.errors import UserError
from lib.models import registry, safety

LAMBDA_MESSAGE = "This model contains a Lambda layer (custom code), which is refused for safety."


@pytest.fixture(scope="module")
def keras():
    import keras

    import lib.models.layers  # noqa: F401

    return keras


@pytest.fixture(scope="module")
def good_model(keras, tmp_path_factory) -> Path:
    """A small Functional model with a nested model, our registered layer and standard layers."""
    from lib.models.layers import CaffePreprocess

    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(
        inner_in, keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inner_in), name="inner"
    )
    inputs = keras.Input((None, None, 3), name="pixels")
    x = keras.layers.Resizing(8, 8)(inputs)
    x = CaffePreprocess()(x)
    x = keras.layers.Conv2D(4, 1)(x)
    x = keras.layers.BatchNormalization()(x)
    x = inner(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path_factory.mktemp("good") / "good.keras"
    model.save(path)
    return path


def _rewrite(src: Path, dst: Path, mutate=None, extra: dict[str, bytes] | None = None) -> Path:
    """Copy a .keras zip, changing its config.json with `mutate(config)` and adding members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json" and mutate is not None:
                config = json.loads(data)
                mutate(config)
                data = json.dumps(config).encode()
            zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


def _layers(config: dict) -> list:
    return config["config"]["layers"]


def _conv(config: dict) -> dict:
    return next(layer for layer in _layers(config) if layer["class_name"] == "Conv2D")


def _refused(path: Path, *words: str, max_mb: float = 50) -> str:
    with pytest.raises(safety.UnsafeFileError) as err:
        safety.check_model_file(path, max_mb=max_mb)
    message = str(err.value)
    for word in words:
        assert word in message
    assert "](" not in message and "\n" not in message
    return message


def test_a_standard_model_passes_and_loads_like_the_original(keras, good_model):
    config = safety.check_model_file(good_model, max_mb=50)
    assert config["class_name"] == "Functional"
    loaded = safety.safe_load_model(good_model, max_mb=50)
    original = keras.saving.load_model(good_model, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-6)


def test_a_model_with_a_lambda_layer_is_refused(keras, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    assert _refused(path) == LAMBDA_MESSAGE
    with pytest.raises(UserError, match="Lambda layer"):
        safety.safe_load_model(path, max_mb=50)


def test_a_lambda_hidden_in_a_wrapper_inside_a_nested_model_is_refused(keras, tmp_path):
    inner_in = keras.Input((4, 3))
    td = keras.layers.TimeDistributed(keras.layers.Dense(2))(inner_in)
    inner = keras.Model(inner_in, keras.layers.Bidirectional(keras.layers.LSTM(2))(td), name="inner")
    outer = keras.Sequential([keras.Input((4, 3)), inner, keras.layers.Dense(2)])
    clean = tmp_path / "nested.keras"
    outer.save(clean)
    safety.check_model_file(clean, max_mb=50)  # wrappers and nesting themselves are fine

    def hide_lambda(config):
        inner_cfg = next(layer for layer in _layers(config) if layer["class_name"] == "Functional")
        td_cfg = next(layer for layer in _layers(inner_cfg) if layer["class_name"] == "TimeDistributed")
        td_cfg["config"]["layer"] = {
            "module": "keras.layers",
            "class_name": "Lambda",
            "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {"code": "AAAA"}}},
            "registered_name": None,
        }

    assert _refused(_rewrite(clean, tmp_path / "hidden.keras", hide_lambda)) == LAMBDA_MESSAGE


def test_a_config_naming_an_unknown_module_is_refused(good_model, tmp_path):
    def os_system(config):
        _conv(config).update(module="os", class_name="system", config={"command": "touch /tmp/pwned"})

    _refused(_rewrite(good_model, tmp_path / "os.keras", os_system), "outside Keras", "os.system")


def test_a_function_from_a_keras_module_is_refused(good_model, tmp_path):
    """The known safe-mode bypass: a config 'function' pointing at a Keras utility (get_file)."""

    def get_file(config):
        dense = next(layer for layer in _layers(config) if layer["class_name"] == "Dense")
        dense["config"]["activation"] = {
            "module": "keras.utils",
            "class_name": "function",
            "config": "get_file",
            "registered_name": "function",
        }

    _refused(_rewrite(good_model, tmp_path / "fn.keras", get_file), "Python function", "keras.utils.get_file")


def test_unknown_layers_and_foreign_registered_layers_are_refused(good_model, tmp_path):
    def unknown(config):
        _conv(config)["class_name"] = "MysteryLayer"

    def registered(config):
        _conv(config).update(module=None, class_name="Evil", registered_name="evil>Evil")

    def tfsm(config):
        _conv(config).update(class_name="TFSMLayer", config={"filepath": "/etc"})

    _refused(_rewrite(good_model, tmp_path / "u.keras", unknown), "MysteryLayer", "not on this app's list")
    _refused(_rewrite(good_model, tmp_path / "r.keras", registered), "custom layer", "evil>Evil")
    _refused(_rewrite(good_model, tmp_path / "t.keras", tfsm), "TFSMLayer")


def test_a_subclassed_top_level_model_is_refused(good_model, tmp_path):
    def subclass(config):
        config.update(module="mypackage.models", class_name="MyModel", registered_name="MyModel")

    _refused(_rewrite(good_model, tmp_path / "s.keras", subclass), "MyModel")


def test_unexpected_zip_members_and_links_are_refused(good_model, tmp_path):
    _refused(
        _rewrite(good_model, tmp_path / "extra.keras", extra={"../evil.py": b"print(1)"}), "unexpected file"
    )
    _refused(
        _rewrite(good_model, tmp_path / "md.keras", extra={"![x](http://e.x/a.png)": b""}), "unexpected file"
    )
    _refused(
        _rewrite(good_model, tmp_path / "assets.keras", extra={"assets/vocab.txt": b"a"}), "unexpected file"
    )

    link = tmp_path / "link.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(link, "w") as zout:
        for info in zin.infolist():
            if info.filename == "metadata.json":
                sym = zipfile.ZipInfo("metadata.json")
                sym.external_attr = (stat.S_IFLNK | 0o777) << 16
                zout.writestr(sym, "/etc/passwd")
            else:
                zout.writestr(info.filename, zin.read(info))
    _refused(link, "symlink")


def test_a_zip_bomb_config_is_refused(good_model, tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                data = data[:-1] + b"," + b'"pad": "' + b" " * (64 * 1024 * 1024) + b'"}'
            zout.writestr(info.filename, data)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    _refused(bomb, "unpacks to far more")


def test_missing_weights_or_non_hdf5_weights_are_refused(good_model, tmp_path):
    nohdf = tmp_path / "nohdf.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(nohdf, "w") as zout:
        for info in zin.infolist():
            data = b"not hdf5 at all" if info.filename == "model.weights.h5" else zin.read(info)
            zout.writestr(info.filename, data)
    _refused(nohdf, "not an HDF5 file")

    incomplete = tmp_path / "incomplete.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(incomplete, "w") as zout:
        zout.writestr("config.json", zin.read("config.json"))
    _refused(incomplete, "incomplete", "model.weights.h5")


def test_oversized_empty_and_non_zip_files_are_refused(good_model, tmp_path):
    _refused(good_model, "the limit is", max_mb=0.001)
    text = tmp_path / "model.keras"
    text.write_text("this is not a model\n")
    _refused(text, "not a zip archive")
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    _refused(empty, "empty")
    link = tmp_path / "link.keras"
    link.symlink_to(good_model)
    _refused(link, "link")
    with pytest.raises(UserError, match="does not exist"):
        safety.check_model_file(tmp_path / "missing.keras")


def test_the_size_cap_defaults_to_the_setting(good_model, monkeypatch):
    monkeypatch.setenv("STUDIO_MAX_MODEL_MB", "0")
    with pytest.raises(safety.UnsafeFileError, match="limit"):
        safety.check_model_file(good_model)
    monkeypatch.setenv("STUDIO_MAX_MODEL_MB", "5")
    safety.check_model_file(good_model)


def test_the_bundled_weights_file_passes():
    safety.check_weights_file(registry.get_base("MobileNetV2").bundled, max_mb=50)


def test_weights_that_are_not_hdf5_or_too_large_are_refused(tmp_path):
    text = tmp_path / "w.weights.h5"
    text.write_text("definitely not weights\n")
    with pytest.raises(safety.UnsafeFileError, match="not in HDF5 format"):
        safety.check_weights_file(text, max_mb=50)
    with pytest.raises(safety.UnsafeFileError, match="the limit is 1 MB"):
        safety.check_weights_file(registry.get_base("MobileNetV2").bundled, max_mb=1)
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(safety.HDF5_SIGNATURE + b"\0" * 100)
    with pytest.raises(safety.UnsafeFileError, match="damaged"):
        safety.check_weights_file(broken, max_mb=50)


def test_weights_linking_to_another_file_are_refused(tmp_path):
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["secret"] = np.arange(3)
    linked = tmp_path / "linked.weights.h5"
    with h5py.File(linked, "w") as h5:
        h5["layers/dense/vars/0"] = np.zeros(3)
        h5["layers/dense/vars/1"] = h5py.ExternalLink(str(other), "/secret")
    with pytest.raises(safety.UnsafeFileError, match="link to another file"):
        safety.check_weights_file(linked, max_mb=50)

    external = tmp_path / "external.weights.h5"
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(4, "<f4").tobytes())
    with h5py.File(external, "w") as h5:
        h5.create_dataset("w", shape=(4,), dtype="<f4", external=[(str(raw), 0, 16)])
    with pytest.raises(safety.UnsafeFileError, match="stored in another file"):
        safety.check_weights_file(external, max_mb=50)


def test_the_allow_list_knows_every_studio_layer():
    from lib.models import layers

    assert set(safety.STUDIO_LAYERS) == set(layers.CUSTOM_OBJECTS)
    for name, cls in layers.CUSTOM_OBJECTS.items():
        assert safety.STUDIO_LAYERS[name] == cls.__name__


def test_the_shipped_demo_model_passes():
    demo = settings.demo_run_dir()
    if demo is None:
        pytest.skip("no demo run (python scripts/make_demo_model.py builds it)")
    config = safety.check_model_file(demo / "model.keras")
    assert config["class_name"] == "Functional"
