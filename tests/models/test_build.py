"""lib.models.registry and build: every base builds and predicts, weights problems are plain
UserErrors (weights auto falls back to the bundled backbone offline), and the saved-model shape
(resize -> preprocess -> base -> head) splits cleanly for export."""

from __future__ import annotations

import os
import urllib.request

import numpy as np
import pytest

from lib.errors import UserError
from lib.models import build, registry, safety

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The smallest size each base accepts keeps this fast (InceptionV3 needs 75 px).
SMALL = {name: max(32, spec.min_size) for name, spec in registry.BASES.items()}


@pytest.mark.parametrize("name", list(registry.BASES))
def test_every_base_builds_and_predicts_one_image(name):
    import keras

    spec = registry.get_base(name)
    size = SMALL[name]
    base = build.build_base(name, size, "none")
    model = build.build_classifier(spec, size, base, 3, build.HeadSpec())
    assert model.get_layer(build.BASE_LAYER) is base
    assert not safety.has_lambda_layers(model)
    # Any input size: the model resizes (antialiased) to its own size.
    pixels = np.random.default_rng(0).integers(0, 256, (1, 47, 90, 3)).astype("float32")
    probs = model.predict(pixels, verbose=0)
    assert probs.shape == (1, 3)
    assert np.isfinite(probs).all()
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert build.image_size(model) == size
    assert isinstance(model.get_layer(build.RESIZE_LAYER), keras.layers.Resizing)


def test_inception_can_be_cut_at_mixed7():
    base = build.build_base("InceptionV3", 75, "none", cut="mixed7")
    assert base.layers[-1].name == "mixed7"
    assert base.output.shape[-1] == 768
    with pytest.raises(UserError, match="can't be cut"):
        build.build_base("MobileNetV2", 96, "none", cut="mixed7")


def test_registry_records_are_complete():
    assert registry.DEFAULT_BASE == "MobileNetV2"
    assert registry.BASES["MobileNetV2"].default_size == 160
    for spec in registry.BASES.values():
        assert spec.min_size <= spec.default_size <= registry.MAX_SIZE
        assert spec.default_size in spec.sizes
        assert spec.preprocessing in ("minus_one_one", "zero_one", "caffe", "builtin")
    assert registry.get_base("mobilenetv2").name == "MobileNetV2"
    with pytest.raises(UserError, match="Unknown base model"):
        registry.get_base("AlexNet")
    with pytest.raises(UserError, match="75 to 512"):
        registry.check_size(registry.get_base("InceptionV3"), 64)


def test_bundled_weights_load_at_any_size_and_only_for_mobilenetv2():
    base = build.build_base("MobileNetV2", 160, "bundled")
    assert base.output.shape[1:] == (5, 5, 1280)
    # Real pretrained weights, not a random init: BatchNorm statistics are not the defaults.
    bn = base.get_layer("bn_Conv1")
    assert not np.allclose(bn.moving_variance.numpy(), 1.0)
    small = build.build_base("MobileNetV2", 96, "bundled")  # the weights are size-independent
    np.testing.assert_allclose(
        small.get_layer("Conv1").kernel.numpy(), base.get_layer("Conv1").kernel.numpy()
    )
    with pytest.raises(UserError, match="bundled offline weights for MobileNetV2 only"):
        build.build_base("ResNet50", 160, "bundled")


def test_weights_auto_is_imagenet_online_and_the_bundled_backbone_offline(monkeypatch):
    spec = registry.get_base("MobileNetV2")
    monkeypatch.setattr(build, "imagenet_reachable", lambda: True)
    assert build.resolve_weights(spec, "auto") == ("imagenet", "Weights: ImageNet.")
    assert build.resolve_weights(spec, "none") == ("none", "")
    monkeypatch.setattr(build, "imagenet_reachable", lambda: False)
    weights, note = build.resolve_weights(spec, "auto")
    assert weights == "bundled" and "bundled offline MobileNetV2 backbone" in note and "160 px" in note
    with pytest.raises(UserError, match="ImageNet weights for EfficientNetB0 can't be downloaded"):
        build.resolve_weights(registry.get_base("EfficientNetB0"), "auto")
    assert build.resolve_weights(registry.get_base("SmallCNN"), "auto") == ("none", "")


