"""The one way a model is put together: base, preprocessing, head, the saved classifier.

Every saved model takes decoded RGB pixels 0-255 of any size:
    pixels -> Resizing(S, S, antialias) -> preprocessing layers -> "base" (nested Model) -> head.
Weights "auto" become ImageNet when they can be had and the bundled offline backbone otherwise,
with a note saying which (`resolve_weights`). Keras is imported inside functions, so importing
this module is instant.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.errors import UserError, WeightsUnavailable
from lib.models import safety
from lib.models.registry import BASES, BaseSpec, check_size, get_base, normalize_weights

RESIZE_LAYER = "resize"
BASE_LAYER = "base"
OUTPUT_LAYER = "predictions"
IMAGENET_HOST = ("storage.googleapis.com", 443)  # where keras.applications downloads weights from


def preprocess_layers(spec: BaseSpec) -> list[Any]:
    """Fresh preprocessing layers that turn 0-255 RGB into what the base expects (serializable)."""
    import keras

    if spec.preprocessing == "minus_one_one":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")]
    if spec.preprocessing == "zero_one":
        return [keras.layers.Rescaling(1.0 / 255.0, name="preprocess")]
    if spec.preprocessing == "caffe":
        from lib.models.layers import CaffePreprocess  # imports Keras: kept lazy

        return [CaffePreprocess(name="preprocess")]
    return []  # "builtin": the Keras application rescales/normalizes inside itself


def _small_cnn(size: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="base_input")
    x = inputs
    for i, filters in enumerate((32, 64, 128, 256)):
        last = i == 3
        x = layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name="last_conv" if last else f"conv{i + 1}"
        )(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        if not last:
            x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    return keras.Model(inputs, x, name=BASE_LAYER)


_probe: dict[str, float | bool] = {"at": 0.0, "ok": False}


def imagenet_reachable(timeout: float = 3.0, ttl: float = 600.0) -> bool:
    """Whether the ImageNet weights server answers (remembered for `ttl` seconds)."""
    now = time.monotonic()
    if now - float(_probe["at"]) > ttl or not _probe["at"]:
        try:
            socket.create_connection(IMAGENET_HOST, timeout=timeout).close()
            _probe["ok"] = True
        except OSError:
            _probe["ok"] = False
        _probe["at"] = now
    return bool(_probe["ok"])


def resolve_weights(spec: BaseSpec, weights: str) -> tuple[str, str]:
    """(weights to use, a note for the log and the page). "auto" is ImageNet when the download
    server answers (Keras keeps a downloaded file, so it works offline afterwards), else the bundled
    backbone when this base has one; the from-scratch CNN has no pretrained weights."""
    weights = normalize_weights(spec, weights)
    if weights != "auto":
        return weights, ""
    if imagenet_reachable():
        return "imagenet", "Weights: ImageNet."
    if spec.bundled is not None:
        size_note = f" (trained at {spec.bundled_size} px)" if spec.bundled_size else ""
        return "bundled", (
            f"Weights: the bundled offline {spec.name} backbone{size_note}, because ImageNet weights "
            "can't be downloaded here."
        )
    raise WeightsUnavailable(
        f"ImageNet weights for {spec.name} can't be downloaded here (no internet connection?), and only "
        f"{bundled_bases()} has bundled offline weights: choose it, a weights file, or weights none."
    )


def bundled_bases() -> str:
    return ", ".join(s.name for s in BASES.values() if s.bundled is not None)


def build_base(name: str, size: int, weights: str = "imagenet", cut: str | None = None) -> Any:
    """The base network as a keras Model named "base" taking preprocessed size x size x 3 input.

    weights: "imagenet" (Keras download), "bundled" (the base's offline file, any size), "none",
    or a path to a weights file saved from the same architecture ("auto": resolve_weights first).
    Problems become UserErrors in plain words.
    """
    import keras

    spec = get_base(name)
    check_size(spec, size)
    weights = normalize_weights(spec, weights)
    if weights == "auto":
        weights, _ = resolve_weights(spec, weights)
    if cut and cut not in spec.cut_layers:
        choices = ", ".join(spec.cut_layers) or "none"
        raise UserError(f"{spec.name} can't be cut at {cut!r} (possible cut layers: {choices}).")

    path: Path | None = None
    if weights == "bundled":
        if spec.bundled is None:
            raise UserError(
                f"There are bundled offline weights for {bundled_bases()} only; for {spec.name} use "
                "ImageNet weights, a weights file or none."
            )
        path = spec.bundled
        if not path.is_file():
            raise UserError(f"The bundled weights file is missing ({path}).")
    elif weights not in ("imagenet", "none"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"The weights file {weights} does not exist.")

    if not spec.constructor:
        base = _small_cnn(size)
    else:
        ctor = getattr(keras.applications, spec.constructor)
        kwargs: dict[str, Any] = {"include_top": False, "input_shape": (size, size, 3)}
        if weights == "imagenet":
            try:
                full = ctor(weights="imagenet", **kwargs)
            except Exception as exc:  # noqa: BLE001 - any download/IO failure means the same to the user
                raise WeightsUnavailable(
                    f"Could not download the ImageNet weights for {spec.name} (no internet connection?). "
                    f"Use weights auto or the bundled offline backbone ({bundled_bases()}), or a local "
                    "weights file."
                ) from exc
        else:
            full = ctor(weights=None, **kwargs)
        if path is not None:
            # Load into the complete architecture (the file was saved from it), then keep the cut part.
            _load_weights(full, path, spec, size)
        output = full.get_layer(cut).output if cut else full.output
        base = keras.Model(full.inputs, output, name=BASE_LAYER)
    if path is not None and not spec.constructor:
        _load_weights(base, path, spec, size)
    return base


def _load_weights(model: Any, path: Path, spec: BaseSpec, size: int) -> None:
    """Load a weights file into the full architecture; one from outside the app (not the bundled
    file) passes lib.models.safety's checks first, in an isolated process unless it is trusted."""
    import warnings

    problem = None
    name = path.name.lower()
    if not (name.endswith(".h5") or name.endswith(".hdf5") or name.endswith(".keras")):
        problem = "it is not a Keras weights file (.weights.h5, .h5 or .keras)"
    else:
        if spec.bundled is None or path.resolve() != spec.bundled.resolve():
            try:
                if name.endswith(".keras"):
                    safety.check_model_file(path)
                else:
                    safety.check_weights_file(path)
            except UserError as exc:
                raise UserError(f"The weights file {path.name} cannot be used: {exc}") from exc
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(str(path))
            # Keras 3 only warns when some layers found nothing to load: that file is for another network.
            skipped = [
                w for w in caught if "could not be loaded" in str(w.message) or "Skipping" in str(w.message)
            ]
            if skipped:
                problem = str(skipped[0].message).splitlines()[0].split(". Example")[0]
        except Exception as exc:  # noqa: BLE001 - h5py/ValueError/KeyError all mean "doesn't fit"
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem:
        raise UserError(
            f"The weights file {path.name} does not fit {spec.name} at {size} px "
            f"({problem[:200]}). Use a file saved from the same base and size."
        )


@dataclass(frozen=True)
class HeadSpec:
    """The classifier on top of the base."""

    pooling: str = "avg"  # "avg" (GlobalAveragePooling2D) or "flatten"
    hidden: int = 0  # units of an optional hidden Dense layer (0: none)
    dropout: float = 0.2


def head_layers(head: HeadSpec, n_classes: int) -> list[Any]:
    """Fresh head layers, named so weights can move between the feature-trained head and the model."""
    from keras import layers

    if head.pooling not in ("avg", "flatten"):
        raise UserError(f"Unknown pooling {head.pooling!r}: use avg or flatten.")
    out: list[Any] = [
        layers.GlobalAveragePooling2D(name="pool") if head.pooling == "avg" else layers.Flatten(name="pool")
    ]
    if head.hidden:
        out.append(layers.Dense(int(head.hidden), activation="relu", name="hidden"))
    out.append(layers.Dropout(float(head.dropout), name="dropout"))
    out.append(layers.Dense(n_classes, activation="softmax", name=OUTPUT_LAYER, dtype="float32"))
    return out


def build_classifier(
    spec: BaseSpec,
    size: int,
    base: Any,
    n_classes: int,
    head: HeadSpec,
    *,
    base_training: bool | None = False,
) -> Any:
    """The saved-model shape: any-size pixels -> resize -> preprocess -> base -> head.

    base_training=False keeps BatchNorm in inference mode (frozen or fine-tuned bases); None lets
    the outer training flag through (a base trained from scratch).
    """
    import keras

    inputs = keras.Input((None, None, 3), dtype="float32", name="pixels")
    x = keras.layers.Resizing(size, size, interpolation="bilinear", antialias=True, name=RESIZE_LAYER)(inputs)
    for layer in preprocess_layers(spec):
        x = layer(x)
    x = base(x, training=base_training) if base_training is not None else base(x)
    for layer in head_layers(head, n_classes):
        x = layer(x)
    return keras.Model(inputs, x, name=f"{spec.name.lower()}_classifier")


def build_head_model(feature_shape: tuple[int, ...], n_classes: int, head: HeadSpec) -> Any:
    """The head alone, for training on cached base features (pooled vectors or feature maps)."""
    import keras

    inputs = keras.Input(tuple(feature_shape), dtype="float32", name="features")
    x = inputs
    for layer in head_layers(head, n_classes):
        if layer.name == "pool" and len(feature_shape) == 1:
            continue  # features were pooled when cached
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def feature_model(spec: BaseSpec, size: int, base: Any, pooled: bool) -> Any:
    """pixels (S x S, 0-255) -> preprocessing -> base -> (pooled) features: what the feature cache
    holds and the head trains on."""
    import keras

    inputs = keras.Input((size, size, 3), dtype="float32")
    x = inputs
    for layer in preprocess_layers(spec):
        x = layer(x)
    x = base(x, training=False)
    if pooled:
        x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="feature_extractor")


