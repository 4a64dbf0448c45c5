"""Checks on model and weights files from outside (uploads, copied runs) before Keras opens them.

Keras safe mode alone has had bypasses (configs naming arbitrary modules and functions), so a
.keras file's config.json is read as plain JSON, without Keras, and every serialized object in it
(layers inside nested models and wrappers, initializers, dtype policies, ops, functions) must be on
an allow-list of standard Keras classes or the studio's own registered layers (lib/models/layers.py).
Weights files must be plain HDF5 with no links to other files, and every size a file declares is
bounded before anything is allocated: each HDF5 dataset's shape, dtype and rank (a 1 KB file can
declare gigabytes of empty chunks), and each layer's size fields in config.json (units, filters,
kernel sizes, input shapes), with the weights they imply compared with what the file holds.

A file that isn't trusted (an upload, a path someone typed, a run copied in from elsewhere) is first
parsed in a short-lived child process with a memory and CPU limit (STUDIO_CHECK_MEMORY_MB): a crash
or memory blow-up in libhdf5 then ends the child, not the server, and the file is refused in plain
words. Trusted files skip the child: the shipped demo, the bundled weights, and files whose sha256 is
recorded in the cache (models this app saved, and files that passed the child's check once).

A run's numpy files (unknown.npz, head.npz) are read through npz_shapes first: every member's shape
from its .npy header, before numpy allocates anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

from lib import files, settings
from lib.errors import UserError

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


# ----------------------------------------------------------------------------------------------
# Bounds on what a file may declare (generous for real models, far below what hurts a server)
# ----------------------------------------------------------------------------------------------

MAX_CONFIG_DEPTH = 200  # nesting of config.json (the demo's is 14: model, base, layer, initializer ...)
MAX_CONFIG_NODES = 5_000_000
# Layer size fields: the largest value accepted for each (None is always allowed where Keras allows it).
MAX_WIDTH = 1 << 16  # units, filters, embedding width ... (the widest Keras application layer: 4096)
SIZE_FIELDS = {
    "units": MAX_WIDTH,
    "filters": MAX_WIDTH,
    "output_dim": MAX_WIDTH,
    "key_dim": MAX_WIDTH,
    "value_dim": MAX_WIDTH,
    "head_dim": MAX_WIDTH,
    "n": MAX_WIDTH,  # RepeatVector
    "groups": MAX_WIDTH,
    "input_dim": 10_000_000,  # Embedding vocabulary
    "num_heads": 1024,
    "num_query_heads": 1024,
    "num_key_value_heads": 1024,
    "depth_multiplier": 1024,
    "height": 8192,  # Resizing, CenterCrop, RandomCrop: every photo becomes this big
    "width": 8192,
}
# Fields holding one number or a (nested) list of numbers; -1 means "the rest" in shapes.
SHAPE_FIELDS = {
    "kernel_size": 1024,
    "pool_size": 8192,
    "strides": 8192,
    "dilation_rate": 8192,
    "size": 8192,  # UpSampling factors, the Resize op's output size
    "cropping": 8192,
    "padding": 8192,  # ZeroPadding (Conv's "same"/"valid" are words)
    "dims": 64,  # Permute
}
# Fields whose meaning depends on the layer: the studio's KnownScore has "dims" (the feature width,
# 1,280 for MobileNetV2) where Permute has a permutation of axes.
LAYER_SIZE_FIELDS = {
    "KnownScore": {"classes": MAX_WIDTH, "dims": MAX_WIDTH, "references": 1 << 22},
}
MAX_DIM = 1 << 20  # one dimension of any shape (input shapes, Reshape targets, EinsumDense outputs)
MAX_TENSOR = 1 << 28  # values in one example of any declared shape (1 GB of float32)
WORD_FIELDS = {"padding"}  # fields that may also be a word
# Weights the layers' sizes imply (counted as float32) may be at most this many times the weights
# file inside the .keras, plus a little: Keras allocates them before it reads the file. 8, not 1:
# int8 and int4 quantized layers store a value in a byte or half of one.
WEIGHTS_EXPANSION = 8
WEIGHTS_SLACK = 16 * MB

# HDF5: what a dataset may be.
MAX_RANK = 8  # Keras kernels have rank 5 at most
MAX_H5_OBJECTS = 200_000
MAX_ATTRIBUTES = 1000  # per object
H5_EXPANSION = 4  # declared bytes of all datasets at most this many times the bytes on disk, plus 1 MB
H5_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}  # compression h5py ships

# The isolated check (see check_isolated).
CHECK_SECONDS = 120  # CPU seconds the child may take (twice that on the clock)
TRUST_FOLDER = "checked-models"  # in the cache: sha256 names of files known to parse safely
LOG = logging.getLogger(__name__)


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
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"The {what} {_clean(path.name)} cannot be read ({exc.strerror or exc}).") from exc
    if size > max_mb * MB:
        raise UnsafeFileError(f"The {what} is {size / MB:,.0f} MB; the limit is {max_mb:,.0f} MB.")
    if size == 0:
        raise UnsafeFileError(f"The {what} is empty.")
    return size


# ----------------------------------------------------------------------------------------------
# .keras model files
# ----------------------------------------------------------------------------------------------


def check_model_file(
    path: str | Path, max_mb: float | None = None, *, isolated: bool | None = None
) -> dict[str, Any]:
    """Refuse (UnsafeFileError) a .keras file that is not a plain Keras zip of standard layers.

    Reads config.json as JSON without Keras, checks every serialized object against the allow-list
    and every size against the bounds, and walks the weights' HDF5 structure; returns the parsed
    config when the file passes. isolated: parse it in a limited child process first (None: when
    the file isn't trusted, see is_trusted).
    """
    path = Path(path)
    max_mb = float(settings.max_model_mb() if max_mb is None else max_mb)
    size = _check_size(path, max_mb, "model file")
    if isolated is None:
        isolated = not is_trusted(path)
    if isolated:
        check_isolated(path, "model", max_mb)
    return _check_model_file(path, max_mb, size)


def _check_model_file(path: Path, max_mb: float, size: int, *, read_data: bool = False) -> dict[str, Any]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsafeFileError(
            "This file is not a Keras model (.keras): it is not a zip archive. "
            "Save the model with model.save('name.keras')."
        ) from exc
    try:
        with archive:
            return _check_archive(archive, path, max_mb, size, read_data)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
        # a broken entry (bad checksum, truncated data, an unknown compression), whatever zipfile says
        raise UnsafeFileError("This .keras file is damaged: a file inside it cannot be read; refused.") from exc


def _check_archive(
    archive: zipfile.ZipFile, path: Path, max_mb: float, size: int, read_data: bool
) -> dict[str, Any]:
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
    weights = archive.getinfo("model.weights.h5").file_size
    check_model_config(config, weights_bytes=weights)
    with _open_member(archive, path, "model.weights.h5") as fh:
        if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise UnsafeFileError("The weights inside this .keras file are not an HDF5 file; refused.")
        fh.seek(0)
        _check_hdf5(fh, "model file", weights, max_mb, read_data=read_data)
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


def check_model_config(config: Any, *, weights_bytes: int | None = None) -> None:
    """Walk every serialized object in a Keras config (iteratively, any depth); refuse what isn't
    allowed, malformed entries, sizes beyond the bounds and, given the size of the weights file
    (weights_bytes), layers whose weights would need far more memory than that file holds."""
    if not isinstance(config, dict) or config.get("class_name") not in ("Functional", "Sequential"):
        name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise UnsafeFileError(
            f"This model is a {_clean(name)}, not a plain Keras Functional or Sequential model; refused for safety."
        )
    stack: list[tuple[Any, int, int | None]] = [(config, 0, None)]  # (node, depth, enclosing fan-in)
    seen = 0
    weights = 0  # values the layers' weights will hold, as far as their sizes tell
    while stack:
        node, depth, fan_in = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise UnsafeFileError("This model's config is unreasonably large; refused.")
        if depth > MAX_CONFIG_DEPTH:
            raise UnsafeFileError("This model's config is nested unreasonably deep; refused for safety.")
        if isinstance(node, dict):
            _check_object(node)
            if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
                count, fan_in = _layer_weights(node, fan_in)
                weights += count
            stack.extend((value, depth + 1, fan_in) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1, fan_in) for value in node)
    if weights_bytes is not None and weights * 4 > WEIGHTS_EXPANSION * weights_bytes + WEIGHTS_SLACK:
        raise UnsafeFileError(
            f"This model's layers would need about {_size(weights * 4)} of memory for their weights, "
            f"far more than its weights file holds ({_size(weights_bytes)}); refused for safety."
        )


def _malformed(what: str) -> UnsafeFileError:
    return UnsafeFileError(f"This model's config.json is malformed ({what}); refused for safety.")


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
        raise _malformed("a class name that is not a name")
    if module is not None and not isinstance(module, str):
        raise _malformed(f"the module of {_clean(cls)} is a {_kind(module)}, not a name")
    if registered is not None and not isinstance(registered, str):
        raise _malformed(f"the registered name of {_clean(cls)} is a {_kind(registered)}, not a name")
    if cls in LAMBDA_LAYERS:
        raise _lambda_error()
    if cls in UNSAFE_LAYERS:
        raise UnsafeFileError(
            f"This model contains a {_clean(cls)} layer, which can run code or read files; refused for safety."
        )
    inner = node.get("config")
    if cls == "function":
        if module in ACTIVATION_MODULES and isinstance(inner, str) and inner in ACTIVATIONS:
            return
        raise UnsafeFileError(
            f"This model refers to a Python function ({_clean(module)}.{_clean(inner)}) instead of a standard "
            "Keras activation; it is refused for safety."
        )
    if inner is not None and not isinstance(inner, dict):
        raise _malformed(f"the settings of {_clean(cls)} are a {_kind(inner)}, not a group of settings")
    built = node.get("build_config")
    if built is not None and not isinstance(built, dict):
        raise _malformed(f"the build settings of {_clean(cls)} are a {_kind(built)}")
    if cls in DATA_TAGS and module is None:
        _check_sizes(cls, inner or {})
        return
    if isinstance(registered, str) and ">" in registered:  # a registered custom object
        if STUDIO_LAYERS.get(registered) == cls and module in STUDIO_MODULES:
            _check_sizes(cls, inner or {}, built or {})
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
    _check_sizes(cls, inner or {}, built or {})


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if isinstance(value, bool):
        return "true/false value"
    return {dict: "group of settings", list: "list", str: "text", int: "number", float: "number"}.get(
        type(value), "empty value" if value is None else "value"
    )


def _check_sizes(cls: str, *settings_: dict[str, Any]) -> None:
    """Every size field of a layer's settings (and build settings) within its bound."""
    for values in settings_:
        layer = _clean(values.get("name", "")) if isinstance(values.get("name"), str) else ""
        where = f"{_clean(cls)} layer {layer}".strip() if layer else _clean(cls)
        own = LAYER_SIZE_FIELDS.get(cls, {})
        for key, value in values.items():
            if key in own:
                _check_numbers(where, key, value, own[key], nested=False)
            elif key in SIZE_FIELDS:
                _check_numbers(where, key, value, SIZE_FIELDS[key], nested=False)
            elif key in SHAPE_FIELDS:
                if key in WORD_FIELDS and isinstance(value, str):
                    continue
                _check_numbers(where, key, value, SHAPE_FIELDS[key], nested=True)
            elif key.endswith("shape"):
                _check_shape(where, key, value)


def _numbers(value: Any, depth: int = 0) -> list[Any]:
    """The numbers (and Nones) of a nested list; ValueError for anything else or too deep."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return [value]
    if isinstance(value, list) and depth < 4:
        return [n for item in value for n in _numbers(item, depth + 1)]
    if isinstance(value, dict) and depth < 4 and set(value) <= {"class_name", "config"}:
        return []  # a serialized object in a shape field (a __keras_tensor__): checked on its own
    raise ValueError


def _check_numbers(where: str, key: str, value: Any, limit: int, *, nested: bool) -> None:
    try:
        numbers = _numbers(value) if nested else _numbers(value, 4)
    except ValueError:
        raise _malformed(f"{key} of {where} is a {_kind(value)}, not a size") from None
    for n in numbers:
        if n is not None and not -1 <= n <= limit:
            raise UnsafeFileError(
                f"This model's {where} has {key} = {n:,}; this app accepts at most {limit:,}, "
                "so the file is refused for safety."
            )


def _check_shape(where: str, key: str, value: Any, depth: int = 0) -> None:
    """A declared shape (or a list or dict of shapes): each dimension and each shape's size bounded."""
    if depth > 3:
        raise _malformed(f"{key} of {where} is nested too deep to be a shape")
    shapes = list(value.values()) if isinstance(value, dict) else [value]
    for shape in shapes:
        if shape is None:
            continue
        if not isinstance(shape, list):
            if isinstance(shape, int) and not isinstance(shape, bool):
                shape = [shape]  # EinsumDense's output_shape may be one number
            elif isinstance(shape, dict) and "class_name" in shape:
                continue  # a serialized object: checked on its own
            else:
                raise _malformed(f"{key} of {where} is a {_kind(shape)}, not a shape")
        if shape and all(isinstance(s, list) or s is None for s in shape):  # several shapes (Add, Concatenate)
            _check_shape(where, key, {str(i): s for i, s in enumerate(shape)}, depth + 1)
            continue
        _check_numbers(where, key, shape, MAX_DIM, nested=True)
        dims = [d for d in shape if isinstance(d, int) and d > 0]
        if math.prod(dims) > MAX_TENSOR:
            raise UnsafeFileError(
                f"This model's {where} declares a {key} of {math.prod(dims):,} values per example; this app "
                f"accepts at most {MAX_TENSOR:,}, so the file is refused for safety."
            )


# Layers whose weights grow with their size fields: class name -> kind of estimate.
_WEIGHTED = {
    **dict.fromkeys(("Dense",), "dense"),
    **dict.fromkeys(("EinsumDense",), "einsum"),
    **dict.fromkeys(
        (
            "Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D",
            "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        ),
        "conv",
    ),  # fmt: skip
    **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), "depthwise"),
    **dict.fromkeys(
        ("SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D"), "separable"
    ),
    **dict.fromkeys(("LSTM", "LSTMCell"), "rnn4"),
    **dict.fromkeys(("GRU", "GRUCell"), "rnn3"),
    **dict.fromkeys(("SimpleRNN", "SimpleRNNCell"), "rnn1"),
    **dict.fromkeys(("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"), "convlstm"),
    **dict.fromkeys(("MultiHeadAttention", "GroupQueryAttention"), "attention"),
    **dict.fromkeys(("Embedding",), "embedding"),
    **dict.fromkeys(
        ("BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization", "Normalization"),
        "norm",
    ),
    **dict.fromkeys(("PReLU",), "prelu"),
}