def test_the_imagenet_probe_says_no_when_nothing_answers_and_remembers(monkeypatch):
    monkeypatch.setattr(build, "IMAGENET_HOST", ("127.0.0.1", 9))  # a closed port: fails at once
    # A probe record of its own: the "yes" this test ends with must not outlive it (later tests in
    # this worker would then try to download ImageNet weights offline).
    monkeypatch.setattr(build, "_probe", {"at": 0.0, "ok": False})
    assert build.imagenet_reachable() is False
    import socket

    with socket.socket() as server:  # a server that answers: the earlier "no" is remembered ...
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(build, "IMAGENET_HOST", server.getsockname())
        assert build.imagenet_reachable() is False
        monkeypatch.setitem(build._probe, "at", 0.0)  # ... until it is asked again
        assert build.imagenet_reachable() is True


def test_a_weights_file_for_another_architecture_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not fit SmallCNN"):
        build.build_base("SmallCNN", 32, str(registry.get_base("MobileNetV2").bundled))
    garbage = tmp_path / "broken.weights.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="broken.weights.h5 cannot be used: .* not in HDF5 format"):
        build.build_base("MobileNetV2", 96, str(garbage))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a Keras weights file"):
        build.build_base("MobileNetV2", 96, str(text))
    with pytest.raises(UserError, match="does not exist"):
        build.build_base("MobileNetV2", 96, str(tmp_path / "missing.weights.h5"))


def test_a_weights_file_from_outside_is_checked_before_keras_reads_it(tmp_path, monkeypatch):
    import h5py

    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    bomb = tmp_path / "bomb.weights.h5"
    with h5py.File(bomb, "w") as h5:  # 1 KB on disk, 3 GB of zeros if Keras read it
        h5.create_dataset("layers/conv2d/vars/0", shape=(750_000_000,), dtype="<f4", chunks=(4096,))
    with pytest.raises(UserError, match="bomb.weights.h5 cannot be used: .*2,861 MB .*refused"):
        build.build_base("SmallCNN", 32, str(bomb))


def test_a_weights_file_of_the_same_architecture_loads_at_another_size():
    base = build.build_base("MobileNetV2", 96, str(registry.get_base("MobileNetV2").bundled))
    reference = build.build_base("MobileNetV2", 160, "bundled")
    np.testing.assert_allclose(
        base.get_layer("Conv1").kernel.numpy(), reference.get_layer("Conv1").kernel.numpy()
    )


def test_imagenet_download_failure_says_so_in_plain_words(monkeypatch, tmp_path):
    # No network: an unreachable proxy makes the download fail at once (and an empty Keras cache).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # urlopen keeps the first opener it builds (with the proxies of that moment) for the process:
    # start from none and put the previous one back, so later tests in this worker are not proxied.
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(UserError) as info:
        build.build_base("MobileNetV3Small", 32, "imagenet")
    message = str(info.value)
    assert "Could not download the ImageNet weights for MobileNetV3Small" in message
    assert "bundled offline backbone (MobileNetV2)" in message and "weights auto" in message


def test_small_cnn_has_no_imagenet_weights_so_it_starts_from_scratch():
    spec = registry.get_base("SmallCNN")
    assert registry.normalize_weights(spec, "imagenet") == "none"
    assert registry.normalize_weights(registry.get_base("MobileNetV2"), "ImageNet") == "imagenet"


def test_caffe_preprocessing_layer_matches_keras_and_survives_safe_loading(tmp_path):
    import keras

    from lib.models.layers import CaffePreprocess

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, CaffePreprocess(name="preprocess")(inputs))
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-3)
    path = tmp_path / "caffe.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-3)


def test_fixed_size_model_drops_the_resize_and_predicts_like_the_model():
    spec = registry.get_base("MobileNetV2")
    base = build.build_base("MobileNetV2", 96, "none")
    model = build.build_classifier(spec, 96, base, 4, build.HeadSpec(hidden=8))
    pixels = np.random.default_rng(2).integers(0, 256, (2, 96, 96, 3)).astype("float32")
    expected = model.predict(pixels, verbose=0)
    assert build.image_size(model) == 96
    fixed = build.fixed_size_model(model, 96)
    assert fixed.input.shape[1:] == (96, 96, 3)
    assert not [layer for layer in fixed.layers if layer.name == build.RESIZE_LAYER]
    np.testing.assert_allclose(fixed.predict(pixels, verbose=0), expected, atol=1e-5)


def test_head_trained_on_features_moves_into_the_model():
    spec = registry.get_base("SmallCNN")
    base = build.build_base("SmallCNN", 32, "none")
    head = build.build_head_model((256,), 3, build.HeadSpec(hidden=16, dropout=0.3))
    model = build.build_classifier(spec, 32, base, 3, build.HeadSpec(hidden=16, dropout=0.3))
    build.copy_head_weights(head, model)
    for name in ("hidden", build.OUTPUT_LAYER):
        for a, b in zip(head.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="pooling"):
        build.head_layers(build.HeadSpec(pooling="max"), 3)
