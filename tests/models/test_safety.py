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


def test_an_export_with_the_known_score_of_a_real_base_passes_and_a_huge_one_is_refused(keras, tmp_path):
    # The exported .keras carries the unknown-photo detector: its width is the base's (1,280 here).
    from lib.models.layers import KnownScore

    inputs = keras.Input((1280,))
    model = keras.Model(inputs, KnownScore(classes=3, dims=1280, references=50, name="known")(inputs))
    path = tmp_path / "known.keras"
    model.save(path)
    loaded = safety.safe_load_model(path, max_mb=50, isolated=False)
    assert loaded.get_layer("known").dims == 1280

    def widen(config: dict) -> None:
        _layers(config)[-1]["config"]["dims"] = 10**9

    _refused(_rewrite(path, tmp_path / "wide.keras", widen), "KnownScore", "dims = 1,000,000,000")


# ----------------------------------------------------------------------------------------------
# Attack files: sizes declared to exhaust memory, malformed configs, files that break the parser
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh cache, so no file is already recorded as checked."""
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _weights_refused(path: Path, *words: str, isolated: bool | None = None) -> str:
    with pytest.raises(safety.UnsafeFileError) as err:
        safety.check_weights_file(path, max_mb=50, isolated=isolated)
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert "Traceback" not in message and "\n" not in message and "refused" in message
    return message


def _h5(path: Path, build) -> Path:
    import h5py

    with h5py.File(path, "w") as h5:
        build(h5)
    return path


def test_a_tiny_weights_file_declaring_a_3_gb_chunked_dataset_is_refused_before_allocation(
    tmp_path, own_cache
):
    bomb = _h5(
        tmp_path / "bomb.weights.h5",
        lambda h5: h5.create_dataset(
            "layers/dense/vars/0", shape=(750_000_000,), dtype="<f4", chunks=(4096,)
        ),
    )
    assert bomb.stat().st_size < 16 * 1024  # no chunk is stored: reading it would allocate 3 GB of zeros
    _weights_refused(bomb, "2,861 MB", "in one block")  # through the isolated child (an untrusted file)
    _weights_refused(bomb, "2,861 MB", isolated=False)  # and the same bound in this process

    # Many blocks, each under the limit, adding up to far more than the file holds.
    spread = _h5(
        tmp_path / "spread.weights.h5",
        lambda h5: [
            h5.create_dataset(f"layers/d{i}/vars/0", shape=(10_000_000,), dtype="<f4", chunks=(4096,))
            for i in range(20)
        ],
    )
    _weights_refused(spread, "declares 763 MB of weights but holds only", isolated=False)


def test_a_3_gb_dataset_inside_a_keras_file_is_refused(good_model, tmp_path):
    bomb = _h5(
        tmp_path / "bomb.h5",
        lambda h5: h5.create_dataset(
            "layers/dense/vars/0", shape=(750_000_000,), dtype="<f4", chunks=(4096,)
        ),
    )
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = bomb.read_bytes() if info.filename == "model.weights.h5" else zin.read(info)
            zout.writestr(info.filename, data)
    _refused(path, "2,861 MB", "refused")


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("text", lambda h5: h5.create_dataset("w", data=np.array([b"rm -rf /"] * 4))),
        ("variable-length text", lambda h5: h5.create_dataset("w", data=["a", "bb"], dtype=__import__("h5py").string_dtype())),
        ("objects", lambda h5: h5.create_dataset("w", (3,), dtype=__import__("h5py").vlen_dtype("<f4"))),
        ("records", lambda h5: h5.create_dataset("w", (3,), dtype=np.dtype([("a", "<f4"), ("b", "<i4")]))),
        ("references", lambda h5: h5.create_dataset("w", (3,), dtype=__import__("h5py").ref_dtype)),
        ("complex numbers", lambda h5: h5.create_dataset("w", (3,), dtype="c8")),
    ],
)  # fmt: skip
def test_weights_holding_text_objects_or_records_are_refused(tmp_path, kind, make):
    path = _h5(tmp_path / "odd.weights.h5", make)
    _weights_refused(path, "something other than numbers", isolated=False)


def test_weights_with_a_rank_20_dataset_or_an_unusual_filter_are_refused(tmp_path):
    deep = _h5(tmp_path / "deep.weights.h5", lambda h5: h5.create_dataset("w", shape=(1,) * 20, dtype="<f4"))
    _weights_refused(deep, "20-dimensional", isolated=False)
    packed = _h5(
        tmp_path / "packed.weights.h5",
        lambda h5: h5.create_dataset("w", data=np.arange(100, dtype="<i4"), scaleoffset=0),
    )
    _weights_refused(packed, "compressed in an unusual way", isolated=False)
    # Numbers of every usual kind (float16/32/64, ints, bool, bfloat16) with gzip pass.
    import ml_dtypes

    fine = _h5(
        tmp_path / "fine.weights.h5",
        lambda h5: [
            h5.create_dataset("f16", data=np.ones(4, "<f2")),
            h5.create_dataset("f64", data=np.ones((2, 3, 3, 4, 5), "<f8"), compression="gzip", shuffle=True),
            h5.create_dataset("i64", data=np.arange(4)),
            h5.create_dataset("flag", data=np.array([True, False])),
            h5.create_dataset("bf16", data=np.ones(4, ml_dtypes.bfloat16)),
        ],
    )
    safety.check_weights_file(fine, max_mb=50, isolated=False)


def test_a_giant_dense_layer_is_refused_before_keras_builds_it(good_model, tmp_path):
    def billion_units(config):
        dense = next(layer for layer in _layers(config) if layer["class_name"] == "Dense")
        dense["config"]["units"] = 10**9

    _refused(
        _rewrite(good_model, tmp_path / "billion.keras", billion_units), "units = 1,000,000,000", "65,536"
    )

    def wide_input(config):  # each field within bounds, but 60000 x 60000 float32 weights are 13 GB
        dense = next(layer for layer in _layers(config) if layer["class_name"] == "Dense")
        dense["config"]["units"] = 60_000
        dense["build_config"]["input_shape"] = [None, 60_000]

    _refused(
        _rewrite(good_model, tmp_path / "wide.keras", wide_input),
        "about 13 GB of memory",
        "weights file holds",
    )

    def no_input_size(config):  # Keras would size it from the graph, which the file doesn't bound
        dense = next(layer for layer in _layers(config) if layer["class_name"] == "Dense")
        del dense["build_config"]

    _refused(_rewrite(good_model, tmp_path / "unsized.keras", no_input_size), "does not say the input size")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("kernel_size", [100_000, 100_000], "kernel_size = 100,000"),
        ("filters", 10**7, "filters = 10,000,000"),
        ("kernel_size", "3", "kernel_size of Conv2D"),
        ("strides", {"x": 1}, "strides of Conv2D"),
    ],
)
def test_layer_size_fields_are_bounded_and_must_be_numbers(good_model, tmp_path, field, value, words):
    def mutate(config):
        _conv(config)["config"][field] = value

    _refused(_rewrite(good_model, tmp_path / "sized.keras", mutate), words)


def test_an_input_shape_bomb_is_refused(good_model, tmp_path):
    def huge_input(config):
        _layers(config)[0]["config"]["batch_shape"] = [None, 10_000_000, 8, 3]

    _refused(_rewrite(good_model, tmp_path / "input.keras", huge_input), "batch_shape = 10,000,000")

    def huge_tensor(config):
        _layers(config)[0]["config"]["batch_shape"] = [None, 50_000, 50_000, 3]

    _refused(_rewrite(good_model, tmp_path / "tensor.keras", huge_tensor), "values per example")


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda c: _conv(c).update(module=["keras.layers"]), "the module of Conv2D is a list, not a name"),
        (lambda c: _conv(c).update(module={"a": "keras"}), "the module of Conv2D is a group of settings"),
        (lambda c: _conv(c).update(registered_name=["x"]), "the registered name of Conv2D is a list"),
        (lambda c: _conv(c).update(class_name={"x": 1}), "a class name that is not a name"),
        (lambda c: _conv(c).update(config="filters=3"), "the settings of Conv2D are a text"),
        (lambda c: _conv(c).update(config=42), "the settings of Conv2D are a number"),
        (lambda c: _conv(c).update(config=[1, 2]), "the settings of Conv2D are a list"),
        (lambda c: _conv(c).update(build_config="big"), "the build settings of Conv2D are a text"),
        (
            lambda c: next(x for x in _layers(c) if x["class_name"] == "Dense")["config"].update(
                activation={"module": ["keras.activations"], "class_name": "function", "config": "relu"}
            ),
            "the module of function is a list",
        ),
        (
            lambda c: next(x for x in _layers(c) if x["class_name"] == "Dense")["config"].update(
                activation={"module": "keras.activations", "class_name": "function", "config": ["relu"]}
            ),
            "instead of a standard Keras activation",
        ),
    ],
)
def test_a_malformed_config_is_refused_with_a_message_not_a_traceback(good_model, tmp_path, mutate, words):
    message = _refused(_rewrite(good_model, tmp_path / "bad.keras", mutate), words)
    assert "refused" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"[1, 2, 3]", "does not describe a model"),
        (b'"just text"', "does not describe a model"),
        (b"42", "does not describe a model"),
        (b"null", "does not describe a model"),
        (b'{"class_name": ["Functional"], "config": {}}', "not a plain Keras Functional"),
        (b"\xff\xfe not utf-8", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # deeper than the JSON parser goes
    ],
)
def test_a_config_json_that_is_not_an_object_is_refused(good_model, tmp_path, text, words):
    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, text if info.filename == "config.json" else zin.read(info))
    _refused(path, words)


def test_a_deeply_nested_config_is_refused(good_model, tmp_path):
    def nest(config):  # 500 levels: the JSON parser accepts it, Keras's recursive loader would not
        deep: list = []
        for _ in range(500):
            deep = [deep]
        _conv(config)["config"]["extra"] = deep

    _refused(_rewrite(good_model, tmp_path / "deep.keras", nest), "nested unreasonably deep")

    def nest_shape(config):
        deep: list = [None, 3]
        for _ in range(50):
            deep = [deep]
        _conv(config)["build_config"]["input_shape"] = deep

    _refused(_rewrite(good_model, tmp_path / "deep_shape.keras", nest_shape), "input_shape")


def test_a_damaged_zip_entry_is_refused_with_a_message(good_model, tmp_path):
    path = tmp_path / "crc.keras"
    with zipfile.ZipFile(good_model) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("config.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10 : start + 20] = b"\0" * 10  # corrupt the compressed config.json
    path.write_bytes(bytes(data))
    _refused(path, "damaged")


# ----------------------------------------------------------------------------------------------
# The isolated check: a crash, a hang or a memory blow-up ends the child, never this process
# ----------------------------------------------------------------------------------------------


def _plain_weights(path: Path, megabytes: int) -> Path:
    return _h5(
        path, lambda h5: h5.create_dataset("layers/dense/vars/0", data=np.ones(megabytes * 262_144, "<f4"))
    )


def test_a_file_whose_check_needs_more_memory_than_the_limit_is_refused_and_we_survive(
    tmp_path, own_cache, monkeypatch
):
    path = _plain_weights(tmp_path / "big.weights.h5", 48)  # valid, but reading it needs 48 MB
    monkeypatch.setenv("STUDIO_CHECK_MEMORY_MB", "16")
    message = _weights_refused(path, "could not be read safely", "more than 16 MB of memory")
    assert not safety.is_trusted(path)
    monkeypatch.setenv("STUDIO_CHECK_MEMORY_MB", "1024")  # the same file within the default limit
    safety.check_weights_file(path, max_mb=50)
    assert safety.is_trusted(path), "a file that passed is not checked in a child again"
    assert "Traceback" not in message


def test_the_child_runs_under_the_memory_limit(tmp_path, own_cache, monkeypatch):
    monkeypatch.setenv("STUDIO_CHECK_MEMORY_MB", "64")
    report = safety.check_isolated(_plain_weights(tmp_path / "w.weights.h5", 1), "weights", max_mb=50)
    assert report["status"] == "ok"
    assert report["address_space"] > 0, "the child measured its size before the limit"
    assert report["memory_limit"] == report["address_space"] + 64 * safety.MB


def test_a_child_that_crashes_becomes_a_refusal_and_is_logged(tmp_path, own_cache, monkeypatch, caplog):
    path = _plain_weights(tmp_path / "w.weights.h5", 1)
    monkeypatch.setattr(safety, "_CHILD", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    with caplog.at_level("WARNING", logger=safety.__name__):
        _weights_refused(path, "could not be read safely", "crashed")
    assert any("ended with code -11" in r.getMessage() for r in caplog.records)
    with pytest.raises(safety.UnsafeFileError, match="could not be read safely"):
        safety.check_model_file(tmp_path / "w.weights.h5", max_mb=50)  # a model the same way
    assert not safety.is_trusted(path)


def test_a_child_that_hangs_is_stopped(tmp_path, own_cache, monkeypatch):
    path = _plain_weights(tmp_path / "w.weights.h5", 1)
    monkeypatch.setattr(safety, "CHECK_SECONDS", 1)
    monkeypatch.setattr(safety, "_CHILD", "import time\ntime.sleep(120)")
    _weights_refused(path, "took too long")
    # A busy loop is stopped by the CPU limit the real child sets on itself.
    spin = (
        "import sys\nfrom lib.models.safety import _limit_child\n_limit_child(64, 1)\nwhile True:\n    pass"
    )
    monkeypatch.setattr(safety, "CHECK_SECONDS", 30)
    monkeypatch.setattr(safety, "_CHILD", spin)
    _weights_refused(path, "could not be read safely")


def test_trusted_files_skip_the_child_and_untrusted_ones_use_it_once(
    good_model, tmp_path, own_cache, monkeypatch
):
    calls: list[str] = []
    real = safety.check_isolated
    monkeypatch.setattr(
        safety, "check_isolated", lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k)
    )
    safety.check_weights_file(registry.get_base("MobileNetV2").bundled)
    demo = settings.demo_run_dir()
    if demo is not None:
        safety.check_model_file(demo / "model.keras")
    assert calls == []  # shipped with the app

    copy = tmp_path / "copied.keras"
    copy.write_bytes(good_model.read_bytes())
    safety.check_model_file(copy, max_mb=50)
    safety.check_model_file(copy, max_mb=50)
    assert calls == [str(copy)]  # checked in a child once, then remembered by its content
    _rewrite(good_model, copy, lambda config: config.update(note="changed"))  # new content: checked again
    safety.check_model_file(copy, max_mb=50)
    assert len(calls) == 2
