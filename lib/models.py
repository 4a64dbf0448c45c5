"""The registry of base models and the one way a classifier is put together.

Each base is one small record (constructor, sizes, preprocessing, cut point, fine-tuning depth),
so training, the Train page and export read the same facts instead of `if base == ...` chains.
Every saved model takes decoded RGB pixels 0-255 of any size:
    pixels -> Resizing(S, S, antialias) -> preprocessing layers -> "base" (nested Model) -> head.
Keras is imported inside functions, so importing this module is instant.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib import settings
from lib.errors import UserError

MAX_SIZE = 512
RESIZE_LAYER = "resize"
BASE_LAYER = "base"
OUTPUT_LAYER = "predictions"


@dataclass(frozen=True)
class BaseSpec:
    """What the app knows about one base model."""

    name: str
    constructor: str  # attribute of keras.applications; "" for the from-scratch CNN
    default_size: int
    sizes: tuple[int, ...]  # sizes offered in the UI (any size from min_size to MAX_SIZE works)
    min_size: int
    preprocessing: str  # "minus_one_one" | "zero_one" | "caffe" | "builtin" (inside the base)
    fine_tune_layers: int  # sensible number of top layers to unfreeze when fine-tuning
    last_conv_layer: str | None  # Grad-CAM layer inside the base; None: the base's output (always a conv map)
    cut_layers: tuple[str, ...] = ()  # intermediate layers the base may be cut at
    pretrained: bool = True  # has ImageNet weights
    summary: str = ""


BASES: dict[str, BaseSpec] = {
    spec.name: spec
    for spec in (
        BaseSpec(
            name="MobileNetV2",
            constructor="MobileNetV2",
            default_size=160,
            sizes=(96, 128, 160, 192, 224),
            min_size=32,
            preprocessing="minus_one_one",
            fine_tune_layers=54,
            last_conv_layer="out_relu",
            summary="Fast and accurate on a laptop; the default. Offline weights are bundled (160 px).",
        ),
        BaseSpec(
            name="MobileNetV3Small",
            constructor="MobileNetV3Small",
            default_size=224,
            sizes=(96, 128, 160, 192, 224),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=40,
            last_conv_layer=None,
            summary="The fastest; a little less accurate.",
        ),
        BaseSpec(
            name="MobileNetV3Large",
            constructor="MobileNetV3Large",
            default_size=224,
            sizes=(96, 128, 160, 192, 224),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=50,
            last_conv_layer=None,
            summary="Fast, more accurate than the small one.",
        ),
        BaseSpec(
            name="EfficientNetB0",
            constructor="EfficientNetB0",
            default_size=224,
            sizes=(160, 192, 224, 260),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=40,
            last_conv_layer="top_activation",
            summary="Accurate for its size; slower than the MobileNets on a CPU.",
        ),
        BaseSpec(
            name="EfficientNetV2B0",
            constructor="EfficientNetV2B0",
            default_size=224,
            sizes=(160, 192, 224, 260),
            min_size=32,
            preprocessing="builtin",
            fine_tune_layers=40,
            last_conv_layer="top_activation",
            summary="A newer EfficientNet; trains well with fine-tuning.",
        ),
        BaseSpec(
            name="ResNet50",
            constructor="ResNet50",
            default_size=224,
            sizes=(160, 192, 224),
            min_size=32,
            preprocessing="caffe",
            fine_tune_layers=33,
            last_conv_layer="conv5_block3_out",
            summary="A classic large network (100 MB); slow on a CPU.",
        ),
        BaseSpec(
            name="InceptionV3",
            constructor="InceptionV3",
            default_size=299,
            sizes=(150, 224, 299),
            min_size=75,
            preprocessing="minus_one_one",
            fine_tune_layers=62,
            last_conv_layer=None,  # the base's output: mixed10, or the cut layer (mixed7...) when cut
            cut_layers=("mixed7", "mixed8", "mixed9"),
            summary="A classic large network; can be cut at an intermediate block such as mixed7.",
        ),
        BaseSpec(
            name="SmallCNN",
            constructor="",
            default_size=128,
            sizes=(64, 96, 128, 160),
            min_size=32,
            preprocessing="zero_one",
            fine_tune_layers=0,
            last_conv_layer="last_conv",
            pretrained=False,
            summary="A small network trained from scratch: the baseline to beat.",
        ),
    )
}
REGISTRY = BASES  # the name other modules look up
DEFAULT_BASE = "MobileNetV2"
BUNDLED_BASE, BUNDLED_SIZE = "MobileNetV2", 160


def get_base(name: str) -> BaseSpec:
    """The registry record for a base name (case-insensitive), or a UserError listing the choices."""
    for key, spec in BASES.items():
        if key.lower() == str(name).strip().lower():
            return spec
    raise UserError(f"Unknown base model {name!r}: choose one of {', '.join(BASES)}.")


def check_size(spec: BaseSpec, size: int) -> int:
    """Refuse image sizes the base can't take, in plain words."""
    if not isinstance(size, int) or size < spec.min_size or size > MAX_SIZE:
        raise UserError(f"{spec.name} takes images from {spec.min_size} to {MAX_SIZE} pixels, not {size}.")
    return size


