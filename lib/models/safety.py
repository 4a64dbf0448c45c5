"""Checks on model and weights files from outside (uploads, copied runs) before Keras opens them.

Keras safe mode alone has had bypasses (configs naming arbitrary modules and functions), so a
.keras file's config.json is read as plain JSON, without Keras, and every serialized object in it
(layers inside nested models and wrappers, initializers, dtype policies, ops, functions) must be on
an allow-list of standard Keras classes or the studio's own registered layers (lib/models/layers.py).
Weights files must be plain HDF5 with no links to other files.
"""

from __future__ import annotations

import io
import json
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import Any

from lib import settings
from lib.errors import UserError
from lib.models.build import has_lambda_layers

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MB = 1024 * 1024
CONFIG_MAX_BYTES = 20 * MB  # config.json of InceptionV3 is 0.3 MB
KERAS_MEMBERS = {"config.json", "metadata.json", "model.weights.h5"}
REQUIRED_MEMBERS = {"config.json", "model.weights.h5"}

# The studio's registered layers (lib/models/layers.py CUSTOM_OBJECTS); a test keeps the two in step.
STUDIO_LAYERS = {
    "studio>CaffePreprocess": "CaffePreprocess",
    "studio>KnownScore": "KnownScore",
    "studio>Temperature": "Temperature",
}
STUDIO_MODULES = (None, "lib.models.layers", "lib.layers")  # lib.layers: models saved before the move

LAMBDA_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__"}
# Layers that run foreign code or read server files: refused even though Keras ships them.
UNSAFE_LAYERS = {
    "TFSMLayer",  # loads a SavedModel from a path
    "TorchModuleWrapper",  # a pickled torch module
    "JaxLayer",
    "FlaxLayer",  # wrap Python callables
    "StringLookup",
    "IntegerLookup",
    "TextVectorization",  # vocabulary may be a path on the server
}

STANDARD_LAYERS = {
    # core, activations, merging
    "InputLayer", "Dense", "EinsumDense", "Activation", "Identity", "Embedding", "Masking",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
    # convolution and pooling
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "Convolution1D", "Convolution2D", "Convolution3D", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "MaxPool1D", "MaxPool2D", "MaxPool3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "AvgPool1D", "AvgPool2D", "AvgPool3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalAvgPool3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalMaxPool1D", "GlobalMaxPool2D", "GlobalMaxPool3D",
    "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
    "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D",
    # normalization and regularization
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "RMSNormalization", "SpectralNormalization", "Normalization",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "ActivityRegularization",
    # reshaping
    "Flatten", "Reshape", "Permute", "RepeatVector", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    # image preprocessing and augmentation
    "Resizing", "Rescaling", "CenterCrop", "Pipeline", "AutoContrast", "Equalization", "Solarization",
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomBrightness", "RandomCrop",
    "RandomTranslation", "RandomHue", "RandomSaturation", "RandomSharpness", "RandomShear",
    "RandomGrayscale", "RandomInvert", "RandomPosterization", "RandomColorDegeneration",
    "RandomColorJitter", "RandomErasing", "RandomGaussianBlur", "RandomPerspective",
    "RandomElasticTransform", "RandAugment", "AugMix", "CutMix", "MixUp",
    # attention, recurrent and wrappers (their inner layers are checked too)
    "Attention", "AdditiveAttention", "MultiHeadAttention", "GroupQueryAttention",
    "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell", "StackedRNNCells", "RNN",
    "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "TimeDistributed", "Bidirectional",
}  # fmt: skip

# Keras ops recorded in functional graphs (x + 3, x * y, x[:, :1], keras.ops.relu(x) ...).
STANDARD_OPS = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "FloorDivide", "Mod", "Power", "Negative",
    "Abs", "Absolute", "Sqrt", "Square", "Exp", "Log", "Sin", "Cos", "Tanh", "Sign", "Clip",
    "Maximum", "Minimum", "Mean", "Sum", "Max", "Min", "Prod", "Var", "Std", "Matmul", "Dot",
    "Reshape", "Transpose", "Concatenate", "Stack", "Squeeze", "ExpandDims", "Flip", "Tile",
    "GetItem", "Where", "Cast", "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu",
    "Gelu", "Softmax", "LogSoftmax", "Softplus", "Elu", "LeakyRelu", "Resize",
}  # fmt: skip