def pooled_features_tensor(model: Any) -> Any:
    """The classifier's pooled base features as a tensor of its graph: the average-pooling layer's
    output, or (a Flatten head) the base's feature maps averaged, as the feature cache pools them."""
    import keras

    pool = model.get_layer("pool")
    if isinstance(pool, keras.layers.GlobalAveragePooling2D):
        return pool.output
    x = pool.input
    return keras.layers.GlobalAveragePooling2D(name="pooled_features")(x) if len(x.shape) == 4 else x


def with_known_score(model: Any, detector: Any) -> Any:
    """The classifier for export: (calibrated probabilities, known score N x 1) from the same pixels,
    the detector (lib.models.unknown.Detector) and temperature inside as studio layers."""
    import keras

    from lib.models.layers import KnownScore, Temperature  # imports Keras: kept lazy

    gaussians = detector.gaussians
    layer = KnownScore(
        classes=gaussians.centres.shape[0],
        dims=gaussians.whitening.shape[0],
        references=len(detector.reference),
        name="known",
    )
    known = layer(pooled_features_tensor(model))
    layer.set_weights(
        [
            gaussians.whitening.astype("float32"),
            gaussians.centres.astype("float32"),
            detector.reference.astype("float32"),
        ]
    )
    probs = Temperature(detector.temperature, name="probabilities")(model.outputs[0])
    return keras.Model(model.inputs[0], [probs, known], name=model.name + "_with_known")


