"""lib.serve.gradcam: heat maps for a nested base, another base, and a flat model."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.serve.conftest import COLOURS, SIZE, noisy

# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------


def _patch_image() -> np.ndarray:
    """Green background with a red square: the model (colour classes) should look at the square."""
    rgb = noisy(COLOURS["green"], size=(SIZE, SIZE))
    rgb[20:60, 30:70] = noisy(COLOURS["red"], size=(40, 40), seed=3)
    return rgb


def test_gradcam_mobilenet_map_shape_and_not_constant(predictor):
    from lib.serve.gradcam import gradcam, overlay

    rgb = _patch_image()
    heat = gradcam(predictor, rgb)
    assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01
    # Explaining another class gives another map; a larger display image gets a map of its size.
    assert not np.allclose(heat, gradcam(predictor, rgb, class_index=1))
    big = np.asarray(Image.fromarray(rgb).resize((200, 150)))
    assert gradcam(predictor.keras_model, big).shape == (150, 200)
    shown = overlay(rgb, heat)
    assert shown.shape == rgb.shape and shown.dtype == np.uint8 and not np.array_equal(shown, rgb)


def test_gradcam_other_base_efficientnet():
    import keras

    from lib.serve.gradcam import gradcam, overlay

    size = 64
    keras.utils.set_random_seed(1)
    inp = keras.Input((None, None, 3), dtype="float32")
    h = keras.layers.Resizing(size, size, antialias=True)(inp)
    base = keras.applications.EfficientNetB0(input_shape=(size, size, 3), include_top=False, weights=None)
    base.name = "base"
    h = base(h, training=False)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="predictions")(h)
    model = keras.Model(inp, out)
    rgb = noisy(COLOURS["red"], size=(size, size))
    heat = gradcam(model, rgb, last_conv_layer="top_activation")
    assert heat.shape == (size, size) and heat.std() > 0.01 and 0 <= heat.min() and heat.max() <= 1
    # An unknown registry layer name falls back to the last spatial layer.
    assert gradcam(model, rgb, last_conv_layer="no_such_layer").shape == (size, size)
    assert overlay(rgb, heat).shape == (size, size, 3)


def test_gradcam_flat_model_without_nested_base():
    import keras

    from lib.serve.gradcam import gradcam

    keras.utils.set_random_seed(2)
    inp = keras.Input((None, None, 3), dtype="float32")
    h = keras.layers.Resizing(48, 48)(inp)
    h = keras.layers.Rescaling(1 / 255)(h)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="last_conv")(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model(inp, out)
    heat = gradcam(model, noisy(COLOURS["blue"], size=(48, 48)))
    assert heat.shape == (48, 48) and heat.std() > 0.01