ALLOWED: dict[str, set[str]] = {
    "keras.layers": STANDARD_LAYERS,
    "keras": {"Sequential", "Functional", "DTypePolicy", "FloatDTypePolicy"},
    "keras.models": {"Sequential", "Functional"},
    "keras.src.models.functional": {"Functional"},
    "keras.src.models.sequential": {"Sequential"},
    "keras.dtype_policies": {"DTypePolicy", "FloatDTypePolicy"},
    "keras.initializers": {
        "Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity",
        "IdentityInitializer", "LecunNormal", "LecunUniform", "Ones", "Orthogonal",
        "OrthogonalInitializer", "RandomNormal", "RandomUniform", "TruncatedNormal",
        "VarianceScaling", "Zeros",
    },
    "keras.regularizers": {"L1", "L2", "L1L2", "OrthogonalRegularizer"},
    "keras.constraints": {"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"},
    "keras.optimizers": {
        "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Ftrl", "Lamb", "Lion",
        "Nadam", "RMSprop", "SGD",
    },
    "keras.optimizers.schedules": {
        "CosineDecay", "CosineDecayRestarts", "ExponentialDecay", "InverseTimeDecay",
        "PiecewiseConstantDecay", "PolynomialDecay",
    },
    "keras.losses": {
        "BinaryCrossentropy", "BinaryFocalCrossentropy", "CategoricalCrossentropy",
        "CategoricalFocalCrossentropy", "CategoricalHinge", "CosineSimilarity", "Hinge", "Huber",
        "KLDivergence", "LogCosh", "MeanAbsoluteError", "MeanSquaredError", "Poisson",
        "SparseCategoricalCrossentropy", "SquaredHinge",
    },
    "keras.metrics": {
        "AUC", "Accuracy", "BinaryAccuracy", "CategoricalAccuracy", "Precision", "Recall",
        "SparseCategoricalAccuracy", "TopKCategoricalAccuracy", "SparseTopKCategoricalAccuracy",
        "Mean", "Sum", "F1Score", "FBetaScore", "CategoricalCrossentropy",
        "SparseCategoricalCrossentropy", "BinaryCrossentropy",
    },
    "keras.src.ops.numpy": STANDARD_OPS,
    "keras.src.ops.nn": STANDARD_OPS,
    "keras.src.ops.core": {"Cast"},
    "keras.src.ops.image": {"Resize"},
}  # fmt: skip

# Plain data that Keras serializes with a class_name tag; no code is looked up for these.
DATA_TAGS = {"__keras_tensor__", "__tensor__", "__numpy__", "__slice__", "__ellipsis__", "__bytes__"}
ACTIVATION_MODULES = {"keras.activations", "keras.src.activations.activations", "keras.src.activations"}
ACTIVATIONS = {
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu",
    "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign",
    "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink",
    "threshold",
}  # fmt: skip


class UnsafeFileError(UserError):
    """A model or weights file refused before loading; the message says why in plain words."""


def _clean(text: Any, limit: int = 60) -> str:
    """A name from the file, made harmless to show (no Markdown, no control characters, short)."""
    value = re.sub(r"[^A-Za-z0-9_.>\-]", "_", str(text))
    return value[:limit] + ("…" if len(value) > limit else "")


def _check_size(path: Path, max_mb: float, what: str) -> int:
    if path.is_symlink():
        raise UnsafeFileError(f"The {what} is a link to another file, which is refused for safety.")
    if not path.is_file():
        raise UserError(f"The {what} {path.name} does not exist.")
    size = path.stat().st_size
    if size > max_mb * MB:
        raise UnsafeFileError(f"The {what} is {size / MB:,.0f} MB; the limit is {max_mb:,.0f} MB.")
    if size == 0:
        raise UnsafeFileError(f"The {what} is empty.")
    return size


# ----------------------------------------------------------------------------------------------
# .keras model files
# ----------------------------------------------------------------------------------------------


