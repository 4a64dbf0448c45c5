"""The doctor's image features: the frozen base's pooled features of every usable image, through
the training feature cache (lib.train.features), so a dataset trained on (without augmentation)
costs no feature pass, and a doctor's pass makes the next training run start in seconds."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lib import files, settings
from lib.data.feeder import Feeder
from lib.data.scan import Scan
from lib.doctor import findings
from lib.models import build
from lib.train import features
from lib.train.config import TrainConfig
from lib.train.items import TrainingData, all_items

Progress = Callable[[int, int], None]


@dataclass
class DoctorFeatures:
    data: TrainingData
    array: np.ndarray  # float32 (n_items, d), row i is data item i
    base: str
    weights: str
    image_size: int
    hit: bool
    seconds: float
    note: str = ""
    thumbs: np.ndarray | None = None  # 16x16 mean colours per item (findings.thumbs), from a small decode


THUMB_SIDE = 32  # decoded this small (JPEG draft mode makes it cheap), then 16x16 mean colours
THUMB_VERSION = 1


def thumbs(data: TrainingData) -> np.ndarray:
    """16x16 colour thumbnails of every item (float16), kept in <cache>/doctor keyed by the items' content."""
    path = settings.cache_dir() / "doctor" / f"thumbs-{THUMB_VERSION}-{data.fingerprint}.npy"
    with contextlib.suppress(OSError, ValueError):
        found = np.load(path)
        if found.shape == (len(data.paths), 16, 16, 3):
            return found
    out = np.zeros((len(data.paths), 16, 16, 3), dtype=np.float16)
    with Feeder(THUMB_SIDE, batch=64).batches(data.paths) as stream:
        for batch in stream:
            out[batch.items] = findings.thumbs(batch.pixels[: batch.count])
            for i in batch.errors:
                out[i] = 0.0
    with contextlib.suppress(OSError):
        buf = io.BytesIO()
        np.save(buf, out)
        files.write_atomic(path, buf.getvalue())
    return out


def feature_config(
    scan: Scan, base: str = "MobileNetV2", weights: str = "auto", image_size: int | None = None
) -> TrainConfig:
    """The training config whose cache entry the doctor reads: the base frozen, average pooling,
    no augmentation (the same entry a default run without augmentation uses)."""
    return TrainConfig(
        data_dir=str(scan.root),
        base=base,
        weights=weights,
        image_size=image_size,
        augment=False,
        pooling="avg",
        val_fraction=scan.val_fraction,
        test_fraction=scan.test_fraction,
    ).resolved()


def compute(
    scan: Scan,
    *,
    base: str = "MobileNetV2",
    weights: str = "auto",
    image_size: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DoctorFeatures:
    """Pooled features of every usable image of the scan (from the cache, else one feature pass)."""
    start = time.perf_counter()
    config = feature_config(scan, base, weights, image_size)
    data = all_items(scan)
    resolved, note = build.resolve_weights(config.spec, config.weights)
    found = features.cached(config, data, resolved)
    if found is None:
        stream = features.start_decoding(config, data)
        # With the base already converted to LiteRT, the pass needs neither TensorFlow nor the base.
        early = features.early_extractors(config, resolved)
        model = None
        try:
            if early is None:
                model = build.build_base(config.base, config.image_size, resolved, cut=config.cut_layer)
        except BaseException:
            stream.close()
            raise

        def report(**p) -> None:
            if progress is not None:
                progress(int(p.get("done", 0)), int(p.get("total", len(data.paths))))

        found = features.compute(
            config,
            data,
            resolved,
            model,
            stream,
            report=report,
            should_stop=should_stop or (lambda: False),
            extractors=early,
        )
    array = found.take(np.arange(len(data.paths)))
    array = array.reshape(len(array), -1)
    small = thumbs(data)
    return DoctorFeatures(
        data=data,
        array=array,
        base=config.base,
        weights=resolved,
        image_size=int(config.image_size),
        hit=found.hit,
        seconds=time.perf_counter() - start,
        note=note,
        thumbs=small,
    )