def _int(value: Any, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _product(value: Any) -> int:
    if isinstance(value, list):
        return math.prod(_int(v) for v in value)
    return _int(value)


def _channels(shape: Any, config: dict[str, Any]) -> int | None:
    """The feature (channel) dimension of a declared input shape, when it is a number."""
    if not isinstance(shape, list) or len(shape) < 2 or any(isinstance(s, list) for s in shape):
        return None
    axis = 1 if config.get("data_format") == "channels_first" else -1
    value = shape[axis]
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# Layers that build the layers inside them with their own input size.
_WRAPPERS = {"TimeDistributed", "Bidirectional", "RNN", "StackedRNNCells"}


def _layer_weights(node: dict[str, Any], enclosing: int | None) -> tuple[int, int | None]:
    """(values the layer's weights will hold, as its sizes tell; the input size its inner layers get).

    Keras builds a layer's weights from its build_config (its input shape) before it reads the
    weights file, so that shape and the size fields say what will be allocated. A weighted layer
    with no input size, of its own or from the wrapper around it (TimeDistributed, Bidirectional,
    RNN), is refused: Keras would size it from the graph, which the file doesn't bound.
    """
    cls, config = node["class_name"], node["config"]
    built = node.get("build_config") or {}
    shape = built.get("input_shape")
    own = _channels(shape, config)
    inner = own if cls in _WRAPPERS else None
    kind = _WEIGHTED.get(cls)
    if kind is None:
        return 0, inner
    units = _int(config.get("units"))
    filters = _int(config.get("filters"))
    # From a wrapper: stacked cells see the previous cell's width, so take the larger.
    fan_in = own or (max(enclosing, units, filters) if enclosing else None)
    if kind == "embedding":
        return _int(config.get("input_dim")) * _int(config.get("output_dim")), inner
    if kind == "prelu":
        dims = shape[1:] if isinstance(shape, list) else []
        return _product([d for d in dims if not isinstance(d, list)]), inner
    if kind == "attention":
        query = _channels(built.get("query_shape"), config) or fan_in
        value = _channels(built.get("value_shape"), config) or query
        key = _channels(built.get("key_shape"), config) or value
        if query is None or value is None or key is None:
            raise _no_input_size(cls, config)
        heads = _int(config.get("num_heads") or config.get("num_query_heads"))
        key_dim = _int(config.get("key_dim") or config.get("head_dim"))
        value_dim = _int(config.get("value_dim"), key_dim)
        return heads * (key_dim * (query + key) + value_dim * (value + query)), inner
    if fan_in is None:
        raise _no_input_size(cls, config)
    kernel = _product(config.get("kernel_size"))
    if kind == "dense":
        count = fan_in * units + units
    elif kind == "einsum":
        count = fan_in * _product(config.get("output_shape"))
    elif kind == "conv":
        count = fan_in * filters * kernel // _int(config.get("groups")) + filters
    elif kind == "depthwise":
        count = fan_in * _int(config.get("depth_multiplier")) * kernel
    elif kind == "separable":
        count = fan_in * _int(config.get("depth_multiplier")) * (kernel + filters)
    elif kind.startswith("rnn"):
        count = int(kind[3]) * units * (fan_in + units + 2)
    elif kind == "convlstm":
        count = 4 * filters * kernel * (fan_in + filters)
    else:  # normalization: a few values per channel
        count = 4 * fan_in
    return count, inner


def _no_input_size(cls: str, config: dict[str, Any]) -> UnsafeFileError:
    name = config.get("name")
    layer = f" {_clean(name)}" if isinstance(name, str) else ""
    return UnsafeFileError(
        f"This model's config does not say the input size of its {_clean(cls)} layer{layer}, so the memory "
        "its weights need can't be checked; refused for safety."
    )


def _size(n: float) -> str:
    """A byte count in words (KB, MB or GB)."""
    if n >= 10 * 1024 * MB:
        return f"{n / (1024 * MB):,.0f} GB"
    if n >= 10 * MB:
        return f"{n / MB:,.0f} MB"
    if n >= MB:
        return f"{n / MB:.1f} MB"
    return f"{max(n, 1) / 1024:,.0f} KB" if n >= 1024 else f"{int(n)} bytes"


def _lambda_error() -> UnsafeFileError:
    return UnsafeFileError("This model contains a Lambda layer (custom code), which is refused for safety.")


# ----------------------------------------------------------------------------------------------
# HDF5 weights files
# ----------------------------------------------------------------------------------------------


def check_weights_file(path: str | Path, max_mb: float | None = None, *, isolated: bool | None = None) -> None:
    """Refuse (UnsafeFileError) a weights file that is too large, not HDF5, links to other files, or
    declares datasets beyond the bounds. isolated: parse it in a limited child process first
    (None: when the file isn't trusted, see is_trusted)."""
    path = Path(path)
    max_mb = float(settings.max_model_mb() if max_mb is None else max_mb)
    size = _check_size(path, max_mb, "weights file")
    with open(path, "rb") as fh:
        head = fh.read(len(HDF5_SIGNATURE))
    if head != HDF5_SIGNATURE:
        raise UnsafeFileError(
            "This is not a Keras weights file (.weights.h5): it is not in HDF5 format. "
            "Save the weights with model.save_weights('name.weights.h5')."
        )
    if isolated is None:
        isolated = not is_trusted(path)
    if isolated:
        check_isolated(path, "weights", max_mb)
    _check_weights_file(path, max_mb, size)


def _check_weights_file(path: Path, max_mb: float, size: int, *, read_data: bool = False) -> None:
    with open(path, "rb") as fh:
        _check_hdf5(fh, "weights file", size, max_mb, read_data=read_data)


# HDF5 type classes a weights dataset may have (numbers only; see _check_dataset).
_NUMBER_CLASSES = ("INTEGER", "FLOAT", "ENUM", "OPAQUE")


def _check_hdf5(fileobj: Any, what: str, stored: int, max_mb: float, *, read_data: bool = False) -> None:
    """No external links, external dataset storage or virtual datasets (they read other files); every
    dataset numeric, of a sane rank and within the size bounds before anything is read; with
    read_data (the isolated child) every dataset is then read once, so decompression runs there."""
    import h5py

    problems: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"a link to another file ({_clean(name)})")

    datasets: list[str] = []
    try:
        with h5py.File(fileobj, "r") as h5:
            h5.visititems_links(visit)
            if not problems:
                counts = {"objects": 0, "declared": 0}
                _check_attributes(h5, "/", what, stored)

                def check_object(name: str, obj: Any) -> None:
                    counts["objects"] += 1
                    if counts["objects"] > MAX_H5_OBJECTS:
                        raise UnsafeFileError(f"The {what} holds an unreasonable number of entries; refused.")
                    _check_attributes(obj, name, what, stored)
                    if isinstance(obj, h5py.Dataset):
                        counts["declared"] += _check_dataset(obj, name, what, max_mb, problems)
                        datasets.append(name)

                h5.visititems(check_object)
                if not problems and counts["declared"] > H5_EXPANSION * stored + MB:
                    raise UnsafeFileError(
                        f"The {what} declares {_size(counts['declared'])} of weights but holds only "
                        f"{_size(stored)}; refused for safety (a file made to use up memory?)."
                    )
                if read_data and not problems:
                    for name in datasets:
                        h5[name][()]
    except UnsafeFileError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file, whatever h5py says
        raise UnsafeFileError(f"The {what} is damaged: its HDF5 data cannot be read.") from exc
    if problems:
        raise UnsafeFileError(f"The {what} contains {problems[0]}, which is refused for safety.")


