"""The one model loader: a run's saved model, checked by lib.models.safety, loaded once and kept in
one bounded, process-wide cache (the Evaluate and Predict pages, every visitor and the export share
the same copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lib import files, runs, settings
from lib.errors import UserError
from lib.models import engine, registry, safety, unknown
from lib.runs import Run


class LoadedModel:
    """A loaded run ready to predict: classes (output order), input size, and its engine.

    engine "litert": the run's .tflite (probabilities and pooled features) runs in LiteRT and
    TensorFlow is never imported to predict S x S pixels; the Keras model (keras_model) is loaded
    only when asked for (Grad-CAM, export, pixels of another size). engine "keras": the Keras
    model does everything."""

    def __init__(self, run: Run, keras_model: Any = None, *, lite: Any = None, note: str = ""):
        self.run = run
        self.lite = lite  # lib.models.engine.LiteModel or None
        self.note = note  # why LiteRT isn't used, when it isn't
        self._keras = keras_model
        self._fns: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._detector: unknown.Detector | None = None
        self._detector_read = False

    @property
    def engine(self) -> str:
        return "litert" if self.lite is not None else "keras"

    @property
    def keras_model(self) -> Any:
        """The run's Keras model, loaded (and safety-checked) on first use."""
        if self._keras is None:
            with self._lock:
                if self._keras is None:
                    self._keras = _load_keras(self.run)
        return self._keras

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

    @property
    def has_features(self) -> bool:
        """Whether predict_with_features can give pooled base features for this model."""
        if self.lite is not None:
            return engine.FEATURES in self.lite.outputs
        return self._keras_fn("features") is not None

    @staticmethod
    def _pixels(pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected N x H x W x 3 pixels, got shape {x.shape}")
        return x

    def _use_lite(self, x: np.ndarray) -> bool:
        return self.lite is not None and x.shape[1:3] == (self.lite.size, self.lite.size)

    def _keras_fn(self, kind: str) -> Any:
        """A tf.function with a shape-agnostic signature, traced once: ~10x faster than an eager
        call for one image, and as fast as predict_on_batch without its per-call overhead. kind
        "probs" or "features" (the two-output model; None when this model has no pooled features)."""
        if kind not in self._fns:
            import tensorflow as tf  # the Keras path: TensorFlow is needed anyway

            from lib.models import build  # imports Keras: kept lazy

            model = self.keras_model
            if kind == "features":
                model = build.with_features(model)
            elif kind == "judge":
                model = build.with_known_score(model, self.detector)
            with self._lock:
                if kind not in self._fns:
                    self._fns[kind] = (
                        None
                        if model is None
                        else tf.function(
                            lambda t, m=model: m(t, training=False),
                            input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
                        )
                    )
        return self._fns[kind]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N x classes) for N x H x W x 3 RGB 0-255 pixels (any H, W; S x S is
        fastest, and the only size LiteRT runs: other sizes go through Keras)."""
        x = self._pixels(pixels)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self._use_lite(x):
            return np.asarray(self.lite(x)[engine.PROBABILITIES], dtype=np.float32)
        import tensorflow as tf  # the Keras path: TensorFlow is loaded already

        out = self._keras_fn("probs")(tf.convert_to_tensor(x, dtype=tf.float32))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out, dtype=np.float32)

    def predict_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities N x classes, pooled base features N x D) in one pass, for the same
        pixels as predict(). UserError for a model without the studio's head (no "pool" layer)."""
        x = self._pixels(pixels)
        if self._use_lite(x) and engine.FEATURES in self.lite.outputs:
            out = self.lite(x)
            return (
                np.asarray(out[engine.PROBABILITIES], dtype=np.float32),
                np.asarray(out[engine.FEATURES], dtype=np.float32),
            )
        fn = self._keras_fn("features")
        if fn is None:
            raise UserError(f"The model of run {self.run.id} has no pooled base features (an unusual shape).")
        import tensorflow as tf  # the Keras path: TensorFlow is loaded already

        if x.shape[0] == 0:
            width = int(fn.get_concrete_function().structured_outputs[1].shape[-1])
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, width), np.float32)
        probs, feats = fn(tf.convert_to_tensor(x, dtype=tf.float32))
        return np.asarray(probs, dtype=np.float32), np.asarray(feats, dtype=np.float32)

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
        """Width of the pooled base features (what the detector was fitted on)."""
        if self.lite is not None and engine.FEATURES in self.lite.outputs:
            shape = self.lite.output_shape(engine.FEATURES)
            return int(shape[-1]) if shape else None
        try:
            return int(self.keras_model.get_layer("pool").input.shape[-1])
        except (ValueError, AttributeError, TypeError):
            return None

    def judge(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities, unknown scores 0..1 or None without a detector): what the
        Predict page and the CLI show. LiteRT: its probabilities and pooled features, scored by the
        numpy detector. Keras: the detector and temperature inside the model's graph (the studio's
        KnownScore and Temperature layers, as in the exports), since numpy's matrix product right
        after TensorFlow's threads costs ~7 ms a photo on 2 cores, in the graph ~0.3 ms."""
        detector = self.detector
        if detector is None:
            return self.predict(pixels), None
        x = self._pixels(pixels)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros(0)
        if self._use_lite(x) and engine.FEATURES in self.lite.outputs:
            out = self.lite(x)
            probs = detector.calibrated(np.asarray(out[engine.PROBABILITIES], dtype=np.float64))
            return probs.astype(np.float32), detector.unknown_score(out[engine.FEATURES])
        import tensorflow as tf  # the Keras path: TensorFlow is loaded already

        probs, known = self._keras_fn("judge")(tf.convert_to_tensor(x, dtype=tf.float32))
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


_cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()
LITE_FILE = "model.tflite"


def _load_keras(run: Run) -> Any:
    """The run's model.keras through the safety checks; UserError in plain words."""
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
    _check_outputs(run, outputs)
    return model


def _check_outputs(run: Run, outputs: int | None) -> None:
    if outputs is not None and outputs != len(run.classes):
        raise UserError(
            f"The run's model gives {outputs} outputs but the run lists {len(run.classes)} classes: "
            "the run folder looks inconsistent."
        )


def model_digest(run: Run) -> str:
    """sha256 of model.keras: what the run's .tflite was made from (survives copying the run)."""
    h = hashlib.sha256()
    with open(run.model_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lite_location(run: Run, digest: str) -> Path:
    """<run>/model.tflite when the run folder is writable, else a folder of the cache keyed by the
    model's content (the shipped demo, read-only copies)."""
    if run.writable and files.writable_dir(run.path):
        return run.path / LITE_FILE
    return settings.cache_dir() / "tflite" / digest[:24] / LITE_FILE


def run_lite(
    run: Run,
    keras_model: Any = None,
    pixels: np.ndarray | None = None,
    made: Callable[[], bytes] | None = None,
    reference: Callable[[np.ndarray], dict[str, np.ndarray] | None] | None = None,
) -> engine.Converted:
    """The run's full model (probabilities and pooled features) as LiteRT: its .tflite when one
    made from this model.keras exists, else converted now (Keras model given or loaded), checked
    against Keras on `pixels` (or generated images) and kept, in the run or in the cache. made():
    the .tflite built another way (training grafts the head on the converted base), still checked;
    reference(pixels): what it must give, when computing that needs no Keras forward pass (None:
    ask Keras)."""
    digest = model_digest(run)
    size = int(run.image_size or 0)
    identity = {"model_sha256": digest, "image_size": size}
    for target in dict.fromkeys([run.path / LITE_FILE, lite_location(run, digest)]):
        record = target.with_name(target.name + ".json")
        if record.is_file():
            try:
                if files.read_json(record).get("identity") == identity:
                    return engine.cached_conversion(target, identity, _never, _never)
            except (OSError, ValueError, UserError):
                continue
    holder: dict[str, Any] = {"keras": keras_model}

    def make() -> tuple[Any, int, int | None]:
        from lib.models import build  # imports Keras: kept lazy

        if holder["keras"] is None:
            holder["keras"] = _load_keras(run)
        holder["fixed"] = build.fixed_size_outputs(holder["keras"], size)
        if made is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                return made()
        return holder["fixed"], size, None

    def check(lite: engine.LiteModel) -> float:
        x = (engine.check_images(size) if pixels is None else np.asarray(pixels)).astype(np.float32)
        expected = reference(x) if reference is not None else None
        if expected is None:
            expected = {k: np.asarray(v) for k, v in holder["fixed"](x, training=False).items()}
        return engine.max_difference(expected, lite(x))

    converted = engine.cached_conversion(lite_location(run, digest), identity, make, check)
    converted.keras_model = holder["keras"]
    return converted


def _never(*_: Any) -> Any:  # pragma: no cover - a valid record is never made again
    raise RuntimeError("the converted model was expected in the cache")


def load(run: Run | str | Path, engine_name: str | None = None) -> LoadedModel:
    """The run's model, loaded once per model file and engine (a replaced file is loaded again);
    at most settings.max_loaded_models() stay in memory, the least recently used leaves first.
    engine_name: auto, litert or keras (default: the STUDIO_ENGINE setting); LiteRT runs the
    run's .tflite (made on first use when missing) and falls back to Keras, with a note, when
    it can't be made or disagrees with Keras. UserError in plain words for a missing, broken,
    unsafe or inconsistent run."""
    if not isinstance(run, Run):
        run = runs.open_run(run)
    elif not run.has_model:
        run = runs.open_run(run.path)  # raises with the reason
    chosen = engine.choose(engine_name)
    st = run.model_path.stat()
    key = (str(run.model_path.resolve()), st.st_mtime_ns, st.st_size, chosen)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        loaded = None
        if chosen == "litert":
            try:
                safety.check_model_file(run.model_path)  # the same refusals as the Keras path
            except UserError as exc:
                raise UserError(f"The model of run {run.id} cannot be used: {exc}") from exc
            converted = run_lite(run)
            if converted.lite is not None and converted.seconds and run.writable:
                runs.append_log(
                    run.path,
                    f"Made the LiteRT model in {converted.seconds:.1f} s "
                    f"(largest difference from Keras {converted.max_diff:.1e}).",
                )
            if converted.lite is not None:
                shape = converted.lite.output_shape(engine.PROBABILITIES)
                _check_outputs(run, shape[-1] if shape else None)
                loaded = LoadedModel(run, getattr(converted, "keras_model", None), lite=converted.lite)
            else:
                note = f"Keras runs this model: {converted.reason}."
                if run.writable:
                    runs.append_log(run.path, note)
                loaded = LoadedModel(run, getattr(converted, "keras_model", None) or _load_keras(run), note=note)
        if loaded is None:
            loaded = LoadedModel(run, _load_keras(run))
        _cache[key] = loaded
        while len(_cache) > max(1, settings.max_loaded_models()):
            _cache.popitem(last=False)
        return loaded


def has_lite(run: Run) -> bool:
    """Whether the run's LiteRT model (or the remembered reason it can't have one) is made already."""
    digest = model_digest(run)
    identity = {"model_sha256": digest, "image_size": int(run.image_size or 0)}
    for target in (run.path / LITE_FILE, lite_location(run, digest)):
        with contextlib.suppress(OSError, ValueError):
            if files.read_json(target.with_name(target.name + ".json")).get("identity") == identity:
                return True
    return False


def prepare_in_background(run_dir: str | Path | None) -> bool:
    """Make a run's LiteRT model in a child process when it has none yet (the shipped demo after a
    fresh install), so the first verdict on the Predict page doesn't wait for a conversion;
    returns whether one was started."""
    if run_dir is None or engine.choose() != "litert":
        return False
    try:
        run = runs.read_run(run_dir)
        if not run.has_model or run.damaged or has_lite(run):
            return False
        subprocess.Popen(
            [sys.executable, "-c", "import sys\nfrom lib.models import loader\nloader.load(sys.argv[1])", str(run.path)],
            cwd=settings.ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    return True


SUMMARY_FILE = "model_summary.json"


def model_summary(run: Run | str | Path) -> dict[str, Any]:
    """LoadedModel.summary() kept next to the run (or in the cache for read-only runs), so the
    Evaluate page shows it without loading TensorFlow; made once per model file."""
    if not isinstance(run, Run):
        run = runs.open_run(run)
    where = run.output_dir("reports") / SUMMARY_FILE
    identity = run.model_identity()
    with contextlib.suppress(OSError, ValueError):
        stored = files.read_json(where)
        if stored.get("model") == identity and isinstance(stored.get("summary"), dict):
            return stored["summary"]
    summary = load(run).summary()
    save_summary(run, summary)
    return summary


def save_summary(run: Run, summary: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, UserError):
        files.write_json(
            run.output_dir("reports") / SUMMARY_FILE, {"model": run.model_identity(), "summary": summary}
        )


def loaded_count() -> int:
    """How many models the cache holds (the closing note's "model copies held by the app")."""
    return len(_cache)


def clear() -> None:
    with _cache_lock:
        _cache.clear()
