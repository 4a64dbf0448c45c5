"""The base registry: every base builds and predicts, weights problems are plain UserErrors,
and the saved-model shape (resize -> preprocess -> base -> head) splits cleanly for export/Grad-CAM."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lib import models, settings
from lib.errors import UserError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The smallest size each base accepts keeps this fast (InceptionV3 needs 75 px).
SMALL = {name: max(32, spec.min_size) for name, spec in models.BASES.items()}


@pytest.mark.parametrize("name", list(models.BASES))
def test_every_base_builds_and_predicts_one_image(name):
    import keras

    spec = models.get_base(name)
    size = SMALL[name]
    base = models.build_base(name, size, "none")
    model = models.build_classifier(spec, size, base, 3, models.HeadSpec())
    assert model.get_layer(models.BASE_LAYER) is base
    assert not models.has_lambda_layers(model)
    # Any input size: the model resizes (antialiased) to its own size.
    pixels = np.random.default_rng(0).integers(0, 256, (1, 47, 90, 3)).astype("float32")
    probs = model.predict(pixels, verbose=0)
    assert probs.shape == (1, 3)
    assert np.isfinite(probs).all()
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert models.image_size(model) == size
    assert isinstance(model.get_layer(models.RESIZE_LAYER), keras.layers.Resizing)


def test_inception_can_be_cut_at_mixed7():
    base = models.build_base("InceptionV3", 75, "none", cut="mixed7")
    assert base.layers[-1].name == "mixed7"
    assert base.output.shape[-1] == 768
    with pytest.raises(UserError, match="can't be cut"):
        models.build_base("MobileNetV2", 96, "none", cut="mixed7")


def test_registry_records_are_complete():
    assert models.DEFAULT_BASE == "MobileNetV2"
    assert models.BASES["MobileNetV2"].default_size == 160
    for spec in models.BASES.values():
        assert spec.min_size <= spec.default_size <= models.MAX_SIZE
        assert spec.default_size in spec.sizes
        assert spec.preprocessing in ("minus_one_one", "zero_one", "caffe", "builtin")
    assert models.REGISTRY is models.BASES
    assert models.get_base("mobilenetv2").name == "MobileNetV2"
    with pytest.raises(UserError, match="Unknown base model"):
        models.get_base("AlexNet")
    with pytest.raises(UserError, match="75 to 512"):
        models.check_size(models.get_base("InceptionV3"), 64)


def test_bundled_weights_load_and_only_fit_mobilenetv2_160():
    base = models.build_base("MobileNetV2", 160, "bundled")
    assert base.output.shape[1:] == (5, 5, 1280)
    # Real pretrained weights, not a random init: BatchNorm statistics are not the defaults.
    bn = base.get_layer("bn_Conv1")
    assert not np.allclose(bn.moving_variance.numpy(), 1.0)
    with pytest.raises(UserError, match="bundled offline weights are for MobileNetV2 at 160"):
        models.build_base("MobileNetV2", 96, "bundled")
    with pytest.raises(UserError, match="bundled offline weights"):
        models.build_base("ResNet50", 160, "bundled")


def test_a_weights_file_for_another_architecture_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not fit SmallCNN"):
        models.build_base("SmallCNN", 32, str(settings.bundled_weights()))
    garbage = tmp_path / "broken.weights.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="does not fit MobileNetV2"):
        models.build_base("MobileNetV2", 96, str(garbage))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a Keras weights file"):
        models.build_base("MobileNetV2", 96, str(text))
    with pytest.raises(UserError, match="does not exist"):
        models.build_base("MobileNetV2", 96, str(tmp_path / "missing.weights.h5"))


def test_a_weights_file_of_the_same_architecture_loads_at_another_size():
    base = models.build_base("MobileNetV2", 96, str(settings.bundled_weights()))
    reference = models.build_base("MobileNetV2", 160, "bundled")
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
    with pytest.raises(UserError) as info:
        models.build_base("MobileNetV3Small", 32, "imagenet")
    message = str(info.value)
    assert "Could not download the ImageNet weights for MobileNetV3Small" in message
    assert "bundled offline backbone (MobileNetV2, 160 px)" in message


def test_small_cnn_has_no_imagenet_weights_so_it_starts_from_scratch():
    spec = models.get_base("SmallCNN")
    assert models.normalize_weights(spec, "imagenet") == "none"
    assert models.normalize_weights(models.get_base("MobileNetV2"), "ImageNet") == "imagenet"


def test_caffe_preprocessing_layer_matches_keras_and_survives_safe_loading(tmp_path):
    import keras

    from lib.layers import CaffePreprocess

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, CaffePreprocess(name="preprocess")(inputs))
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-3)
    path = tmp_path / "caffe.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), expected, rtol=1e-5, atol=1e-3)


def test_split_model_and_gradcam_parts_predict_like_the_model():
    spec = models.get_base("MobileNetV2")
    base = models.build_base("MobileNetV2", 96, "none")
    model = models.build_classifier(spec, 96, base, 4, models.HeadSpec(hidden=8))
    pixels = np.random.default_rng(2).integers(0, 256, (2, 96, 96, 3)).astype("float32")
    expected = model.predict(pixels, verbose=0)
    size, fixed = models.split_model(model)
    assert size == 96
    assert fixed.input.shape[1:] == (96, 96, 3)
    assert not [layer for layer in fixed.layers if layer.name == models.RESIZE_LAYER]
    np.testing.assert_allclose(fixed.predict(pixels, verbose=0), expected, atol=1e-5)
    features, classifier = models.gradcam_parts(model)
    fmap = features.predict(pixels, verbose=0)
    assert fmap.shape == (2, 3, 3, 1280)
    np.testing.assert_allclose(classifier.predict(fmap, verbose=0), expected, atol=1e-5)


def test_head_trained_on_features_moves_into_the_model():
    spec = models.get_base("SmallCNN")
    base = models.build_base("SmallCNN", 32, "none")
    head = models.build_head_model((256,), 3, models.HeadSpec(hidden=16, dropout=0.3))
    model = models.build_classifier(spec, 32, base, 3, models.HeadSpec(hidden=16, dropout=0.3))
    models.copy_head_weights(head, model)
    for name in ("hidden", models.OUTPUT_LAYER):
        for a, b in zip(head.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="pooling"):
        models.head_layers(models.HeadSpec(pooling="max"), 3)