def check_model_file(path: str | Path, max_mb: float | None = None) -> dict[str, Any]:
    """Refuse (UnsafeFileError) a .keras file that is not a plain Keras zip of standard layers.

    Reads config.json as JSON without Keras and checks every serialized object against the
    allow-list; returns the parsed config when the file passes.
    """
    path = Path(path)
    max_mb = float(settings.max_model_mb() if max_mb is None else max_mb)
    size = _check_size(path, max_mb, "model file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeFileError(
            "This file is not a Keras model (.keras): it is not a zip archive. "
            "Save the model with model.save('name.keras')."
        ) from exc
    with archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        if len(names) != len(set(names)):
            raise UnsafeFileError("This .keras file lists the same file twice, which is refused for safety.")
        declared = 0
        for info in infos:
            kind = (info.external_attr >> 16) & 0o170000
            if kind == stat.S_IFLNK:
                raise UnsafeFileError(
                    "This .keras file contains a link (symlink), which is refused for safety."
                )
            if info.filename not in KERAS_MEMBERS:
                raise UnsafeFileError(
                    f"This .keras file holds an unexpected file ({_clean(info.filename)}); "
                    "only config.json, metadata.json and model.weights.h5 are accepted."
                )
            if info.flag_bits & 0x1:
                raise UnsafeFileError("This .keras file is encrypted; it can't be checked, so it is refused.")
            declared += info.file_size
        if declared > 2 * max(size, MB) + CONFIG_MAX_BYTES:
            raise UnsafeFileError(
                "This .keras file unpacks to far more than its size (a zip bomb?); refused."
            )
        missing = sorted(REQUIRED_MEMBERS - set(names))
        if missing:
            raise UnsafeFileError(f"This .keras file is incomplete: it has no {', '.join(missing)}.")
        config = _read_config(archive)
        check_model_config(config)
        with _open_member(archive, path, "model.weights.h5") as fh:
            if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                raise UnsafeFileError("The weights inside this .keras file are not an HDF5 file; refused.")
            fh.seek(0)
            _check_hdf5(fh, "model file")
    return config


