"""The feature cache: a frozen base's output for every image, computed once, kept on disk.

With a frozen base the expensive part (the base network) runs once per image; its features are
stored as float16 numpy memmaps keyed by dataset content and splits, base, weights, size, cut,
pooling and augmentation, so a second run with another head or learning rate starts training
within seconds. Row i is item i unaugmented; augmented views of the training items follow.

The cache is bounded (settings.feature_cache_mb): before a new entry is written, the least recently
used entries leave (never one being written, nor one used in the last minute), the disk is checked
for room and the memmap's blocks are reserved, so a full disk fails the run up front as "disk full".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lib import files, settings
from lib.data.feeder import Feeder, Stream, decode_one
from lib.errors import Cancelled, DiskFull, ImageError, UserError
from lib.models import build, engine, registry
from lib.text import size_text
from lib.train.augment import augmenter
from lib.train.config import TrainConfig
from lib.train.items import TrainingData, all_items, training_data

CACHE_VERSION = 1
FEATURE_BATCH = 8  # fixed batch shape for the feature pass: one trace; small batches run fastest on a CPU
AUGMENT_SEED = 1234  # augmented views come from a fixed seed, so the cache doesn't depend on the run's seed
LAST_USED = "meta.json"  # its mtime is when the entry was last used (the least recently used leaves first)
IN_MEMORY_BYTES = 64 << 20  # Features.loaded(): larger entries stay on disk (memory-mapped)
IN_USE_SECONDS = 60.0  # an entry used this recently is never evicted (a run may be opening it right now)
WRITING = "writing the image features"


def features_dir() -> Path:
    return settings.cache_dir() / "features"


def feature_key(config: TrainConfig, data: TrainingData, weights: str) -> str:
    """Same key = same features: dataset content and splits, base, resolved weights, size, cut,
    pooling, augmentation."""
    aug = (
        {
            k: getattr(config, k)
            for k in ("flip", "rotation", "zoom", "contrast", "translation", "augmented_views")
        }
        if config.views
        else None
    )
    parts = {
        "version": CACHE_VERSION,
        "data": data.fingerprint,
        "base": config.base,
        "weights": registry.weights_identity(config.spec, weights),
        "size": config.image_size,
        "cut": config.cut_layer,
        "pooled": config.pooling == "avg",
        "augmentation": aug,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Features:
    """Cached base features: row i is item i unaugmented; augmented views follow, train items only."""

    path: Path
    array: np.ndarray  # memmap, float16, (rows, *feature_shape)
    n_items: int
    views: int
    train_items: np.ndarray  # item indices that have augmented views, in row order
    hit: bool = False
    seconds: float = 0.0
    engine: str | None = None  # which engine computed them (None: read from the cache)
    engine_max_diff: float | None = None

    def rows(self, items: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Row numbers of (item, view) pairs; view 0 is the plain image."""
        if views is None or self.views == 0:
            return items
        position = np.searchsorted(self.train_items, items)
        aug_rows = self.n_items + position * self.views + (views - 1)
        return np.where(views > 0, aug_rows, items)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 features of the given rows (read in row order: kinder to the page cache)."""
        if self.array.dtype == np.float32 and not isinstance(self.array, np.memmap):
            return np.take(self.array, rows, axis=0)  # loaded(): already in memory
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.array.shape[1:]), dtype=np.float32)
        out[order] = self.array[rows[order]]
        return out

    def loaded(self, limit: int = IN_MEMORY_BYTES) -> Features:
        """This entry with every row as float32 in memory when that takes at most `limit` bytes:
        the head's epochs (and the out-of-fold heads') then gather rows ~10x faster than from the
        float16 file. Itself when larger."""
        if self.array.dtype == np.float32 or self.array.size * 4 > limit:
            return self
        return replace(self, array=np.asarray(self.array, dtype=np.float32))


def _open(directory: Path) -> Features | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        array = np.load(directory / "features.npy", mmap_mode="r")
        train_items = np.load(directory / "train_items.npy")
    except (OSError, ValueError):
        return None
    if array.shape[0] != meta["n_items"] + len(train_items) * meta["views"]:
        return None
    return Features(directory, array, int(meta["n_items"]), int(meta["views"]), train_items, hit=True)


def cached(config: TrainConfig, data: TrainingData, weights: str) -> Features | None:
    """The cache entry for this config and data when there is a valid one (a broken one is removed);
    using it makes it the most recently used."""
    final = features_dir() / feature_key(config, data, weights)
    if not (final / "meta.json").is_file():
        return None
    found = _open(final)
    if found is None:
        shutil.rmtree(final, ignore_errors=True)
    else:
        touch(final)
    return found


def cached_items(
    run_config: dict[str, Any], scan: Any, paths: list[str]
) -> tuple[Features | None, np.ndarray]:
    """The cached features of `paths` (usable files of `scan`) from the frozen base a run was
    trained with: its own entry, else the entry without augmentation (the data doctor's), and their
    row numbers. (None, rows) when the run's base was fine-tuned or never frozen, or when no
    entry holds them (evicted, or the dataset changed since)."""
    config = TrainConfig.from_dict(run_config).resolved()
    data = all_items(scan)
    index = {p: i for i, p in enumerate(data.paths)}
    rows = np.asarray([index.get(p, -1) for p in paths], dtype=np.int64)
    weights = run_config.get("weights_used")
    if (
        not config.uses_feature_cache
        or config.fine_tuning
        or config.pooling != "avg"
        or not isinstance(weights, str)
        or (rows < 0).any()
    ):
        return None, rows
    for candidate in (config, replace(config, augment=False)):
        found = cached(candidate, data, weights)
        if found is not None and found.n_items == len(data.paths):
            return found, rows
    return None, rows


def cached_features_ready(config: TrainConfig, scan: Any) -> bool:
    """Whether a run with this config would find its base features cached (for time estimates)."""
    try:
        cfg = config.resolved()
        if not cfg.uses_feature_cache:
            return False
        weights, _ = build.resolve_weights(cfg.spec, cfg.weights)
        key = feature_key(cfg, training_data(scan), weights)
    except (UserError, OSError):
        return False
    return (features_dir() / key / "meta.json").is_file()


def feature_cache_bytes() -> int:
    """Disk space the feature cache takes, entries being written included (for the Storage section)."""
    return files.tree_bytes(features_dir())


def _entries() -> list[Path]:
    """Finished cache entries (not the temporary folders of entries being written), oldest use first."""
    try:
        found = [p for p in features_dir().iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted(found, key=last_used)


def last_used(entry: Path) -> float:
    """When a cache entry was last used (written or read), as a timestamp."""
    for path in (entry / LAST_USED, entry):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0


def touch(entry: Path) -> None:
    """Mark a cache entry as just used."""
    with contextlib.suppress(OSError):
        os.utime(entry / LAST_USED)


def _remove(entry: Path) -> None:
    """Rename the entry away first (a reader never sees half of it), then delete it."""
    trash = entry.with_name(f"{files.TEMP_PREFIX}evict-{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def clear_feature_cache() -> int:
    """Delete every finished feature entry (they are rebuilt when needed; entries being written stay);
    returns the bytes freed."""
    before = feature_cache_bytes()
    for entry in _entries():
        _remove(entry)
    return max(0, before - feature_cache_bytes())


def cache_limit() -> int:
    """Most bytes the feature cache may hold."""
    return settings.feature_cache_mb() * 1_000_000


def make_room(needed: int, *, now: float | None = None) -> list[str]:
    """Evict the least recently used entries until the cache plus `needed` bytes fits its limit;
    returns the keys removed. Entries being written or used in the last IN_USE_SECONDS stay; when
    the rest isn't enough, DiskFull (train again later, or raise the limit)."""
    limit = cache_limit()
    if needed > limit:
        raise UserError(
            f"The image features of this run need {size_text(needed)}, more than the feature cache may "
            f"hold ({size_text(limit)}, STUDIO_FEATURE_CACHE_MB): use fewer images, fewer augmented "
            "views or a smaller image size."
        )
    now = time.time() if now is None else now
    total = feature_cache_bytes()
    removed = []
    for entry in _entries():
        if total + needed <= limit:
            break
        if now - last_used(entry) < IN_USE_SECONDS:
            continue
        size = files.tree_bytes(entry)
        _remove(entry)
        total -= size
        removed.append(entry.name)
    if total + needed > limit:
        raise DiskFull(
            f"The feature cache is full ({size_text(total)} of {size_text(limit)}) with features other "
            "runs are using right now: train again in a minute."
        )
    return removed


def entry_bytes(rows: int, feature_shape: tuple[int, ...], train_items: int) -> int:
    """Disk space of a cache entry: the float16 features, the item list and a little for the rest."""
    return rows * int(np.prod(feature_shape, dtype=np.int64)) * 2 + 8 * train_items + 64 * 1024


def plan(config: TrainConfig, data: TrainingData) -> tuple[np.ndarray, list[np.ndarray]]:
    """(train items with augmented views, decode groups): train items first, so each is decoded
    once for its plain and augmented views."""
    if not config.views:
        return np.zeros(0, dtype=np.int64), [np.arange(len(data.paths))]
    train_items = data.index("train")
    return train_items, [train_items, np.setdiff1d(np.arange(len(data.paths)), train_items)]


def start_decoding(config: TrainConfig, data: TrainingData) -> Stream:
    """Begin decoding the images for the feature pass now (it overlaps importing TensorFlow and
    building the base); a file that can't be read stops the pass with its name."""
    feeder = Feeder(config.image_size, batch=FEATURE_BATCH)
    return feeder.batches(data.paths, groups=plan(config, data)[1], on_error="raise")


Report = Callable[..., None]


@dataclass
class Extractors:
    """Functions from a uint8 batch to numpy features (augmented: through the augmentation layers,
    None without augmented views), and which engine runs the base."""

    plain: Callable[[np.ndarray], np.ndarray]
    augmented: Callable[[np.ndarray], np.ndarray] | None
    feature_shape: tuple[int, ...]
    engine: str = "keras"
    max_diff: float | None = None
    convert_seconds: float = 0.0
    note: str = ""


def _check_pixels(data: TrainingData, size: int) -> np.ndarray:
    """A few of the dataset's images (the first that decode), for checking a converted base."""
    out = []
    for path in data.paths[: engine.CHECK_IMAGES * 2]:
        try:
            out.append(decode_one(path, size, name=str(path)))
        except ImageError:
            continue
        if len(out) >= engine.CHECK_IMAGES:
            break
    return np.stack(out) if out else engine.check_images(size)


def _base_key_parts(config: TrainConfig, weights: str) -> dict[str, Any]:
    return {
        "base": config.base,
        "weights": registry.weights_identity(config.spec, weights),
        "cut": config.cut_layer,
    }


def early_extractors(config: TrainConfig, weights: str) -> Extractors | None:
    """The LiteRT feature extractor straight from the converted-base cache, without TensorFlow or
    building the base: when LiteRT is the engine, there are no augmented views (their layers are
    Keras) and this base was converted (and checked) before. None otherwise."""
    if config.views or engine.choose() != "litert":
        return None
    parts = engine.feature_parts(
        pooled=config.pooling == "avg",
        batch=None,
        size=config.image_size,
        key_parts=_base_key_parts(config, weights),
    )
    key = engine.base_key(parts)
    target = engine.engines_dir() / key / "base.tflite"
    try:
        meta = files.read_json(target.with_name(target.name + ".json"))
        if meta.get("identity") != {"key": key} or not meta.get("ok"):
            return None
        lite = engine.LiteModel(target)
    except (OSError, ValueError, RuntimeError):
        return None
    shape = lite.output_shape(engine.FEATURES)
    if not shape:
        return None
    return Extractors(
        plain=lambda x: lite(x)[engine.FEATURES],
        augmented=None,
        feature_shape=tuple(shape[1:]),
        engine="litert",
        max_diff=meta.get("max_diff"),
    )


def base_lite(config: TrainConfig, base: Any, weights: str, data: TrainingData) -> engine.Converted:
    """The frozen base (preprocessing, base, pooling) as LiteRT with a dynamic batch: converted
    once per base, weights, size, cut and library versions, checked against Keras on a few of
    the dataset's images, cached for every run."""
    return engine.feature_engine(
        config.spec,
        config.image_size,
        base,
        pooled=config.pooling == "avg",
        batch=None,
        key_parts=_base_key_parts(config, weights),
        check_pixels=_check_pixels(data, config.image_size),
    )


def _extractors(
    config: TrainConfig, base: Any, weights: str, data: TrainingData, engine_name: str | None = None
) -> Extractors:
    """The feature pass's functions: the base as LiteRT (converted once, cached, checked against
    Keras) when the engine is LiteRT and it agrees, else compiled Keras functions."""
    import keras
    import tensorflow as tf

    extractor = build.feature_model(config.spec, config.image_size, base, pooled=config.pooling == "avg")
    size = config.image_size
    spec = tf.TensorSpec((FEATURE_BATCH, size, size, 3), tf.uint8)
    feature_shape = tuple(int(d) for d in extractor.output.shape[1:])
    aug_fn = None
    if config.views:
        keras.utils.set_random_seed(AUGMENT_SEED)
        aug_layers = augmenter(config, seed=AUGMENT_SEED)
        aug_fn = tf.function(
            lambda x: aug_layers(tf.cast(x, tf.float32), training=True), input_signature=[spec]
        )
    note = ""
    if engine.choose(engine_name) == "litert":
        converted = base_lite(config, base, weights, data)
        lite = converted.lite
        if lite is not None:
            augmented = None
            if aug_fn is not None:
                augmented = lambda x: lite(aug_fn(x).numpy())[engine.FEATURES]  # noqa: E731
            return Extractors(
                plain=lambda x: lite(x)[engine.FEATURES],
                augmented=augmented,
                feature_shape=feature_shape,
                engine="litert",
                max_diff=converted.max_diff,
                convert_seconds=converted.seconds,
            )
        note = f"Keras computes the features: {converted.reason}."
    keras_plain = tf.function(
        lambda x: extractor(tf.cast(x, tf.float32), training=False), input_signature=[spec]
    )
    augmented = None
    if aug_fn is not None:
        keras_aug = tf.function(lambda x: extractor(aug_fn(x), training=False), input_signature=[spec])
        augmented = lambda x: keras_aug(x).numpy()  # noqa: E731
    return Extractors(
        plain=lambda x: keras_plain(x).numpy(),
        augmented=augmented,
        feature_shape=feature_shape,
        note=note,
    )


def compute(
    config: TrainConfig,
    data: TrainingData,
    weights: str,
    base: Any,
    stream: Stream,
    *,
    report: Report,
    should_stop: Callable[[], bool],
    log: Callable[[str], None] | None = None,
    engine_name: str | None = None,
    extractors: Extractors | None = None,
) -> Features:
    """Run the base over every image (and the augmented views) into a new cache entry
    (`extractors`: ready-made ones, see early_extractors; else made from `base`).

    Raises Cancelled when should_stop() turns true; the entry is written to a temporary folder and
    renamed into place, so a half-computed cache is never read.
    """
    start = time.perf_counter()
    views = config.views
    train_items, _ = plan(config, data)
    n = len(data.paths)
    total_rows = n + len(train_items) * views
    ex = extractors or _extractors(config, base, weights, data, engine_name)
    if log is not None:
        if ex.note:
            log(ex.note)
        elif ex.engine == "litert":
            made = f"converted in {ex.convert_seconds:.1f} s" if ex.convert_seconds else "from the cache"
            log(
                f"LiteRT computes the features (the base {made}; largest difference from Keras {ex.max_diff:.1e})."
            )
    plain, augmented, feature_shape = ex.plain, ex.augmented, ex.feature_shape
    size = config.image_size
    is_train = np.zeros(n, dtype=bool)
    is_train[train_items] = True
    key = feature_key(config, data, weights)
    final = features_dir() / key
    files.clean_temp(features_dir())
    try:
        needed = entry_bytes(total_rows, feature_shape, len(train_items))
        make_room(needed)
        files.ensure_free(features_dir(), needed, WRITING)
        with files.atomic_dir(final) as tmp:
            array = np.lib.format.open_memmap(
                tmp / "features.npy", mode="w+", dtype=np.float16, shape=(total_rows, *feature_shape)
            )
            files.preallocate(tmp / "features.npy", WRITING)
            done = 0
            for batch in stream:
                if should_stop():
                    raise Cancelled()
                items, count = batch.items, batch.count
                array[items] = plain(batch.pixels)[:count]
                done += count
                if views and is_train[items[0]]:
                    position = np.searchsorted(train_items, items)
                    for view in range(1, views + 1):
                        array[n + position * views + (view - 1)] = augmented(batch.pixels)[:count]
                        done += count
                elapsed = time.perf_counter() - start
                report(
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
                "engine": ex.engine,
                "engine_max_diff": ex.max_diff,
            }
            files.write_json(tmp / "meta.json", meta)
    finally:
        stream.close()
    touch(final)  # a twin that finished first kept its copy: ours is the same, and now just used
    features = _open(final)
    if features is None:  # pragma: no cover - we just wrote it
        raise RuntimeError(f"the feature cache {final} could not be read back")
    features.hit = False
    features.seconds = time.perf_counter() - start
    features.engine = ex.engine
    features.engine_max_diff = ex.max_diff
    return features
