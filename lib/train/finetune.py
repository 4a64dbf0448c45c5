"""Fine-tuning: after the head has trained, unfreeze the top of the base and train a little more."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lib.train.config import TrainConfig
from lib.train.fit import evaluate_images, fit_images
from lib.train.items import TrainingData
from lib.train.progress import Session


@dataclass
class FineTuned:
    val: dict[str, float]
    note: str  # what happened, for metrics.json and the page
    stopped: str
    seconds: float


def set_trainable_top(base: Any, n_layers: int) -> int:
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


def fine_tune(model: Any, base: Any, config: TrainConfig, data: TrainingData, session: Session) -> FineTuned:
    """Train the top `config.fine_tune_layers` layers of the base with the head, at the small
    fine-tuning rate, BatchNorm kept in inference mode (the model calls the base with training=False).

    Args:
        model: the classifier whose head has trained (its base is `base`).
    Returns:
        The validation scores of the weights kept: the fine-tuned ones, or the earlier ones when
        fine-tuning made validation accuracy worse (the model is then set back to them).
    """
    start = time.perf_counter()
    before = evaluate_images(model, config, data, "validation")
    saved = model.get_weights()
    trainable = set_trainable_top(base, config.fine_tune_layers)
    session.log(
        f"Fine-tuning the top {config.fine_tune_layers} layers of {config.base} ({trainable} with weights)."
    )
    stopped = fit_images(
        model,
        config,
        data,
        session,
        phase="fine-tune",
        epochs=config.fine_tune_epochs,
        lr=config.fine_tune_lr,
    )
    after = evaluate_images(model, config, data, "validation")
    if after["accuracy"] < before["accuracy"]:
        model.set_weights(saved)
        note = f"kept pre-fine-tuning weights (val acc {after['accuracy']:.4f} < {before['accuracy']:.4f})"
        val = before
    else:
        note = f"fine-tuned: val acc {before['accuracy']:.4f} -> {after['accuracy']:.4f}"
        val = after
    base.trainable = False
    return FineTuned(val=val, note=note, stopped=stopped, seconds=round(time.perf_counter() - start, 2))