def _check_attributes(obj: Any, name: str, what: str, stored: int) -> None:
    """Attributes (Keras keeps names in them) are stored whole, so none can declare more than the file."""
    attrs = obj.attrs
    if len(attrs) > MAX_ATTRIBUTES:
        raise UnsafeFileError(f"The {what} has an unreasonable number of labels on {_clean(name)}; refused.")
    for key in attrs:
        attr = attrs.get_id(key)
        declared = math.prod(attr.shape or ()) * attr.dtype.itemsize
        if declared > stored + MB:
            raise UnsafeFileError(
                f"The {what} declares a label of {_size(declared)} on {_clean(name)}, more than the whole "
                "file; refused for safety."
            )


def _check_dataset(obj: Any, name: str, what: str, max_mb: float, problems: list[str]) -> int:
    """One dataset's storage, dtype, rank, compression and declared size; returns the declared bytes."""
    import h5py

    if obj.external:
        problems.append(f"data stored in another file ({_clean(name)})")
        return 0
    if obj.is_virtual:
        problems.append(f"a virtual dataset reading other files ({_clean(name)})")
        return 0
    kind = obj.id.get_type()
    cls = next((c for c in _NUMBER_CLASSES if kind.get_class() == getattr(h5py.h5t, c)), None)
    itemsize = kind.get_size()
    if cls == "ENUM" and obj.dtype.kind != "b":
        cls = None  # only numpy's bool is stored as an enum (h5py reads it back as bool)
    if cls == "OPAQUE" and itemsize > 2:
        cls = None  # bfloat16 and float8 are stored as 1-2 byte opaque values; nothing else is
    if cls is None or itemsize > 16 or obj.dtype.names or obj.dtype.subdtype:
        raise UnsafeFileError(
            f"The {what} holds something other than numbers ({_clean(name)}: text, records or "
            "references), which weights never are; refused for safety."
        )
    shape = obj.shape or ()
    if len(shape) > MAX_RANK:
        raise UnsafeFileError(
            f"The {what} holds a {len(shape)}-dimensional block of numbers ({_clean(name)}); weights have "
            f"at most {MAX_RANK} dimensions, so it is refused for safety."
        )
    plist = obj.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in H5_FILTERS:
            raise UnsafeFileError(
                f"The {what} is compressed in an unusual way ({_clean(name)}: filter {code}); refused for safety."
            )
    declared = math.prod(shape) * itemsize
    if declared > max_mb * MB:
        raise UnsafeFileError(
            f"The {what} declares {_size(declared)} of weights in one block ({_clean(name)}), more than "
            f"the {max_mb:,.0f} MB limit for the whole file; refused for safety."
        )
    return declared