def normalize_weights(spec: BaseSpec, weights: str | os.PathLike | None) -> str:
    """ "imagenet" | "bundled" | "none" | a file path; the from-scratch CNN has only "none" or a file."""
    value = "none" if weights is None else str(weights).strip()
    low = value.lower()
    if low in ("imagenet", "bundled", "none"):
        value = low
    if not spec.pretrained and value == "imagenet":
        return "none"  # nothing to download: the baseline always starts from scratch
    return value


def weights_identity(weights: str) -> str:
    """A short stable id of a weights choice: the content hash of a file, else the keyword."""
    if weights in ("imagenet", "none"):
        return weights
    path = settings.bundled_weights() if weights == "bundled" else Path(weights)
    return "sha256:" + _file_sha256(Path(path))


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()[:16]
    return _HASHES[key]


def preprocess_layers(spec: BaseSpec) -> list[Any]:
    """Fresh preprocessing layers that turn 0-255 RGB into what the base expects (serializable)."""
    import keras

    if spec.preprocessing == "minus_one_one":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")]
    if spec.preprocessing == "zero_one":
        return [keras.layers.Rescaling(1.0 / 255.0, name="preprocess")]
    if spec.preprocessing == "caffe":
        from lib.layers import CaffePreprocess

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


def build_base(name: str, size: int, weights: str = "imagenet", cut: str | None = None) -> Any:
    """The base network as a keras Model named "base" taking preprocessed size x size x 3 input.

    weights: "imagenet" (Keras download), "bundled" (offline MobileNetV2 160), "none", or a path
    to a weights file saved from the same architecture. Problems become UserErrors in plain words.
    """
    import keras

    spec = get_base(name)
    check_size(spec, size)
    weights = normalize_weights(spec, weights)
    if cut and cut not in spec.cut_layers:
        choices = ", ".join(spec.cut_layers) or "none"
        raise UserError(f"{spec.name} can't be cut at {cut!r} (possible cut layers: {choices}).")

    path: Path | None = None
    if weights == "bundled":
        if spec.name != BUNDLED_BASE or size != BUNDLED_SIZE:
            raise UserError(
                f"The bundled offline weights are for {BUNDLED_BASE} at {BUNDLED_SIZE} px only; "
                f"for {spec.name} at {size} px use ImageNet weights, a weights file or none."
            )
        path = settings.bundled_weights()
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
                raise UserError(
                    f"Could not download the ImageNet weights for {spec.name} (no internet connection?). "
                    f"Use the bundled offline backbone ({BUNDLED_BASE}, {BUNDLED_SIZE} px) or a local weights file."
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
    import warnings

    problem = None
    name = path.name.lower()
    if not (name.endswith(".h5") or name.endswith(".hdf5") or name.endswith(".keras")):
        problem = "it is not a Keras weights file (.weights.h5, .h5 or .keras)"
    else:
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


def copy_head_weights(head_model: Any, model: Any) -> None:
    """Move trained weights from the feature-trained head into the full model (by layer name)."""
    for layer in head_model.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def image_size(model: Any) -> int:
    """The size S the model resizes to (its Resizing layer), i.e. what lib.images.decode should give."""
    return int(model.get_layer(RESIZE_LAYER).height)


def fixed_size_model(
    model: Any, size: int, *, batch_size: int | None = None, input_name: str = "pixels"
) -> Any:
    """The part of `model` after its Resizing layer, taking (batch_size, S, S, 3) pixels 0-255.

    Antialiased Resizing lowers to ScaleAndTranslate, which TFLite can't convert; the app feeds
    S x S images anyway (lib.images.decode(path, size=S)), where the resize is an identity.
    """
    import keras

    resizing = [layer for layer in model.layers if isinstance(layer, keras.layers.Resizing)]
    inner = keras.Model(resizing[0].output, model.output) if resizing else model
    inputs = keras.Input(batch_shape=(batch_size, size, size, 3), dtype="float32", name=input_name)
    return keras.Model(inputs, inner(inputs, training=False), name=model.name + "_fixed")


def split_model(model: Any) -> tuple[int, Any]:
    """(S, fixed): the model's input size and its fixed-size part (see fixed_size_model)."""
    size = image_size(model)
    return size, fixed_size_model(model, size)


def gradcam_parts(model: Any) -> tuple[Any, Any]:
    """(features, classifier): pixels -> the base's last conv feature map -> class probabilities.

    Grad-CAM needs the gradient of a class score with respect to the last conv map; for every base
    in the registry that map is the base's output, so the model splits cleanly at the base.
    """
    import keras

    names = [layer.name for layer in model.layers]
    cut = names.index(BASE_LAYER)
    inputs = keras.Input(model.inputs[0].shape[1:], dtype="float32", name="pixels")
    x = inputs
    for layer in model.layers[1 : cut + 1]:
        x = layer(x, training=False) if layer.name == BASE_LAYER else layer(x)
    features = keras.Model(inputs, x, name="features")
    fmap = keras.Input(tuple(x.shape[1:]), dtype="float32", name="feature_map")
    y = fmap
    for layer in model.layers[cut + 1 :]:
        y = layer(y)
    return features, keras.Model(fmap, y, name="classifier")


def has_lambda_layers(model: Any) -> bool:
    """True when any layer (nested too) is a Lambda layer; saved models must not have any."""
    import keras

    def walk(m: Any) -> bool:
        for layer in getattr(m, "layers", []):
            if isinstance(layer, keras.layers.Lambda) or walk(layer):
                return True
        return False

    return walk(model)
