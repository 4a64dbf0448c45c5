"""Time estimates for the Train page ("about 40 s"), from feature-pass speeds measured on this
machine by earlier runs (or rough defaults for a 2-core laptop)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from lib import files, settings
from lib.models import registry
from lib.train.config import TrainConfig

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


def record_throughput(config: TrainConfig, images: int, seconds: float) -> None:
    if images < 64 or seconds <= 0:
        return
    with contextlib.suppress(OSError, ValueError):
        path = _throughput_file()
        known = files.read_json(path) if path.is_file() else {}
        known[f"{config.base}@{config.image_size}"] = round(images / seconds, 2)
        files.write_json(path, known)


def images_per_second(base: str, size: int) -> float:
    """Measured (on this machine, by an earlier run) or estimated feature-pass speed."""
    spec = registry.get_base(base)
    with contextlib.suppress(OSError, ValueError, KeyError):
        return float(files.read_json(_throughput_file())[f"{spec.name}@{size}"])
    return _DEFAULT_SPEED[spec.name] * (spec.default_size / size) ** 2


def estimate_seconds(config: TrainConfig, counts: dict[str, int], cached: bool = False) -> float:
    """A rough duration for the Train page ("about 40 s"); counts = images per split."""
    cfg = config.resolved()
    speed = images_per_second(cfg.base, cfg.image_size)
    n = sum(counts.values())
    n_train, n_val = counts.get("train", 0), counts.get("validation", 0)
    startup = 8.0
    if cfg.uses_feature_cache:
        rows = n + n_train * cfg.views
        features = 0.0 if cached else rows / speed
        total = startup + features + cfg.epochs * (0.02 + n_train / 50_000)
    else:
        # Plain path: a forward pass per image per epoch, ~3x that when the base trains too.
        per_epoch = (n_train * (1 if cfg.frozen else 3) + n_val) / speed
        total = startup + cfg.epochs * per_epoch + n / speed
    if cfg.fine_tuning:
        total += cfg.fine_tune_epochs * (n_train * 3 + n_val) / speed + 2 * n_val / speed
    return total