class _StoredMember(io.RawIOBase):
    """A seekable read-only view of an uncompressed zip member (zipfile's own seeks backwards by
    re-reading from the start, which makes h5py take seconds on a 100 MB model)."""

    def __init__(self, path: Path, start: int, size: int):
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open_member(archive: zipfile.ZipFile, path: Path, name: str) -> Any:
    """A seekable file object for one member: a direct view when stored (Keras's way), else zipfile's."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
        return archive.open(info)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise UnsafeFileError("This .keras file is damaged (a broken zip entry); refused.")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > path.stat().st_size:
        raise UnsafeFileError("This .keras file is damaged (an entry runs past its end); refused.")
    return _StoredMember(path, start, info.file_size)


def _read_config(archive: zipfile.ZipFile) -> dict[str, Any]:
    with archive.open("config.json") as fh:
        raw = fh.read(CONFIG_MAX_BYTES + 1)  # bounded, whatever the header claims
    if len(raw) > CONFIG_MAX_BYTES:
        raise UnsafeFileError("This model's config.json is unreasonably large; refused.")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UnsafeFileError("This model's config.json is not valid JSON; refused.") from exc
    if not isinstance(config, dict):
        raise UnsafeFileError("This model's config.json does not describe a model; refused.")
    return config


def check_model_config(config: Any) -> None:
    """Walk every serialized object in a Keras config (iteratively, any depth); refuse what isn't allowed."""
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Sequential"):
        name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise UnsafeFileError(
            f"This model is a {_clean(name)}, not a plain Keras Functional or Sequential model; refused for safety."
        )
    stack: list[Any] = [config]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > 5_000_000:
            raise UnsafeFileError("This model's config is unreasonably large; refused.")
        if isinstance(node, dict):
            _check_object(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _check_object(node: dict[str, Any]) -> None:
    """One dict of the config: a serialized object when it has a class_name, plain values otherwise."""
    # Keras 2 style Lambda: {"function": [bytecode...], "function_type": "lambda"}
    if node.get("function_type") in ("lambda", "raw") or "__lambda__" in node:
        raise _lambda_error()
    if "class_name" not in node:
        return
    cls = node.get("class_name")
    module = node.get("module")
    registered = node.get("registered_name")
    if not isinstance(cls, str):
        raise UnsafeFileError("This model's config has a malformed entry; refused for safety.")
    if cls in LAMBDA_LAYERS:
        raise _lambda_error()
    if cls in UNSAFE_LAYERS:
        raise UnsafeFileError(
            f"This model contains a {_clean(cls)} layer, which can run code or read files; refused for safety."
        )
    if cls in DATA_TAGS and module is None:
        return
    if cls == "function":
        fn = node.get("config")
        if module in ACTIVATION_MODULES and fn in ACTIVATIONS:
            return
        raise UnsafeFileError(
            f"This model refers to a Python function ({_clean(module)}.{_clean(fn)}) instead of a standard "
            "Keras activation; it is refused for safety."
        )
    if isinstance(registered, str) and ">" in registered:  # a registered custom object
        if STUDIO_LAYERS.get(registered) == cls and module in STUDIO_MODULES:
            return
        raise UnsafeFileError(
            f"This model contains a custom layer ({_clean(registered)}) that this app does not know; "
            "refused for safety."
        )
    if registered not in (None, cls):
        raise UnsafeFileError(
            f"This model's config names {_clean(cls)} as {_clean(registered)}; refused for safety."
        )
    if not isinstance(module, str) or cls not in ALLOWED.get(module, ()):
        if isinstance(module, str) and not (module == "keras" or module.startswith("keras.")):
            raise UnsafeFileError(
                f"This model uses code from outside Keras ({_clean(module)}.{_clean(cls)}); refused for safety."
            )
        raise UnsafeFileError(
            f"This model contains {_clean(cls)} ({_clean(module)}), which is not on this app's list of "
            "standard Keras layers; refused for safety."
        )


def _lambda_error() -> UnsafeFileError:
    return UnsafeFileError("This model contains a Lambda layer (custom code), which is refused for safety.")


# ----------------------------------------------------------------------------------------------
# HDF5 weights files
# ----------------------------------------------------------------------------------------------


def check_weights_file(path: str | Path, max_mb: float | None = None) -> None:
    """Refuse (UnsafeFileError) a weights file that is too large, not HDF5, or links to other files."""
    path = Path(path)
    max_mb = float(settings.max_model_mb() if max_mb is None else max_mb)
    _check_size(path, max_mb, "weights file")
    with open(path, "rb") as fh:
        head = fh.read(len(HDF5_SIGNATURE))
    if head != HDF5_SIGNATURE:
        raise UnsafeFileError(
            "This is not a Keras weights file (.weights.h5): it is not in HDF5 format. "
            "Save the weights with model.save_weights('name.weights.h5')."
        )
    with open(path, "rb") as fh:
        _check_hdf5(fh, "weights file")


def _check_hdf5(fileobj: Any, what: str) -> None:
    """No external links, external dataset storage or virtual datasets (they read other files)."""
    import h5py

    problems: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"a link to another file ({_clean(name)})")

    try:
        with h5py.File(fileobj, "r") as h5:
            h5.visititems_links(visit)
            if not problems:

                def check_dataset(name: str, obj: Any) -> None:
                    if isinstance(obj, h5py.Dataset):
                        if obj.external:
                            problems.append(f"data stored in another file ({_clean(name)})")
                        elif obj.is_virtual:
                            problems.append(f"a virtual dataset reading other files ({_clean(name)})")

                h5.visititems(check_dataset)
    except UnsafeFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file, whatever h5py says
        raise UnsafeFileError(f"The {what} is damaged: its HDF5 data cannot be read.") from exc
    if problems:
        raise UnsafeFileError(f"The {what} contains {problems[0]}, which is refused for safety.")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def safe_load_model(path: str | Path, max_mb: float | None = None) -> Any:
    """check_model_file, then Keras safe-mode loading with the studio's layers registered."""
    path = Path(path)
    check_model_file(path, max_mb)
    import keras  # imported here (with the studio's layers) to keep TensorFlow lazy

    import lib.models.layers  # noqa: F401 - registers the studio's layers (imports Keras: kept lazy)

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - a broken or foreign file, whatever the library says
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"The model file {_clean(path.name)} cannot be loaded ({first}).") from exc
    if has_lambda_layers(model):
        raise _lambda_error()
    return model