def copy_head_weights(head_model: Any, model: Any) -> None:
    """Move trained weights from the feature-trained head into the full model (by layer name)."""
    for layer in head_model.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def image_size(model: Any) -> int:
    """The size S the model resizes to (its Resizing layer), i.e. what lib.data.images.decode should give."""
    return int(model.get_layer(RESIZE_LAYER).height)


def fixed_size_model(
    model: Any, size: int, *, batch_size: int | None = None, input_name: str = "pixels"
) -> Any:
    """The part of `model` after its Resizing layer, taking (batch_size, S, S, 3) pixels 0-255.

    Antialiased Resizing lowers to ScaleAndTranslate, which TFLite can't convert; the app feeds
    S x S images anyway (lib.data.images.decode(path, size=S)), where the resize is an identity.
    """
    import keras

    resizing = [layer for layer in model.layers if isinstance(layer, keras.layers.Resizing)]
    inner = keras.Model(resizing[0].output, model.output) if resizing else model
    inputs = keras.Input(batch_shape=(batch_size, size, size, 3), dtype="float32", name=input_name)
    return keras.Model(inputs, inner(inputs, training=False), name=model.name + "_fixed")


def with_features(model: Any) -> Any | None:
    """A model giving [probabilities, pooled base features] for the same input as `model` (any-size
    pixels): the base's output averaged over space (what the head's "pool" layer gives with avg
    pooling). None for a model without the studio's "pool" layer (a foreign shape)."""
    import keras

    try:
        pool = model.get_layer("pool")
    except ValueError:
        return None
    if isinstance(pool, keras.layers.GlobalAveragePooling2D):
        features = pool.output
    elif len(pool.input.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pooled_features")(pool.input)
    else:
        return None
    return keras.Model(model.inputs, [model.outputs[0], features], name=model.name + "_with_features")


def fixed_size_outputs(model: Any, size: int, *, batch_size: int | None = None) -> Any:
    """The part of `model` after its Resizing layer with named outputs {"probabilities",
    "features"} (features only when with_features finds them), taking (batch, S, S, 3) pixels
    named "image": what is converted to LiteRT."""
    import keras

    two = with_features(model)
    outputs = two.outputs if two is not None else model.outputs[:1]
    resizing = [layer for layer in model.layers if isinstance(layer, keras.layers.Resizing)]
    inner = keras.Model(resizing[0].output if resizing else model.inputs, outputs)
    inputs = keras.Input(batch_shape=(batch_size, size, size, 3), dtype="float32", name="image")
    out = inner(inputs, training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    named = {"probabilities": out[0]}
    if two is not None:
        named["features"] = out[1]
    return keras.Model(inputs, named, name=model.name + "_fixed_outputs")

