"""Augmentation: the Keras layers that make random variations of training images.

The Dataset page's preview, the feature cache's augmented views and the plain training path all
build them here from the same TrainConfig fields, so what the preview shows is what training uses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from lib.train.config import TrainConfig


def augmenter(config: TrainConfig, seed: int | None = None) -> Any | None:
    """The augmentation layers for a config (0-255 pixels in, same out), or None when off."""
    import keras  # TensorFlow stays lazy: the Dataset page imports this module
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


def preview(config: TrainConfig, rgb: np.ndarray, n: int = 9, seed: int | None = None) -> list[np.ndarray]:
    """n random variations of one image (uint8 RGB in, uint8 out) by exactly the training's layers,
    as if augmentation were on."""
    seed = int(config.seed if seed is None else seed) % 100_000
    layer = augmenter(replace(config, augment=True), seed=seed)
    if layer is None:
        return [rgb] * n
    batch = np.repeat(rgb[None].astype("float32"), n, axis=0)
    out = np.asarray(layer(batch, training=True))
    return [np.clip(x, 0, 255).astype("uint8") for x in out]
