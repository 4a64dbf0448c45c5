"""The one model loader: a run's saved model, checked by lib.models.safety, loaded once and kept in
one bounded, process-wide cache (the Evaluate and Predict pages, every visitor and the export share
the same copy).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib import runs, settings
from lib.errors import UserError
from lib.models import build, registry, safety, unknown
from lib.runs import Run


@dataclass(eq=False)
class LoadedModel:
    """A loaded run ready to predict: its Keras model, classes (output order) and input size."""

    run: Run
    keras_model: Any
    _fn: Any = field(default=None, init=False, repr=False)
    _features_fn: Any = field(default=None, init=False, repr=False)
    _judge_fn: Any = field(default=None, init=False, repr=False)
    _detector: Any = field(default=None, init=False, repr=False)
    _detector_read: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def key(self) -> tuple:
        """Identifies the model file (its path and identity): results cached under it stay valid."""
        return (str(self.run.path.resolve()), *sorted(self.run.model_identity().items()))

    @property
    def classes(self) -> list[str]:
        return self.run.classes

    @property
    def size(self) -> int:
        return int(self.run.image_size or 0)

    @property
    def spec(self) -> registry.BaseSpec | None:
        try:
            return registry.get_base(self.run.base)
        except UserError:
            return None  # a run of a base this version doesn't know: still predicts

    @property
    def last_conv_layer(self) -> str | None:
        return self.spec.last_conv_layer if self.spec else None

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N x classes) for N x H x W x 3 RGB 0-255 pixels (any H, W; S x S is fastest).

        A tf.function with a shape-agnostic signature, traced once: ~10x faster than an eager call
        for one image, and as fast as predict_on_batch without its per-call overhead.
        """
        import tensorflow as tf  # the model is Keras: TensorFlow is loaded already

        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N x H x W x 3 pixels, got shape {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self._fn is None:
            with self._lock:
                if self._fn is None:
                    model = self.keras_model
                    self._fn = tf.function(
                        lambda t: model(t, training=False),
                        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
                    )
        out = self._fn(tf.convert_to_tensor(x, dtype=tf.float32))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out, dtype=np.float32)

    @property
    def detector(self) -> unknown.Detector | None:
        """The run's unknown-photo detector and temperature (None for runs trained before it, or
        when its file doesn't fit this model: such runs predict without the unknown verdict)."""
        if not self._detector_read:
            found = unknown.load(self.run.unknown_path)
            if found is not None and (
                len(found.gaussians.centres) != len(self.classes) or found.dimensions != self._feature_dims()
            ):
                found = None  # a detector of another model (a copied or replaced file): ignore it
            self._detector, self._detector_read = found, True
        return self._detector

    def _feature_dims(self) -> int | None:
        """Channels of the base's features in the model (what the detector was fitted on)."""
        try:
            return int(self.keras_model.get_layer("pool").input.shape[-1])
        except (ValueError, AttributeError, TypeError):
            return None

    def predict_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities N x classes, pooled base features N x D) in one pass of the model."""
        import tensorflow as tf

        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N x H x W x 3 pixels, got shape {x.shape}")
        if self._features_fn is None:
            with self._lock:
                if self._features_fn is None:
                    two = build.with_features(self.keras_model)
                    self._features_fn = tf.function(
                        lambda t: two(t, training=False),
                        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
                    )
        if x.shape[0] == 0:
            dims = self.detector.dimensions if self.detector is not None else 0
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, dims), np.float32)
        probs, feats = self._features_fn(tf.convert_to_tensor(x, dtype=tf.float32))
        return np.asarray(probs, dtype=np.float32), np.asarray(feats, dtype=np.float32)

    def judge(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities, unknown scores 0..1 or None without a detector): what the
        Predict page and the CLI show. The detector and temperature run inside the model's graph
        (the studio's KnownScore and Temperature layers, as in the exports): numpy's matrix product
        right after TensorFlow's threads costs ~7 ms a photo on 2 cores, in the graph ~0.3 ms."""
        import tensorflow as tf

        detector = self.detector
        if detector is None:
            return self.predict(pixels), None
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N x H x W x 3 pixels, got shape {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros(0)
        if self._judge_fn is None:
            with self._lock:
                if self._judge_fn is None:
                    both = build.with_known_score(self.keras_model, detector)
                    self._judge_fn = tf.function(
                        lambda t: both(t, training=False),
                        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
                    )
        probs, known = self._judge_fn(tf.convert_to_tensor(x, dtype=tf.float32))
        return np.asarray(probs, dtype=np.float32), 1.0 - np.asarray(known, dtype=np.float64)[:, 0]

    def summary(self) -> dict[str, Any]:
        """Layers (top level and in total, nested bases included), parameters, and model.keras size."""
        model = self.keras_model

        def count(weights: Any) -> int:
            return int(sum(int(np.prod(w.shape)) for w in weights))

        def all_layers(layer: Any):
            for sub in getattr(layer, "layers", []) or []:
                yield sub
                yield from all_layers(sub)

        total, trainable = count(model.weights), count(model.trainable_weights)
        size = self.run.model_path.stat().st_size
        return {
            "name": str(getattr(model, "name", "")),
            "base": self.run.base,
            "layers": sum(1 for _ in all_layers(model)),
            "top_level_layers": len(getattr(model, "layers", [])),
            "parameters": total,
            "trainable_parameters": trainable,
            "non_trainable_parameters": total - trainable,
            "size_bytes": int(size),
            "size_mb": round(size / 1e6, 2),
            "input_size": self.size,
            "classes": len(self.classes),
        }


_cache: OrderedDict[tuple[str, int, int], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def load(run: Run | str | Path) -> LoadedModel:
    """The run's model, loaded once per model file (a replaced file is loaded again); at most
    settings.max_loaded_models() stay in memory, the least recently used leaves first.
    UserError in plain words for a missing, broken, unsafe or inconsistent run."""
    if not isinstance(run, Run):
        run = runs.open_run(run)
    elif not run.has_model:
        run = runs.open_run(run.path)  # raises with the reason
    st = run.model_path.stat()
    key = (str(run.model_path.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            model = safety.safe_load_model(run.model_path)
        except UserError as exc:
            raise UserError(f"The model of run {run.id} cannot be used: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a broken or foreign file, whatever Keras says
            raise UserError(
                f"The run's model file {run.model_path} cannot be loaded ({type(exc).__name__}: {exc})."
            ) from exc
        outputs = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
        if outputs is not None and outputs != len(run.classes):
            raise UserError(
                f"The run's model gives {outputs} outputs but the run lists {len(run.classes)} classes: "
                "the run folder looks inconsistent."
            )
        loaded = LoadedModel(run=run, keras_model=model)
        _cache[key] = loaded
        while len(_cache) > max(1, settings.max_loaded_models()):
            _cache.popitem(last=False)
        return loaded


def loaded_count() -> int:
    """How many models the cache holds (the closing note's "model copies held by the app")."""
    return len(_cache)


def clear() -> None:
    with _cache_lock:
        _cache.clear()
