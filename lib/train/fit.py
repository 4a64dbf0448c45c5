"""Training on images: the plain path (a base from scratch, feature_cache off) and fine-tuning.

The whole network runs on decoded images every epoch: Keras fit() over batches that the one image
feeder decodes (in threads, a batch ahead). A file that breaks after the scan stops the run with an
ImageError naming it; the error object is kept on the side, never parsed back from TensorFlow's text.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lib.data.feeder import Feeder
from lib.errors import ImageError
from lib.train.augment import augmenter
from lib.train.config import TrainConfig
from lib.train.head import class_weights, make_optimizer, scores
from lib.train.items import TrainingData
from lib.train.progress import Session


class _Failure:
    """Where a batch's ImageError waits while TensorFlow turns the exception into text."""

    error: ImageError | None = None


def _batches(
    data: TrainingData,
    split: str,
    config: TrainConfig,
    *,
    shuffle: bool,
    weights: np.ndarray | None,
    failure: _Failure,
) -> Any:
    """A keras PyDataset of (pixels 0-255, one-hot[, sample weight]) batches of a split's images."""
    import keras  # the plain path runs Keras anyway

    items = data.index(split)
    n_classes = len(data.classes)
    feeder = Feeder(config.image_size, batch=config.batch_size)
    pool = ThreadPoolExecutor(max_workers=feeder.workers)

    class ImageBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=2, use_multiprocessing=False, max_queue_size=4)
            self.order = items
            self.epoch = 0
            if shuffle:
                self.on_epoch_end()

        def __len__(self) -> int:
            return (len(items) + config.batch_size - 1) // config.batch_size

        def __getitem__(self, index: int):
            chosen = self.order[index * config.batch_size : (index + 1) * config.batch_size]
            batch = feeder.decode_many(data.paths, chosen, pool)
            if batch.errors:
                failure.error = next(iter(batch.errors.values()))
                raise failure.error
            x = batch.pixels[: batch.count].astype(np.float32)
            labels = data.labels[chosen]
            y = np.eye(n_classes, dtype=np.float32)[labels]
            return (x, y, weights[labels]) if weights is not None else (x, y)

        def on_epoch_end(self) -> None:
            if shuffle:
                self.order = np.random.default_rng([config.seed, self.epoch]).permutation(items)
                self.epoch += 1

    return ImageBatches()


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
            self.best = float("inf")
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


def _stop_reason(early: Any, epochs: int, done: int) -> str:
    if getattr(early, "stopped_epoch", 0) and done < epochs:
        best = getattr(early, "best_epoch", None)
        return (
            f"early stopping (no better validation loss for {early.patience} epochs; "
            f"best epoch {best + 1 if best is not None else '?'} restored)"
        )
    return ""


def fit_images(
    model: Any,
    config: TrainConfig,
    data: TrainingData,
    session: Session,
    *,
    phase: str,
    epochs: int,
    lr: float,
) -> str:
    """Train `model` on decoded images (augmentation in front of it); returns why it stopped early
    ("" when it ran every epoch). Raises Cancelled when the user stopped it."""
    import keras

    aug = augmenter(config)
    if aug is not None:
        inputs = keras.Input((config.image_size, config.image_size, 3), dtype="float32")
        trainer = keras.Model(inputs, model(aug(inputs)), name="trainer")
    else:
        trainer = model
    trainer.compile(
        optimizer=make_optimizer(config.optimizer, lr),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    n_classes = len(data.classes)
    weights = class_weights(data.labels[data.index("train")], n_classes) if config.class_weights else None
    progress = session.keras_callback(phase, epochs, config.target_val_accuracy, extra_seconds=5.0)
    stopper = _early_stopping(config.early_stopping) if config.early_stopping else _best_restorer()
    failure = _Failure()
    try:
        trainer.fit(
            _batches(data, "train", config, shuffle=True, weights=weights, failure=failure),
            validation_data=_batches(
                data, "validation", config, shuffle=False, weights=None, failure=failure
            ),
            epochs=epochs,
            callbacks=[progress, stopper],
            verbose=0,
        )
    except Exception:
        if failure.error is not None:
            raise failure.error from None
        raise
    session.check_stop()
    return progress.reason or _stop_reason(stopper, epochs, progress.done)


def evaluate_images(
    model: Any, config: TrainConfig, data: TrainingData, split: str
) -> dict[str, float] | None:
    """Loss and accuracy of the full model on a split's image files (None when the split is empty)."""
    items = data.index(split)
    if len(items) == 0:
        return None
    feeder = Feeder(config.image_size, batch=32)  # predict_on_batch traces once per model
    probs, _ = feeder.run(
        [data.paths[i] for i in items],
        lambda pixels: np.asarray(model.predict_on_batch(pixels.astype(np.float32))),
        on_error="raise",
    )
    return scores(probs, data.labels[items], config.label_smoothing)
