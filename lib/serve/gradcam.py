"""Grad-CAM: which part of the photo drove the verdict, as a heat map over it.

The saved model nests its base as one layer ("base"), so the explainer splits the model in three
(layers before the base, the base with its last conv output exposed, the head) and differentiates
the class logit with respect to that conv output under one GradientTape. Explainers are kept per
loaded model (weakly: they go when the model leaves the loader's cache).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.models.loader import LoadedModel

_cache_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[Any, dict[str | None, _Explainer]] = weakref.WeakKeyDictionary()


@dataclass
class _Explainer:
    fn: Any  # tf.function: (1xHxWx3 float32, class int32) -> (conv, grads, probs)


def _is_spatial(layer: Any) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4 and (shape[1] is None or shape[1] > 1 or shape[2] is None or shape[2] > 1)


def _find_last_conv(model: Any) -> Any:
    """The last layer with a spatial (4D, more than 1x1) output: the usual Grad-CAM target."""
    for layer in reversed(model.layers):
        if layer.__class__.__name__ == "InputLayer":
            continue
        if _is_spatial(layer):
            return layer
    raise ValueError("the model has no layer with a spatial output to explain")


def _find_base(model: Any) -> Any | None:
    import keras

    try:
        base = model.get_layer("base")
    except ValueError:
        base = None
    if isinstance(base, keras.Model):
        return base
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and _is_spatial(layer)]
    return nested[-1] if nested else None


def _softmax_dense(layer: Any) -> bool:
    import keras

    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Dense) and getattr(activation, "__name__", "") == "softmax"


def _build(model: Any, last_conv_layer: str | None) -> _Explainer:
    import keras
    import tensorflow as tf

    base = _find_base(model)
    last = model.layers[-1]
    use_logits = _softmax_dense(last)
    if base is not None:
        index = model.layers.index(base)
        target = base.get_layer(last_conv_layer) if last_conv_layer else _find_last_conv(base)
        if not _is_spatial(target):  # 1x1 at this input size (InceptionV3's mixed10 below ~140 px)
            target = _find_last_conv(base)
        inner = keras.Model(base.inputs, [target.output, base.output])
        prev = model.layers[index - 1]
        pre = keras.Model(model.input, prev.output) if index > 1 else None
        after = model.layers[index + 1]
        head_end = last.input if use_logits else model.output
        head = keras.Model(after.input, head_end)

        def forward(x: Any) -> tuple[Any, Any]:
            z = pre(x, training=False) if pre is not None else x
            conv, features = inner(z, training=False)
            return conv, head(features, training=False)

    else:  # a flat model: the conv output is a tensor of the outer graph itself
        target = model.get_layer(last_conv_layer) if last_conv_layer else _find_last_conv(model)
        if not _is_spatial(target):
            target = _find_last_conv(model)
        end = last.input if use_logits else model.output
        flat = keras.Model(model.input, [target.output, end])

        def forward(x: Any) -> tuple[Any, Any]:
            conv, out = flat(x, training=False)
            return conv, out

    @tf.function(
        input_signature=[
            tf.TensorSpec((1, None, None, 3), tf.float32),
            tf.TensorSpec((), tf.int32),
        ]
    )
    def fn(x: Any, class_index: Any) -> tuple[Any, Any, Any]:
        with tf.GradientTape() as tape:
            tape.watch(x)  # records the whole path even when the base's weights are frozen
            conv, out = forward(x)
            if use_logits:
                kernel = tf.convert_to_tensor(last.kernel)
                logits = (
                    tf.matmul(out, kernel) + tf.convert_to_tensor(last.bias)
                    if last.use_bias
                    else tf.matmul(out, kernel)
                )
            else:
                logits = out
            probs = tf.nn.softmax(logits) if use_logits else out
            cls = tf.where(class_index < 0, tf.cast(tf.argmax(probs[0]), tf.int32), class_index)
            score = logits[0, cls]
        grads = tape.gradient(score, conv)
        return conv, grads, probs

    return _Explainer(fn=fn)


def _explainer(model: Any, last_conv_layer: str | None) -> _Explainer:
    with _cache_lock:
        try:
            per_model = _cache.setdefault(model, {})
        except TypeError:  # not weak-referenceable: build each time
            return _build(model, last_conv_layer)
        if last_conv_layer not in per_model:
            per_model[last_conv_layer] = _build(model, last_conv_layer)
        return per_model[last_conv_layer]


def _resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32))
    return np.asarray(im.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def _normalize(cam: np.ndarray) -> np.ndarray:
    low, high = float(cam.min()), float(cam.max())
    if high - low < 1e-12:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - low) / (high - low)).astype(np.float32)


def gradcam(
    model: Any,
    rgb: np.ndarray,
    class_index: int | None = None,
    *,
    last_conv_layer: str | None = None,
) -> np.ndarray:
    """Heat map (HxW float32 in [0, 1], the image's height and width) of where `class_index` was seen.

    `model` is a loaded run (lib.models.loader.LoadedModel: its base's Grad-CAM layer from the
    registry is used) or a Keras model; class_index None explains the predicted class. `rgb` is
    HxWx3 uint8 (normally SxS).
    """
    if isinstance(model, LoadedModel):
        last_conv_layer = last_conv_layer or model.last_conv_layer
        model = model.keras_model
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    try:
        explainer = _explainer(model, last_conv_layer)
    except ValueError:
        if last_conv_layer is None:
            raise
        explainer = _explainer(model, None)  # a registry name that this model doesn't have
    x = rgb[None].astype(np.float32)
    cls = -1 if class_index is None else int(class_index)
    conv, grads, _ = explainer.fn(x, np.int32(cls))
    conv = np.asarray(conv, dtype=np.float64)[0]
    grads = np.asarray(grads, dtype=np.float64)[0]
    weights = grads.mean(axis=(0, 1))
    raw = (conv * weights).sum(axis=-1)
    cam = np.maximum(raw, 0.0)
    if cam.max() - cam.min() < 1e-12:
        cam = np.abs(raw)  # nothing pushes for the class: show what pushes hardest either way
    if cam.max() - cam.min() < 1e-12:
        cam = np.abs(conv).sum(axis=-1)  # flat gradients: fall back to where the features are strongest
    height, width = rgb.shape[:2]
    return np.clip(_normalize(_resize_map(_normalize(cam), height, width)), 0.0, 1.0)


def colormap(values: np.ndarray) -> np.ndarray:
    """A jet-like colour ramp (blue, cyan, yellow, red) for values in [0, 1] -> uint8 RGB."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centers = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centers)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The photo with the heat map blended over it (hot areas strongest); uint8 RGB of the photo's shape."""
    rgb = np.asarray(rgb)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != rgb.shape[:2]:
        heat = np.clip(_resize_map(heat, rgb.shape[0], rgb.shape[1]), 0.0, 1.0)
    colors = colormap(heat).astype(np.float32)
    weight = (float(alpha) * (0.35 + 0.65 * heat))[..., None]
    out = rgb.astype(np.float32) * (1.0 - weight) + colors * weight
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