# ----------------------------------------------------------------------------------------------
# Trusted files and the isolated check
# ----------------------------------------------------------------------------------------------

_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


def file_digest(path: str | Path) -> str:
    """sha256 of a file (remembered per path, inode, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    with _digests_lock:
        if len(_digests) > 1000:
            _digests.clear()
        _digests[key] = h.hexdigest()
    return _digests[key]


def _trusted_roots() -> list[Path]:
    """Folders shipped with the app: the demo run and the bundled weights."""
    return [settings.demo_dir(), settings.ROOT / "weights"]


def is_trusted(path: str | Path) -> bool:
    """Whether a file may skip the isolated check: shipped with the app (the demo, the bundled
    weights), saved by this app, or checked in isolation before (its sha256 is recorded)."""
    path = Path(path)
    try:
        if not path.is_symlink():
            resolved = path.resolve()
            for root in _trusted_roots():
                if resolved.is_relative_to(root.resolve()):
                    return True
        return (settings.cache_dir() / TRUST_FOLDER / file_digest(path)).is_file()
    except OSError:
        return False


def remember_trusted(path: str | Path) -> None:
    """Record a file as known to parse safely (a model this app saved, a file that passed the
    isolated check), so it isn't checked in a child process again. Best effort."""
    try:
        marker = settings.cache_dir() / TRUST_FOLDER / file_digest(path)
        if not marker.is_file():
            marker.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomic(marker, Path(path).name[:200] + "\n")
    except (OSError, UserError):
        pass


