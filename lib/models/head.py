"""A run's classifier head as plain numpy (head.npz): the Dense layers on the frozen base's pooled
features, with the sha256 of the model.keras they belong to.

Training writes it when the head was trained on cached features and the base stayed frozen. With
it, scoring images whose base features are cached already (the Evaluate page's splits after
training, the data doctor's pass) needs no decoding and no network, and training checks the
.tflite it grafted against it. A copied run's head.npz is untrusted: every member's .npy header is
read and bounded before numpy allocates anything, and no pickles are allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib import files
from lib.models import safety

VERSION = 1
ACTIVATIONS = ("relu", "softmax", "linear")
MAX_LAYERS = 4
MAX_ELEMENTS = 1 << 24  # per array (64 MB of float32): pooled features have a few thousand values
MAX_META_BYTES = 1 << 16

Layer = tuple[np.ndarray, np.ndarray, str]  # kernel (in x out), bias (out), activation name


def forward(layers: list[Layer], features: np.ndarray) -> np.ndarray:
    """The head's output for N x dims features, computed in float64 (returned as float32)."""
    h = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    for kernel, bias, activation in layers:
        h = h @ np.asarray(kernel, dtype=np.float64) + np.asarray(bias, dtype=np.float64)
        if activation == "relu":
            h = np.maximum(h, 0.0)
        elif activation == "softmax":
            h = np.exp(h - h.max(axis=-1, keepdims=True))
            h = h / h.sum(axis=-1, keepdims=True)
    return h.astype(np.float32)


@dataclass
class DenseHead:
    layers: list[Layer]
    model_sha256: str

    @property
    def dims(self) -> int:
        return int(self.layers[0][0].shape[0])

    @property
    def outputs(self) -> int:
        return int(self.layers[-1][0].shape[1])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return forward(self.layers, features)

    def save(self, path: str | Path) -> None:
        meta = {"version": VERSION, "activations": [a for _, _, a in self.layers], "model_sha256": self.model_sha256}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for i, (kernel, bias, _) in enumerate(self.layers):
            arrays[f"kernel{i}"] = np.asarray(kernel, dtype=np.float32)
            arrays[f"bias{i}"] = np.asarray(bias, dtype=np.float32)
        with files.atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def usable_layers(layers: list[Layer]) -> bool:
    """Whether these layers form a head this module can run (and so store)."""
    if not 0 < len(layers) <= MAX_LAYERS:
        return False
    width = None
    for kernel, bias, activation in layers:
        if activation not in ACTIVATIONS or np.ndim(kernel) != 2 or np.shape(bias) != (np.shape(kernel)[1],):
            return False
        if width is not None and np.shape(kernel)[0] != width:
            return False
        width = np.shape(kernel)[1]
    return layers[-1][2] == "softmax"


def _within_bounds(path: Path) -> bool:
    """The members' shapes from their headers (lib.models.safety.npz_shapes): 1-D meta, then
    kernel<i> (2-D) and bias<i> (1-D) pairs, each bounded, before numpy allocates anything."""
    shapes = safety.npz_shapes(path)
    if shapes is None:
        return False
    layers = (len(shapes) - 1) // 2
    expected = {"meta"} | {f"kernel{i}" for i in range(layers)} | {f"bias{i}" for i in range(layers)}
    if set(shapes) != expected or not 0 < layers <= MAX_LAYERS:
        return False
    for name, shape in shapes.items():
        if len(shape) != (2 if name.startswith("kernel") else 1):
            return False
        if int(np.prod(shape)) > (MAX_META_BYTES if name == "meta" else MAX_ELEMENTS):
            return False
    return True


def load(path: str | Path, model_sha256: str | None = None) -> DenseHead | None:
    """The stored head, or None when there is none, it can't be read, or (model_sha256 given) it
    belongs to another model file."""
    path = Path(path)
    if not path.is_file() or not _within_bounds(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            activations = [str(a) for a in meta["activations"]]
            layers = [
                (data[f"kernel{i}"].astype(np.float32), data[f"bias{i}"].astype(np.float32), a)
                for i, a in enumerate(activations)
            ]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    if int(meta.get("version", 0)) != VERSION or not usable_layers(layers):
        return None
    head = DenseHead(layers, str(meta.get("model_sha256", "")))
    if model_sha256 is not None and head.model_sha256 != model_sha256:
        return None
    return head
