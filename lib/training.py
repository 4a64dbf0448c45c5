"""Training: a TrainConfig in, a finished run folder out, fast.

With a frozen base the expensive part (the base network) is run once per image, its features are
cached on disk (numpy memmaps keyed by dataset content, base, weights, size and augmentation), and
only the small head is trained on them, so a second run with another head or learning rate starts
training within seconds. The saved model still holds resize + preprocessing + base + head.
Fine-tuning (after the head has trained on cached features), from-scratch training and
feature_cache=False take the plain path: the whole network runs on decoded images every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from lib import models, runs, settings
from lib.errors import ImageError, UserError

CACHE_VERSION = 1
FEATURE_BATCH = 8  # fixed batch shape for the feature pass: one trace; small batches run fastest on a CPU
OPTIMIZERS = ("adam", "rmsprop", "sgd")
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that decides a training run; serialized as the run's config.json.

    Defaults beat the classic notebook recipe: the head trains on cached features with Adam 1e-3,
    label smoothing and early stopping (best weights restored) instead of 10 epochs at 1e-4.
    """

    data_dir: str = ""
    base: str = models.DEFAULT_BASE
    weights: str = "imagenet"  # "imagenet" | "bundled" | "none" | path to a weights file
    image_size: int | None = None  # None: the base's default size
    cut_layer: str | None = None  # e.g. "mixed7" for InceptionV3
    # Head
    pooling: str = "avg"  # "avg" | "flatten"
    hidden_units: int = 0  # 0: no hidden layer
    dropout: float = 0.2
    # Augmentation (in the feature cache: augmented_views extra views of each training image)
    augment: bool = False
    flip: str = "horizontal"
    rotation: float = 0.1  # fraction of a full turn
    zoom: float = 0.1
    contrast: float = 0.1
    translation: float = 0.1
    augmented_views: int = 3
    # Optimization
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 40
    batch_size: int = 32
    label_smoothing: float = 0.1
    class_weights: bool = True
    early_stopping: int = 8  # patience in epochs (0: off); best weights are restored
    target_val_accuracy: float = 0.0  # stop once validation accuracy reaches it (0: off)
    # Fine-tuning (after the head is trained)
    fine_tune_layers: int = 0  # top base layers to unfreeze (0: no fine-tuning unless epochs are set)
    fine_tune_epochs: int = 0
    fine_tune_lr: float = 1e-5
    seed: int = 42
    feature_cache: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; keys that aren't config fields (classes, name, dataset...) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"The training configuration is not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise UserError("The training configuration must be a JSON object.")
        return cls.from_dict(data)

    @property
    def spec(self) -> models.BaseSpec:
        return models.get_base(self.base)

    @property
    def head(self) -> models.HeadSpec:
        return models.HeadSpec(
            pooling=self.pooling, hidden=int(self.hidden_units), dropout=float(self.dropout)
        )

    @property
    def frozen(self) -> bool:
        """The base is frozen for the first phase unless it starts from scratch."""
        return models.normalize_weights(self.spec, self.weights) != "none"

    @property
    def fine_tuning(self) -> bool:
        return self.frozen and self.fine_tune_epochs > 0

    def resolved(self) -> TrainConfig:
        """A checked copy with the base's canonical name, its default size and the fine-tuning depth filled in."""
        spec = self.spec
        cfg = replace(
            self,
            base=spec.name,
            weights=models.normalize_weights(spec, self.weights),
            image_size=int(self.image_size) if self.image_size else spec.default_size,
            cut_layer=self.cut_layer or None,
        )
        if cfg.fine_tune_layers > 0 and cfg.fine_tune_epochs <= 0:
            cfg.fine_tune_epochs = 5
        if cfg.fine_tune_epochs > 0 and cfg.fine_tune_layers <= 0:
            cfg.fine_tune_layers = spec.fine_tune_layers
        cfg.check()
        return cfg

    def check(self) -> None:
        """UserError, in plain words, for the first setting that can't work."""
        spec = self.spec
        if self.image_size is not None:
            models.check_size(spec, int(self.image_size))
        if self.cut_layer and self.cut_layer not in spec.cut_layers:
            choices = ", ".join(spec.cut_layers) or "none"
            raise UserError(
                f"{spec.name} can't be cut at {self.cut_layer!r} (possible cut layers: {choices})."
            )
        rules = [
            (self.pooling in ("avg", "flatten"), f"Pooling must be avg or flatten, not {self.pooling!r}."),
            (0 <= self.hidden_units <= 8192, "Hidden units must be between 0 (none) and 8192."),
            (0 <= self.dropout < 1, "Dropout must be at least 0 and below 1."),
            (self.flip in FLIPS, f"Flip must be one of {', '.join(FLIPS)}."),
            (0 <= self.rotation <= 0.5, "Rotation must be between 0 and 0.5 (a fraction of a full turn)."),
            (0 <= self.zoom < 1, "Zoom must be at least 0 and below 1."),
            (0 <= self.contrast < 1, "Contrast must be at least 0 and below 1."),
            (0 <= self.translation < 1, "Translation must be at least 0 and below 1."),
            (0 <= self.augmented_views <= 20, "Augmented views must be between 0 and 20."),
            (self.optimizer in OPTIMIZERS, f"Optimizer must be one of {', '.join(OPTIMIZERS)}."),
            (0 < self.lr <= 1, "The learning rate must be above 0 and at most 1."),
            (1 <= self.epochs <= 10_000, "Epochs must be between 1 and 10,000."),
            (1 <= self.batch_size <= 4096, "The batch size must be between 1 and 4,096."),
            (0 <= self.label_smoothing < 1, "Label smoothing must be at least 0 and below 1."),
            (self.early_stopping >= 0, "Early-stopping patience can't be negative."),
            (0 <= self.target_val_accuracy <= 1, "The target validation accuracy must be between 0 and 1."),
            (self.fine_tune_layers >= 0, "Fine-tune layers can't be negative."),
            (0 <= self.fine_tune_epochs <= 10_000, "Fine-tune epochs must be between 0 and 10,000."),
            (0 < self.fine_tune_lr <= 1, "The fine-tuning learning rate must be above 0 and at most 1."),
            (0 <= self.seed < 2**31, "The seed must be a whole number from 0 to 2147483647."),
            (
                0 <= self.val_fraction < 1
                and 0 <= self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1,
                "The validation and test fractions must leave some images for training.",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise UserError(message)
        if self.weights == "bundled" and (
            spec.name != models.BUNDLED_BASE or (self.image_size or spec.default_size) != models.BUNDLED_SIZE
        ):
            raise UserError(
                f"The bundled offline weights are for {models.BUNDLED_BASE} at {models.BUNDLED_SIZE} px only."
            )
        if (
            self.weights not in ("imagenet", "bundled", "none")
            and not Path(self.weights).expanduser().is_file()
        ):
            raise UserError(f"The weights file {self.weights} does not exist.")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """The usable images of a scan in a fixed order, with class ids and split indices."""

    root: Path
    classes: list[str]
    paths: list[str]
    relpaths: list[str]
    sha1: list[str]
    labels: np.ndarray
    splits: np.ndarray  # "train" / "validation" / "test" per item
    scan_key: str = ""

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for rel, sha, split, label in zip(self.relpaths, self.sha1, self.splits, self.labels, strict=True):
            h.update(f"{rel}\0{sha}\0{split}\0{self.classes[label]}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:24]

    def counts(self) -> dict[str, int]:
        return {s: int((self.splits == s).sum()) for s in ("train", "validation", "test")}


def load_scan(data_dir: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Any:
    """lib.datasets.scan, cached on disk by the folder's stat fingerprint (a rescan reads every image)."""
    from lib import datasets

    root = datasets.dataset_root(datasets.check_folder(data_dir))
    key = hashlib.sha256(
        f"{datasets.scan_key(root)}|{val_fraction}|{test_fraction}|{settings.max_pixels()}".encode()
    ).hexdigest()[:24]
    path = settings.cache_dir() / "scans" / f"{key}.pkl"
    with contextlib.suppress(Exception):  # a stale or foreign pickle just means scanning again
        with open(path, "rb") as fh:
            return pickle.load(fh)
    result = datasets.scan(
        root, val_fraction=val_fraction, test_fraction=test_fraction, max_pixels=settings.max_pixels()
    )
    with contextlib.suppress(OSError):
        runs.write_atomic(path, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return result


def _data_from_scan(scan: Any) -> _Data:
    usable = scan.usable.sort_values("relpath", kind="stable")
    classes = list(scan.classes)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise UserError(f"Training needs at least 2 classes with usable images; this dataset has {found}.")
    index = {c: i for i, c in enumerate(classes)}
    data = _Data(
        root=Path(scan.root),
        classes=classes,
        paths=[str(p) for p in usable["path"]],
        relpaths=[str(p) for p in usable["relpath"]],
        sha1=[str(s) for s in usable["sha1"]],
        labels=np.asarray([index[c] for c in usable["class"]], dtype=np.int32),
        splits=np.asarray(usable["split"], dtype=object).astype(str),
    )
    train_classes = set(data.labels[data.index("train")].tolist())
    if len(train_classes) < 2:
        raise UserError("Training needs training images of at least 2 classes.")
    if len(data.index("validation")) == 0:
        raise UserError("The dataset has no validation images: add more images per class (at least 2 each).")
    return data


# ----------------------------------------------------------------------------------------------
# Keras pieces
# ----------------------------------------------------------------------------------------------


def augmenter(config: TrainConfig, seed: int | None = None) -> Any | None:
    """The augmentation layers for a config (0-255 pixels in, same out), or None when off."""
    import keras
    from keras import layers

    if not config.augment:
        return None
    seed = config.seed if seed is None else seed
    parts: list[Any] = []
    if config.flip != "none":
        parts.append(layers.RandomFlip(config.flip, seed=seed))
    if config.rotation > 0:
        parts.append(layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom > 0:
        parts.append(layers.RandomZoom((-config.zoom, config.zoom), fill_mode="reflect", seed=seed + 2))
    if config.translation > 0:
        parts.append(
            layers.RandomTranslation(
                config.translation, config.translation, fill_mode="reflect", seed=seed + 3
            )
        )
    if config.contrast > 0:
        parts.append(layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 4))
    if not parts:
        return None
    return keras.Sequential(parts, name="augmentation")


def _optimizer(name: str, lr: float) -> Any:
    import keras

    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def _compile(model: Any, optimizer: str, lr: float, label_smoothing: float) -> None:
    import keras

    model.compile(
        optimizer=_optimizer(optimizer, lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _strategy() -> Any:
    """MirroredStrategy over all GPUs when there is more than one; otherwise the default strategy."""
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


class _Reporter:
    """Turns Keras epochs into history rows, progress reports and the stop checks."""

    def __init__(self, run_dir: Path, on_progress: ProgressFn | None, should_stop: StopFn | None):
        self.run_dir = run_dir
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.history: list[dict[str, Any]] = []
        self.cancelled = False
        self.last_features = 0.0

    def report(self, **progress: Any) -> None:
        if self.on_progress is None:
            return
        if progress.get("phase") == "features" and progress.get("done") != progress.get("total"):
            now = time.monotonic()  # a batch takes ~50 ms: report a few times a second, not each one
            if now - self.last_features < 0.25:
                return
            self.last_features = now
        self.on_progress(progress)

    def stop_requested(self) -> bool:
        if not self.cancelled and self.should_stop is not None and self.should_stop():
            self.cancelled = True
        return self.cancelled

    def log(self, line: str) -> None:
        runs.append_log(self.run_dir, line)

    def epoch_end(self, phase: str, logs: dict[str, float], seconds: float) -> None:
        """Append an epoch to history.csv (rewritten atomically)."""
        self.history.append(
            {
                "epoch": len(self.history) + 1,
                "phase": phase,
                "loss": logs.get("loss"),
                "accuracy": logs.get("accuracy"),
                "val_loss": logs.get("val_loss"),
                "val_accuracy": logs.get("val_accuracy"),
                "seconds": round(seconds, 3),
            }
        )
        runs.write_history(self.run_dir, self.history)

    def callback(self, phase: str, epochs: int, target: float, extra_seconds: float = 0.0) -> Any:
        import keras

        reporter = self

        class _Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.start = time.perf_counter()
                self.epoch_start = self.start
                self.done = 0
                self.reason = ""
                reporter.report(phase=phase, epoch=0, epochs=epochs, logs={}, eta_seconds=None)

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch_start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if reporter.stop_requested():
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                logs = {k: float(v) for k, v in (logs or {}).items()}
                now = time.perf_counter()
                self.done += 1
                reporter.epoch_end(phase, logs, now - self.epoch_start)
                per_epoch = (now - self.start) / self.done
                eta = per_epoch * (epochs - self.done) + extra_seconds
                reporter.report(
                    phase=phase, epoch=self.done, epochs=epochs, logs=logs, eta_seconds=round(eta, 1)
                )
                if target and logs.get("val_accuracy", 0.0) >= target:
                    self.reason = f"reached the target validation accuracy {target:.2%}"
                    self.model.stop_training = True
                if reporter.stop_requested():
                    self.model.stop_training = True

        return _Callback()


def _early_stopping(patience: int) -> Any:
    import keras

    return keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True, start_from_epoch=0
    )


def _best_restorer() -> Any:
    """Keep the best epoch's weights (by validation loss) even without early stopping."""
    import keras

    class _Best(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.best = math.inf
            self.weights = None

        def on_epoch_end(self, epoch, logs=None):
            loss = (logs or {}).get("val_loss")
            if loss is not None and loss < self.best:
                self.best = float(loss)
                self.weights = self.model.get_weights()

        def on_train_end(self, logs=None):
            if self.weights is not None:
                self.model.set_weights(self.weights)

    return _Best()


# ----------------------------------------------------------------------------------------------
# The feature cache
# ----------------------------------------------------------------------------------------------


def _feature_key(config: TrainConfig, data: _Data) -> str:
    """Same key = same features: dataset content and splits, base, weights, size, cut, pooling, augmentation."""
    aug = (
        {
            k: getattr(config, k)
            for k in ("flip", "rotation", "zoom", "contrast", "translation", "augmented_views")
        }
        if config.augment and config.augmented_views > 0
        else None
    )
    parts = {
        "version": CACHE_VERSION,
        "data": data.fingerprint,
        "base": config.base,
        "weights": models.weights_identity(config.weights),
        "size": config.image_size,
        "cut": config.cut_layer,
        "pooled": config.pooling == "avg",
        "augmentation": aug,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _views(config: TrainConfig) -> int:
    return config.augmented_views if config.augment else 0


@dataclass
class _Features:
    """Cached base features: row i is item i unaugmented; augmented views follow, train items only."""

    path: Path
    array: np.ndarray  # memmap, float16, (rows, *feature_shape)
    n_items: int
    views: int
    train_items: np.ndarray  # item indices that have augmented views, in row order
    hit: bool = False
    seconds: float = 0.0

    def rows(self, items: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Row numbers of (item, view) pairs; view 0 is the plain image."""
        if views is None or self.views == 0:
            return items
        position = np.searchsorted(self.train_items, items)
        aug_rows = self.n_items + position * self.views + (views - 1)
        return np.where(views > 0, aug_rows, items)

    def take(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=np.float32)
        out[order] = self.array[rows[order]]
        return out


def _features_dir() -> Path:
    return settings.cache_dir() / "features"


def cached_features_ready(config: TrainConfig, scan: Any) -> bool:
    """Whether a run with this config would find its base features cached (for time estimates)."""
    try:
        cfg = config.resolved()
        if not (cfg.frozen and cfg.feature_cache):
            return False
        key = _feature_key(cfg, _data_from_scan(scan))
    except (UserError, OSError):
        return False
    return (_features_dir() / key / "meta.json").is_file()


def feature_cache_bytes() -> int:
    """Disk space the feature cache takes (for a "clear cache" button)."""
    total = 0
    for path in _features_dir().rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def clear_feature_cache() -> int:
    """Delete every cached feature entry (they are rebuilt when needed); returns the bytes freed."""
    freed = feature_cache_bytes()
    root = _features_dir()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
    return freed


def _open_features(directory: Path) -> _Features | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        array = np.load(directory / "features.npy", mmap_mode="r")
        train_items = np.load(directory / "train_items.npy")
    except (OSError, ValueError):
        return None
    if array.shape[0] != meta["n_items"] + len(train_items) * meta["views"]:
        return None
    return _Features(directory, array, int(meta["n_items"]), int(meta["views"]), train_items, hit=True)


def _clean_stale_temp(root: Path, max_age: float = 6 * 3600) -> None:
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(".tmp-") and time.time() - entry.stat().st_mtime > max_age:
                shutil.rmtree(entry, ignore_errors=True)


class _BatchLoader:
    """Decodes images into fixed-shape uint8 batches in background threads, a bounded way ahead.

    It starts before TensorFlow is even imported, so decoding overlaps start-up; Pillow releases
    the GIL while decoding. Batches never mix groups (train items first, then the rest); the last
    batch of a group is padded. Memory stays within `memory_mb` whatever the dataset size.
    """

    def __init__(
        self, groups: list[np.ndarray], paths: list[str], size: int, batch: int, memory_mb: int = 256
    ):
        import queue
        import threading

        self.size, self.batch = size, batch
        self.jobs = [
            (group_items[i : i + batch]) for group_items in groups for i in range(0, len(group_items), batch)
        ]
        self.paths = paths
        # Decoding runs far ahead while TensorFlow starts, then stops competing with the model for
        # the cores; the budget bounds memory (256 MB: ~3,000 images at 160 px).
        ahead = max(4, memory_mb * 2**20 // (batch * size * size * 3))
        self.queue: queue.Queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self.thread.start()

    def _load(self, index: int) -> np.ndarray:
        from lib.images import decode

        path = self.paths[index]
        try:
            return decode(path, size=self.size, max_pixels=settings.max_pixels())
        except ImageError as exc:
            raise ImageError(f"Could not read image {path}: {exc}") from exc

    def _put(self, item: Any) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:  # the consumer is busy; look for a stop request now and then
                continue
        return False

    def _run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        workers = max(2, min(8, os.cpu_count() or 2))
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                pending = [pool.map(self._load, job) for job in self.jobs[:2]]
                for i, job in enumerate(self.jobs):
                    images = list(pending.pop(0))
                    if i + 2 < len(self.jobs):
                        pending.append(pool.map(self._load, self.jobs[i + 2]))
                    out = np.zeros((self.batch, self.size, self.size, 3), dtype=np.uint8)
                    out[: len(images)] = np.stack(images)
                    if not self._put((job, out)):
                        return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put((None, exc))
            return
        self._put((None, None))

    def __iter__(self):
        while True:
            job, value = self.queue.get()
            if job is None:
                if value is not None:
                    raise value
                return
            yield job, value

    def close(self) -> None:
        self.stop.set()


def _feature_model(config: TrainConfig, base: Any) -> Any:
    """pixels (S x S, 0-255) -> preprocessing -> base -> (pooled) features, as one Keras model."""
    import keras

    size = config.image_size
    inputs = keras.Input((size, size, 3), dtype="float32")
    x = inputs
    for layer in models.preprocess_layers(config.spec):
        x = layer(x)
    x = base(x, training=False)
    if config.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="feature_extractor")


def _feature_plan(config: TrainConfig, data: _Data) -> tuple[np.ndarray, list[np.ndarray]]:
    """(train items with augmented views, decode groups): train items first, so each is decoded once
    for its plain and augmented views."""
    views = _views(config)
    train_items = data.index("train") if views else np.zeros(0, dtype=np.int64)
    if not views:
        return train_items, [np.arange(len(data.paths))]
    others = np.setdiff1d(np.arange(len(data.paths)), train_items)
    return train_items, [train_items, others]


def _extract_features(
    config: TrainConfig, data: _Data, base: Any, rep: _Reporter, loader: _BatchLoader
) -> _Features | None:
    """Compute the features into a new cache entry (written to a temp dir, then renamed);
    None when the user cancelled."""
    import keras
    import tensorflow as tf

    root = _features_dir()
    key = _feature_key(config, data)
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_temp(root)

    start = time.perf_counter()
    views = _views(config)
    train_items, _ = _feature_plan(config, data)
    n = len(data.paths)
    total_rows = n + len(train_items) * views
    extractor = _feature_model(config, base)
    feature_shape = tuple(int(d) for d in extractor.output.shape[1:])
    size = config.image_size
    spec = tf.TensorSpec((FEATURE_BATCH, size, size, 3), tf.uint8)
    plain = tf.function(lambda x: extractor(tf.cast(x, tf.float32), training=False), input_signature=[spec])
    if views:
        # Augmented views come from a fixed seed so the cache doesn't depend on the run's seed.
        keras.utils.set_random_seed(1234)
        aug_layers = augmenter(config, seed=1234)
        augmented = tf.function(
            lambda x: extractor(aug_layers(tf.cast(x, tf.float32), training=True), training=False),
            input_signature=[spec],
        )
    is_train = np.zeros(n, dtype=bool)
    is_train[train_items] = True

    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        array = np.lib.format.open_memmap(
            tmp / "features.npy", mode="w+", dtype=np.float16, shape=(total_rows, *feature_shape)
        )
        done = 0
        for items, pixels in loader:
            if rep.stop_requested():
                return None
            count = len(items)
            array[items] = plain(pixels).numpy()[:count]
            done += count
            if views and is_train[items[0]]:
                position = np.searchsorted(train_items, items)
                for view in range(1, views + 1):
                    array[n + position * views + (view - 1)] = augmented(pixels).numpy()[:count]
                    done += count
            elapsed = time.perf_counter() - start
            rep.report(
                phase="features",
                done=done,
                total=total_rows,
                epoch=0,
                epochs=config.epochs,
                logs={},
                eta_seconds=round(elapsed / done * (total_rows - done), 1),
            )
        array.flush()
        del array
        np.save(tmp / "train_items.npy", train_items.astype(np.int64))
        meta = {
            "version": CACHE_VERSION,
            "n_items": n,
            "views": views,
            "feature_shape": list(feature_shape),
            "base": config.base,
            "image_size": size,
            "seconds": round(time.perf_counter() - start, 2),
        }
        runs.write_json_atomic(tmp / "meta.json", meta)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent twin's finished copy
                raise
    finally:
        loader.close()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    _record_throughput(config, total_rows, seconds)
    rep.log(f"Computed features of {total_rows} images in {seconds:.1f} s ({key}).")
    features = _open_features(final)
    if features is None:  # pragma: no cover - we just wrote it
        raise RuntimeError(f"the feature cache {final} could not be read back")
    features.hit = False
    features.seconds = seconds
    return features


def _cached_features(config: TrainConfig, data: _Data) -> _Features | None:
    """The cache entry for this config and data when there is a valid one (a broken one is removed)."""
    final = _features_dir() / _feature_key(config, data)
    if not (final / "meta.json").is_file():
        return None
    found = _open_features(final)
    if found is None:
        shutil.rmtree(final, ignore_errors=True)
    return found


# ----------------------------------------------------------------------------------------------
# Training phases
# ----------------------------------------------------------------------------------------------


def _one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[labels]


CHUNK_BYTES = 128 * 2**20  # feature rows gathered from the memmap at a time (bounds memory on huge sets)


CHECKPOINT = "checkpoint.npz"


def _save_checkpoint(path: Path, head: Any, best_weights: list | None, state: dict[str, Any]) -> None:
    """The head's weights (current and best so far) and loop state, written atomically each epoch."""
    arrays = {f"w{i}": w for i, w in enumerate(head.get_weights())}
    if best_weights is not None:
        arrays.update({f"b{i}": w for i, w in enumerate(best_weights)})
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _load_checkpoint(path: Path, n_weights: int) -> tuple[list, list | None, dict[str, Any]] | None:
    try:
        with np.load(path) as data:
            state = json.loads(bytes(data["state"]).decode())
            current = [data[f"w{i}"] for i in range(n_weights)]
            best = [data[f"b{i}"] for i in range(n_weights)] if "b0" in data else None
    except (OSError, KeyError, ValueError):
        return None  # a damaged checkpoint: start the head again
    return current, best, state


def _train_head(
    config: TrainConfig,
    data: _Data,
    features: _Features,
    rep: _Reporter,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Fit the head on cached features with a small in-graph loop; returns (head model, info).

    Keras fit() spends ~3 ms of overhead per step, far more than a Dense layer on 1,280 numbers
    costs, so each chunk of batches runs inside one tf.function instead. Same loss, optimizer,
    class weights and label smoothing; early stopping on validation loss with best weights restored.
    """
    import keras
    import tensorflow as tf

    n_classes = len(data.classes)
    head = models.build_head_model(features.array.shape[1:], n_classes, config.head)
    optimizer = _optimizer(config.optimizer, config.lr)
    optimizer.build(head.trainable_variables)  # its slots must exist before the tf.function runs
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing, reduction="none")
    train_items = data.index("train")
    val = data.index("validation")
    class_weights = _class_weights(data.labels[train_items], n_classes) if config.class_weights else None
    batch = int(config.batch_size)
    shape = features.array.shape[1:]
    row_bytes = 4 * int(np.prod(shape))
    chunk = max(batch, min(65536, CHUNK_BYTES // row_bytes) // batch * batch)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, *shape), tf.float32),
            tf.TensorSpec((None, n_classes), tf.float32),
            tf.TensorSpec((None,), tf.float32),
        ]
    )
    def train_chunk(x, y, w):
        n = tf.shape(x)[0]
        steps = (n + batch - 1) // batch
        total_loss = tf.constant(0.0)
        correct = tf.constant(0.0)
        for i in tf.range(steps):
            xb, yb, wb = (
                x[i * batch : (i + 1) * batch],
                y[i * batch : (i + 1) * batch],
                w[i * batch : (i + 1) * batch],
            )
            with tf.GradientTape() as tape:
                probs = head(xb, training=True)
                losses = loss_fn(yb, probs) * wb
                loss = tf.reduce_sum(losses) / tf.cast(tf.shape(xb)[0], tf.float32)
            grads = tape.gradient(loss, head.trainable_variables)
            optimizer.apply_gradients(zip(grads, head.trainable_variables, strict=True))
            total_loss += tf.reduce_sum(losses)
            correct += tf.reduce_sum(tf.cast(tf.argmax(probs, 1) == tf.argmax(yb, 1), tf.float32))
        return total_loss, correct

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
    def predict(x):
        return head(x, training=False)

    def validate() -> tuple[float, float]:
        probs = np.concatenate(
            [predict(features.take(val[i : i + chunk])).numpy() for i in range(0, len(val), chunk)]
        )
        scores = _scores(probs, data.labels[val], config.label_smoothing)
        return scores["loss"], scores["accuracy"]

    rng = np.random.default_rng(config.seed)
    best_loss, best_weights, best_epoch, waited = math.inf, None, 0, 0
    first_epoch = 1
    if resume and checkpoint is not None and checkpoint.is_file():
        loaded = _load_checkpoint(checkpoint, len(head.get_weights()))
        if loaded is not None:
            current, best_weights, state = loaded
            head.set_weights(current)
            first_epoch = int(state["epoch"]) + 1
            best_loss = float(state["best_loss"]) if state["best_loss"] is not None else math.inf
            best_epoch, waited = int(state["best_epoch"]), int(state["waited"])
            rep.history = [row for row in state.get("history", [])]
            rng = np.random.default_rng([config.seed, first_epoch])
            rep.log(f"Resumed from the checkpoint of epoch {first_epoch - 1}.")
    stopped = ""
    start = time.perf_counter()
    rep.report(phase="head", epoch=first_epoch - 1, epochs=config.epochs, logs={}, eta_seconds=None)
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_start = time.perf_counter()
        order = rng.permutation(train_items)
        view = rng.integers(0, features.views + 1, size=len(order)) if features.views else None
        rows = features.rows(order, view)
        sum_loss = sum_correct = 0.0
        for at in range(0, len(order), chunk):
            labels = data.labels[order[at : at + chunk]]
            w = class_weights[labels] if class_weights is not None else np.ones(len(labels), np.float32)
            chunk_loss, chunk_correct = train_chunk(
                features.take(rows[at : at + chunk]), _one_hot(labels, n_classes), w.astype(np.float32)
            )
            sum_loss += float(chunk_loss)
            sum_correct += float(chunk_correct)
            if rep.stop_requested():
                return head, {"stopped": "cancelled"}
        val_loss, val_acc = validate()
        logs = {
            "loss": sum_loss / len(order),
            "accuracy": sum_correct / len(order),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        rep.epoch_end("head", logs, time.perf_counter() - epoch_start)
        if val_loss < best_loss:
            best_loss, best_epoch, waited = val_loss, epoch, 0
            best_weights = head.get_weights()
        else:
            waited += 1
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                head,
                best_weights,
                {
                    "epoch": epoch,
                    "best_loss": None if math.isinf(best_loss) else best_loss,
                    "best_epoch": best_epoch,
                    "waited": waited,
                    "history": rep.history,
                },
            )
        per_epoch = (time.perf_counter() - start) / (epoch - first_epoch + 1)
        rep.report(
            phase="head",
            epoch=epoch,
            epochs=config.epochs,
            logs=logs,
            eta_seconds=round(per_epoch * (config.epochs - epoch) + 2.0, 1),
        )
        if config.target_val_accuracy and val_acc >= config.target_val_accuracy:
            stopped = f"reached the target validation accuracy {config.target_val_accuracy:.2%}"
            break
        if config.early_stopping and waited >= config.early_stopping:
            stopped = (
                f"early stopping (no better validation loss for {config.early_stopping} epochs; "
                f"best epoch {best_epoch} restored)"
            )
            break
    if best_weights is not None and not stopped.startswith("reached"):
        head.set_weights(best_weights)
    return head, {"stopped": stopped, "best_epoch": best_epoch}


def _stop_reason(early: Any, epochs: int, done: int) -> str:
    if getattr(early, "stopped_epoch", 0) and done < epochs:
        best = getattr(early, "best_epoch", None)
        return f"early stopping (no better validation loss for {early.patience} epochs; best epoch {best + 1 if best is not None else '?'} restored)"
    return ""


def _image_dataset(
    data: _Data, split: str, config: TrainConfig, *, shuffle: bool, weights: np.ndarray | None
) -> Any:
    """tf.data of (pixels 0-255, one-hot[, sample weight]) decoded in parallel from the image files."""
    import tensorflow as tf

    from lib.datasets import make_dataset

    items = data.index(split)
    n_classes = len(data.classes)
    ds = make_dataset(
        [data.paths[i] for i in items],
        data.labels[items],
        config.image_size,
        config.batch_size,
        shuffle=shuffle,
        seed=config.seed,
    )
    if weights is not None:
        table = tf.constant(weights)
        return ds.map(lambda x, y: (x, tf.one_hot(y, n_classes), tf.gather(table, y)))
    return ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)))


def _fit_images(
    model: Any,
    config: TrainConfig,
    data: _Data,
    rep: _Reporter,
    *,
    phase: str,
    epochs: int,
    optimizer: str,
    lr: float,
) -> dict[str, Any]:
    """Train `model` on decoded images (augmentation in front of it, the base runs every epoch)."""
    import keras

    aug = augmenter(config)
    if aug is not None:
        inputs = keras.Input((config.image_size, config.image_size, 3), dtype="float32")
        trainer = keras.Model(inputs, model(aug(inputs)), name="trainer")
    else:
        trainer = model
    _compile(trainer, optimizer, lr, config.label_smoothing)
    n_classes = len(data.classes)
    weights = _class_weights(data.labels[data.index("train")], n_classes) if config.class_weights else None
    progress = rep.callback(phase, epochs, config.target_val_accuracy, extra_seconds=5.0)
    callbacks = [
        progress,
        _early_stopping(config.early_stopping) if config.early_stopping else _best_restorer(),
    ]
    try:
        trainer.fit(
            _image_dataset(data, "train", config, shuffle=True, weights=weights),
            validation_data=_image_dataset(data, "validation", config, shuffle=False, weights=None),
            epochs=epochs,
            callbacks=callbacks,
            shuffle=False,  # make_dataset shuffles
            verbose=0,
        )
    except Exception as exc:
        _raise_image_error(exc)
        raise
    return {"stopped": progress.reason or _stop_reason(callbacks[1], epochs, progress.done)}


def _raise_image_error(exc: BaseException) -> None:
    from lib.datasets import image_error_from

    plain = image_error_from(exc)
    if plain is not None:
        raise plain from exc


def _evaluate_images(model: Any, config: TrainConfig, data: _Data, split: str) -> dict[str, float] | None:
    """Loss and accuracy of the full model on a split's image files (None when the split is empty).

    predict() needs no compile, so its traced function is reused from one split to the next.
    """
    items = data.index(split)
    if len(items) == 0:
        return None
    try:
        probs = model.predict(_image_dataset(data, split, config, shuffle=False, weights=None), verbose=0)
    except Exception as exc:
        _raise_image_error(exc)
        raise
    return _scores(probs, data.labels[items], config.label_smoothing)


def _scores(probs: np.ndarray, labels: np.ndarray, smoothing: float) -> dict[str, float]:
    """Accuracy and label-smoothed cross-entropy (what Keras reports as loss) from probabilities."""
    n = probs.shape[1]
    target = np.full(probs.shape, smoothing / n, dtype=np.float64)
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    loss = -np.mean(np.sum(target * np.log(np.clip(probs, 1e-7, 1.0)), axis=1))
    return {"loss": float(loss), "accuracy": float(np.mean(np.argmax(probs, axis=1) == labels))}


def _evaluate_features(
    head: Any, features: _Features, data: _Data, split: str, smoothing: float
) -> dict[str, float] | None:
    items = data.index(split)
    if len(items) == 0:
        return None
    step = max(1, CHUNK_BYTES // (4 * int(np.prod(features.array.shape[1:]))))
    probs = np.concatenate(
        [
            np.asarray(head(features.take(items[i : i + step]), training=False))
            for i in range(0, len(items), step)
        ]
    )
    return _scores(probs, data.labels[items], smoothing)


def _set_fine_tune_trainable(base: Any, n_layers: int) -> int:
    """Unfreeze the top n layers of the base; BatchNorm layers stay frozen. Returns how many train."""
    import keras

    base.trainable = True
    layers = base.layers
    cut = max(0, len(layers) - n_layers)
    count = 0
    for i, layer in enumerate(layers):
        train = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        count += int(train and bool(layer.weights))
    return count


def _check_assembly(model: Any, head: Any, features: _Features, data: _Data, size: int) -> float:
    """The assembled model must predict like the head on cached features (guards the weight copy)."""
    from lib.images import decode

    items = data.index("validation")[:4]
    pixels = np.stack([decode(data.paths[i], size=size) for i in items]).astype(np.float32)
    full = np.asarray(model(pixels, training=False))  # eager calls: no graph tracing to pay for
    part = np.asarray(head(features.take(items), training=False))
    diff = float(np.max(np.abs(full - part)))
    if diff > 0.05:
        raise RuntimeError(f"the assembled model disagrees with its trained head (max difference {diff:.3f})")
    return diff


def _save_model(model: Any, run_dir: Path) -> None:
    """Save atomically, without optimizer state (a fresh uncompiled wrapper of the same layers)."""
    import keras

    clean = keras.Model(model.inputs, model.outputs, name=model.name)
    tmp = run_dir / f".model-{uuid.uuid4().hex[:8]}.keras"
    try:
        clean.save(tmp)
        os.replace(tmp, run_dir / runs.FILES["model"])
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_run_config(run_dir: Path, config: TrainConfig, data: _Data) -> None:
    import keras
    import tensorflow as tf

    path = run_dir / runs.FILES["config"]
    existing: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        existing = runs.read_json(path)
    record = {
        **existing,
        **config.to_dict(),
        "classes": data.classes,
        "dataset": {
            "root": str(data.root),
            "fingerprint": data.fingerprint,
            "counts": data.counts(),
        },
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": sys.version.split()[0],
        },
    }
    record.setdefault("name", run_dir.name)
    runs.write_json_atomic(path, record)
    runs.write_atomic(run_dir / runs.FILES["classes"], "".join(f"{c}\n" for c in data.classes))


# ----------------------------------------------------------------------------------------------
# train()
# ----------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | Path,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train as configured, writing the run folder (config, classes, history, model, metrics, log).

    on_progress gets dicts {phase: "scan"|"features"|"head"|"train"|"fine-tune"|"saving", epoch,
    epochs, done, total (images, features phase), logs, eta_seconds}. When should_stop() turns true
    the run stops soon and this returns {"cancelled": True} without saving a model. Status.json is
    the caller's (lib.jobs, the CLI). Bad data or settings raise UserError. The head's state is
    checkpointed every epoch; resume=True continues an interrupted run from its last checkpoint.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config.resolved()
    rep = _Reporter(run_dir, on_progress, should_stop)
    rep.report(phase="scan", epoch=0, epochs=config.epochs, logs={}, eta_seconds=None)
    rep.log(
        f"Training {config.base} ({config.weights} weights, {config.image_size} px) on {config.data_dir}."
    )
    if not config.data_dir:
        raise UserError("No dataset chosen: pick a dataset folder first.")
    # A relative folder (the shipped demo records "data/sample") is relative to the repository.
    data_root = runs.resolve_data_dir(config.data_dir) or config.data_dir
    data = _data_from_scan(load_scan(data_root, config.val_fraction, config.test_fraction))
    counts = data.counts()
    rep.log(
        f"{len(data.classes)} classes; {counts['train']} train, {counts['validation']} validation, {counts['test']} test images."
    )

    # The head trains on cached features whenever the base is frozen (fine-tuning, if asked for,
    # follows on the images); from-scratch training and feature_cache=False take the plain path.
    use_cache = config.frozen and config.feature_cache
    features = loader = None
    if use_cache:
        features = _cached_features(config, data)
        if features is not None:
            rep.log(f"Features found in the cache ({features.path.name}).")
        else:  # start decoding now: it overlaps importing TensorFlow and building the base
            loader = _BatchLoader(
                _feature_plan(config, data)[1], data.paths, config.image_size, FEATURE_BATCH
            )

    try:
        import keras

        keras.utils.set_random_seed(config.seed)
        _write_run_config(run_dir, config, data)
        strategy = _strategy()
        with strategy.scope():
            base = models.build_base(config.base, config.image_size, config.weights, cut=config.cut_layer)
            base.trainable = not config.frozen
    except BaseException:
        if loader is not None:
            loader.close()
        raise
    spec = config.spec
    n_classes = len(data.classes)
    metrics: dict[str, Any] = {"classes": data.classes, "base": config.base, "image_size": config.image_size}
    feature_seconds = 0.0

    phase_start = time.perf_counter()
    if use_cache:
        if features is None:
            features = _extract_features(config, data, base, rep, loader)
            if features is None:
                return _cancelled(rep, started)
        feature_seconds = features.seconds
        metrics["feature_cache"] = "hit" if features.hit else "computed"
        keras.utils.set_random_seed(config.seed)
        head_start = time.perf_counter()
        head, info = _train_head(config, data, features, rep, run_dir / CHECKPOINT, resume)
        if rep.cancelled:
            return _cancelled(rep, started)
        metrics["head_seconds"] = round(time.perf_counter() - head_start, 2)
        with strategy.scope():
            model = models.build_classifier(spec, config.image_size, base, n_classes, config.head)
        models.copy_head_weights(head, model)
        metrics["assembly_max_difference"] = round(
            _check_assembly(model, head, features, data, config.image_size), 6
        )
        val = _evaluate_features(head, features, data, "validation", config.label_smoothing)
        test = _evaluate_features(head, features, data, "test", config.label_smoothing)
    else:
        phase = "head" if config.frozen else "train"
        with strategy.scope():
            model = models.build_classifier(
                spec,
                config.image_size,
                base,
                n_classes,
                config.head,
                base_training=False if config.frozen else None,
            )
        info = _fit_images(
            model,
            config,
            data,
            rep,
            phase=phase,
            epochs=config.epochs,
            optimizer=config.optimizer,
            lr=config.lr,
        )
        if rep.cancelled:
            return _cancelled(rep, started)
        metrics["feature_cache"] = "off"
        val = test = None
    metrics["stopped"] = info.get("stopped", "")
    metrics["first_phase_seconds"] = round(time.perf_counter() - phase_start, 2)

    if config.fine_tuning:
        ft_start = time.perf_counter()
        before = _evaluate_images(model, config, data, "validation")
        saved = model.get_weights()
        trainable = _set_fine_tune_trainable(base, config.fine_tune_layers)
        rep.log(
            f"Fine-tuning the top {config.fine_tune_layers} layers of {config.base} ({trainable} with weights)."
        )
        ft = _fit_images(
            model,
            config,
            data,
            rep,
            phase="fine-tune",
            epochs=config.fine_tune_epochs,
            optimizer=config.optimizer,
            lr=config.fine_tune_lr,
        )
        if rep.cancelled:
            return _cancelled(rep, started)
        after = _evaluate_images(model, config, data, "validation")
        if after["accuracy"] < before["accuracy"]:
            model.set_weights(saved)
            metrics["fine_tuning"] = (
                f"kept pre-fine-tuning weights (val acc {after['accuracy']:.4f} < {before['accuracy']:.4f})"
            )
            val = before
        else:
            metrics["fine_tuning"] = (
                f"fine-tuned: val acc {before['accuracy']:.4f} -> {after['accuracy']:.4f}"
            )
            val = after
        if ft.get("stopped"):
            metrics["fine_tune_stopped"] = ft["stopped"]
        base.trainable = False
        metrics["fine_tune_seconds"] = round(time.perf_counter() - ft_start, 2)
        test = None
    elif config.fine_tune_epochs > 0:
        metrics["fine_tuning"] = "skipped: the base was trained from scratch, all of it already trains"

    rep.report(phase="saving", epoch=len(rep.history), epochs=config.epochs, logs={}, eta_seconds=2.0)
    if val is None:
        val = _evaluate_images(model, config, data, "validation")
    if test is None:
        test = _evaluate_images(model, config, data, "test")
    _save_model(model, run_dir)
    metrics.update(
        val_accuracy=val["accuracy"],
        val_loss=val["loss"],
        test_accuracy=test["accuracy"] if test else None,
        test_loss=test["loss"] if test else None,
        epochs_run=len(rep.history),
        train_seconds=round(time.perf_counter() - started, 2),
        feature_seconds=round(feature_seconds, 2),
        counts=counts,
    )
    runs.write_json_atomic(run_dir / runs.FILES["metrics"], metrics)
    with contextlib.suppress(OSError):
        (run_dir / CHECKPOINT).unlink()  # the model is saved: the checkpoint has served
    rep.log(
        f"Finished: validation accuracy {val['accuracy']:.4f}"
        + (f", test accuracy {test['accuracy']:.4f}" if test else "")
        + f", {metrics['epochs_run']} epochs, {metrics['train_seconds']:.1f} s."
    )
    return metrics


def _cancelled(rep: _Reporter, started: float) -> dict[str, Any]:
    rep.log("Cancelled by the user.")
    return {
        "cancelled": True,
        "epochs_run": len(rep.history),
        "train_seconds": round(time.perf_counter() - started, 2),
    }


# ----------------------------------------------------------------------------------------------
# Time estimates
# ----------------------------------------------------------------------------------------------

# Rough images per second of a feature pass on a 2-core laptop CPU at the base's default size.
_DEFAULT_SPEED = {
    "MobileNetV2": 100.0,
    "MobileNetV3Small": 180.0,
    "MobileNetV3Large": 70.0,
    "EfficientNetB0": 30.0,
    "EfficientNetV2B0": 35.0,
    "ResNet50": 12.0,
    "InceptionV3": 8.0,
    "SmallCNN": 150.0,
}


def _throughput_file() -> Path:
    return settings.cache_dir() / "throughput.json"


def _record_throughput(config: TrainConfig, images: int, seconds: float) -> None:
    if images < 64 or seconds <= 0:
        return
    with contextlib.suppress(OSError, ValueError):
        path = _throughput_file()
        known = runs.read_json(path) if path.is_file() else {}
        known[f"{config.base}@{config.image_size}"] = round(images / seconds, 2)
        runs.write_json_atomic(path, known)


def images_per_second(base: str, size: int) -> float:
    """Measured (on this machine, by an earlier run) or estimated feature-pass speed."""
    spec = models.get_base(base)
    with contextlib.suppress(OSError, ValueError, KeyError):
        return float(runs.read_json(_throughput_file())[f"{spec.name}@{size}"])
    return _DEFAULT_SPEED[spec.name] * (spec.default_size / size) ** 2


def estimate_seconds(config: TrainConfig, counts: dict[str, int], cached: bool = False) -> float:
    """A rough duration for the Train page ("about 40 s"); counts = images per split."""
    cfg = config.resolved()
    speed = images_per_second(cfg.base, cfg.image_size)
    n = sum(counts.values())
    n_train, n_val = counts.get("train", 0), counts.get("validation", 0)
    startup = 8.0
    if cfg.frozen and cfg.feature_cache:
        rows = n + n_train * _views(cfg)
        features = 0.0 if cached else rows / speed
        total = startup + features + cfg.epochs * (0.02 + n_train / 50_000)
    else:
        # Plain path: a forward pass per image per epoch, ~3x that when the base trains too.
        per_epoch = (n_train * (1 if cfg.frozen else 3) + n_val) / speed
        total = startup + cfg.epochs * per_epoch + n / speed
    if cfg.fine_tuning:
        total += cfg.fine_tune_epochs * (n_train * 3 + n_val) / speed + 2 * n_val / speed
    return total


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, int(round(seconds)))
    return (
        f"{seconds // 60}:{seconds % 60:02d}"
        if seconds < 3600
        else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    )


class _ProgressBar:
    """A plain-text progress line on stderr: redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, stream: Any = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_key: Any = None
        self.last_time = 0.0
        self.width = 0

    def __call__(self, progress: dict[str, Any]) -> None:
        if self.quiet:
            return
        phase = progress.get("phase", "")
        if phase == "features":
            done, total = int(progress.get("done") or 0), int(progress.get("total") or 1)
            frac, what = done / max(total, 1), f"{done}/{total} images"
        elif phase in ("head", "train", "fine-tune"):
            done, total = int(progress.get("epoch") or 0), int(progress.get("epochs") or 1)
            logs = progress.get("logs") or {}
            frac = done / max(total, 1)
            what = f"epoch {done}/{total}"
            if "val_accuracy" in logs:
                what += f"  loss {logs.get('loss', 0):.3f}  acc {logs.get('accuracy', 0):.3f}  val_acc {logs['val_accuracy']:.3f}"
        else:
            frac, what = 0.0, ""
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        line = f"{phase:<9} [{bar}] {what}  ETA {_format_seconds(progress.get('eta_seconds'))}"
        key = (phase, progress.get("epoch"), int(frac * 10) if phase == "features" else None)
        now = time.monotonic()
        if self.tty:
            if now - self.last_time < 0.1 and key == self.last_key:
                return
            pad = max(0, self.width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.width = len(line)
        else:
            if key == self.last_key:
                return
            self.stream.write(line + "\n")
        self.last_key, self.last_time = key, now
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.width and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def config_from_args(args: Any) -> TrainConfig:
    """A TrainConfig from `python -m lib train` arguments (unset options keep the defaults)."""
    from lib.datasets import check_folder

    data_dir = check_folder(args.data)
    cfg = TrainConfig(data_dir=str(data_dir), base=args.base, weights=args.weights)
    weights = str(args.weights)
    if weights.lower() not in ("imagenet", "bundled", "none"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"The weights file {weights} does not exist.")
        cfg.weights = str(path.resolve())
    overrides = {
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer.lower() if args.optimizer else None,
        "fine_tune_layers": args.fine_tune_layers,
        "fine_tune_epochs": args.fine_tune_epochs,
        "seed": args.seed,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, value)
    if args.augment:
        cfg.augment = True
    return cfg.resolved()


def train_command(args: Any) -> int:
    """`python -m lib train ...`: train one run with a progress bar; the last stdout line is JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = config_from_args(args)
    run_dir = runs.create_run(Path(args.runs_dir), config)
    bar = _ProgressBar(quiet=getattr(args, "quiet", False))
    write = runs.progress_writer(run_dir)

    def on_progress(progress: dict[str, Any]) -> None:
        write(progress)
        bar(progress)

    runs.write_status(run_dir, "running", pid=os.getpid(), progress={"phase": "starting"})
    try:
        metrics = train(config, run_dir, on_progress=on_progress)
    except UserError as exc:
        bar.close()
        runs.write_status(run_dir, "failed", reason=str(exc))
        raise
    except KeyboardInterrupt:
        bar.close()
        runs.write_status(run_dir, "cancelled", reason="Interrupted from the keyboard.")
        raise
    except MemoryError as exc:
        bar.close()
        reason = "Ran out of memory: try a smaller batch size or image size."
        runs.write_status(run_dir, "failed", reason=reason)
        raise UserError(reason) from exc
    except Exception as exc:
        bar.close()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        runs.write_status(run_dir, "failed", reason=f"Training failed: {text}")
        raise
    bar.close()
    runs.write_status(run_dir, "finished")
    summary = {
        "run_id": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "base": config.base,
        "image_size": config.image_size,
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "epochs_run": metrics.get("epochs_run"),
        "train_seconds": metrics.get("train_seconds"),
        "feature_seconds": metrics.get("feature_seconds"),
        "feature_cache": metrics.get("feature_cache"),
    }
    print(json.dumps(summary), flush=True)
    return 0


__all__ = [
    "TrainConfig",
    "train",
    "train_command",
    "config_from_args",
    "augmenter",
    "estimate_seconds",
    "images_per_second",
    "cached_features_ready",
    "feature_cache_bytes",
    "clear_feature_cache",
    "load_scan",
]