_WHAT = {"model": "model file", "weights": "weights file"}
_CHILD = "import sys\nfrom lib.models.safety import _child_main\nsys.exit(_child_main(sys.argv[1:]))"


def check_isolated(path: str | Path, kind: str, max_mb: float | None = None) -> dict[str, Any]:
    """Run the check of a model ("model") or weights ("weights") file in a short-lived child process
    limited to settings.check_memory_mb() MB beyond its start-up and CHECK_SECONDS of CPU, which also
    reads every dataset once. A refusal comes back as the same UnsafeFileError; a child that crashes,
    runs out of memory or takes too long becomes an UnsafeFileError saying the file could not be read
    safely (and is logged). On success the file is recorded as trusted; returns the child's report
    (its memory limit and the seconds it took)."""
    path = Path(path)
    what = _WHAT[kind]
    max_mb = float(settings.max_model_mb() if max_mb is None else max_mb)
    budget = settings.check_memory_mb()
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HDF5_USE_FILE_LOCKING": "FALSE",
    }
    seconds = CHECK_SECONDS
    command = [sys.executable, "-c", _CHILD, kind, str(path.resolve()), repr(max_mb), str(budget), str(seconds)]
    refused = UnsafeFileError(
        f"The {what} could not be read safely: checking it crashed or needed more than {budget:,} MB "
        "of memory, so it is refused."
    )
    try:
        done = subprocess.run(
            command,
            cwd=settings.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=2 * seconds,  # CPU seconds are limited in the child; this catches a sleeping one
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        LOG.warning("The isolated check of %s took more than %d s; refused.", path, 2 * seconds)
        raise UnsafeFileError(
            f"The {what} could not be read safely: checking it took too long, so it is refused."
        ) from exc
    except OSError as exc:
        LOG.warning("The isolated check of %s could not start: %s", path, exc)
        raise UnsafeFileError(
            f"The {what} could not be checked right now (the server could not start the check); "
            "try again in a moment."
        ) from exc
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except ValueError:
        report = {}
    if not isinstance(report, dict):
        report = {}
    status = report.get("status")
    if done.returncode == 0 and status == "ok":
        remember_trusted(path)
        return report
    if status in ("unsafe", "user") and isinstance(report.get("message"), str):
        error = UnsafeFileError if status == "unsafe" else UserError
        raise error(report["message"])
    LOG.warning(
        "The isolated check of %s ended with code %s (%s): %s",
        path,
        done.returncode,
        status or "no report",
        done.stderr.decode("utf-8", "replace")[-2000:],
    )
    raise refused


def _child_main(argv: list[str]) -> int:
    """The isolated check, in the child: limit memory, CPU time and file writes, then check and read
    the file, printing one JSON line ({"status": "ok"|"unsafe"|"user"|"memory", ...})."""
    kind, path, max_mb, budget, seconds = argv[0], Path(argv[1]), float(argv[2]), int(argv[3]), int(argv[4])
    import time

    import h5py

    start = time.process_time()
    report: dict[str, Any] = {}
    report["address_space"], report["memory_limit"] = _limit_child(budget, seconds)
    with contextlib.suppress(Exception):
        h5py.h5pl.set_loading_state(0)  # never load HDF5 filter plugins (shared libraries)
    try:
        size = _check_size(path, max_mb, _WHAT[kind])
        if kind == "model":
            _check_model_file(path, max_mb, size, read_data=True)
        else:
            _check_weights_file(path, max_mb, size, read_data=True)
        report["status"] = "ok"
    except UnsafeFileError as exc:
        report.update(status="unsafe", message=str(exc))
    except UserError as exc:
        report.update(status="user", message=str(exc))
    except MemoryError:
        report["status"] = "memory"
    report["seconds"] = round(time.process_time() - start, 3)
    print(json.dumps(report), flush=True)
    return 0 if report["status"] != "memory" else 3


def _limit_child(budget_mb: int, seconds: int) -> tuple[int, int | None]:
    """Limit this (child) process: address space to its size now plus budget_mb, CPU seconds, no
    files written, no core dumps. Returns (its size now, the address-space limit) in bytes; the
    limit is None where the platform has none."""
    now = _address_space()
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows: isolated, but without limits
        return now, None
    limit = None
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    with contextlib.suppress(Exception):
        if now:  # without /proc (not Linux) the start-up size is unknown: no address-space limit
            wanted = now + budget_mb * MB
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                wanted = min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_AS, (wanted, wanted))
            limit = wanted
    return now, limit


def _address_space() -> int:
    """This process's virtual memory size in bytes (Linux), or 0 when it can't be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def safe_load_model(path: str | Path, max_mb: float | None = None, *, isolated: bool | None = None) -> Any:
    """check_model_file (in an isolated child first when the file isn't trusted), then Keras
    safe-mode loading with the studio's layers registered."""
    path = Path(path)
    check_model_file(path, max_mb, isolated=isolated)
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


def has_lambda_layers(model: Any) -> bool:
    """True when any layer (nested too) is a Lambda layer; saved models must not have any."""
    import keras

    def walk(m: Any) -> bool:
        for layer in getattr(m, "layers", []):
            if isinstance(layer, keras.layers.Lambda) or walk(layer):
                return True
        return False

    return walk(model)


# ----------------------------------------------------------------------------------------------
# A run's numpy files
# ----------------------------------------------------------------------------------------------

def npz_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Each member's shape (by name, without .npy) of an .npz, read from its .npy header (a few
    bytes), so the caller can bound what a small compressed file declares before numpy allocates
    it. None when it isn't an .npz of plain numeric arrays (an object array would need pickles)."""
    import numpy as np  # here: a job waiting in the queue imports this module and must stay small

    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                with zf.open(member) as fh:
                    reader = readers.get(np.lib.format.read_magic(fh))
                    if reader is None:
                        return None
                    shape, _, dtype = reader(fh)
                if dtype.hasobject or dtype.kind not in "fiu":
                    return None
                shapes[member.removesuffix(".npy")] = tuple(shape)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    return shapes
