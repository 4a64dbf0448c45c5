"""Training the head on cached features: a small in-graph loop, checkpointed every epoch.

Keras fit() spends ~3 ms of overhead per step, far more than a Dense layer on 1,280 numbers costs,
so each chunk of batches runs inside one tf.function instead. Same loss, optimizer, class weights
and label smoothing as fit(); early stopping on validation loss with the best weights restored.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib import files
from lib.models import build
from lib.models.unknown import fold_of_groups
from lib.train.config import TrainConfig
from lib.train.features import Features
from lib.train.items import TrainingData
from lib.train.progress import Session

CHUNK_BYTES = 128 * 2**20  # feature rows gathered from the memmap at a time (bounds memory on huge sets)


# ----------------------------------------------------------------------------------------------
# Shared by every phase
# ----------------------------------------------------------------------------------------------


def make_optimizer(name: str, lr: float) -> Any:
    import keras  # called while training: Keras is loaded

    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights that make every class count the same in the loss (0 for a class with no images)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def scores(probs: np.ndarray, labels: np.ndarray, smoothing: float) -> dict[str, float]:
    """Accuracy and label-smoothed cross-entropy (what Keras reports as loss) from probabilities."""
    n = probs.shape[1]
    target = np.full(probs.shape, smoothing / n, dtype=np.float64)
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    loss = -np.mean(np.sum(target * np.log(np.clip(probs, 1e-7, 1.0)), axis=1))
    return {"loss": float(loss), "accuracy": float(np.mean(np.argmax(probs, axis=1) == labels))}


def _chunk_rows(features: Features, batch: int = 1) -> int:
    row_bytes = 4 * int(np.prod(features.array.shape[1:]))
    return max(batch, min(65536, CHUNK_BYTES // row_bytes) // batch * batch)


def evaluate_features(
    head: Any, features: Features, data: TrainingData, split: str, smoothing: float
) -> dict[str, float] | None:
    """Loss and accuracy of the head on a split's cached features (None when the split is empty)."""
    items = data.index(split)
    if len(items) == 0:
        return None
    step = _chunk_rows(features)
    probs = np.concatenate(
        [
            np.asarray(head(features.take(items[i : i + step]), training=False))
            for i in range(0, len(items), step)
        ]
    )
    return scores(probs, data.labels[items], smoothing)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Where the epoch loop is: restored from a checkpoint when a run resumes."""

    epoch: int = 0  # last finished epoch
    best_loss: float = math.inf
    best_epoch: int = 0
    waited: int = 0
    best_weights: list | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, epoch: int, val_loss: float, head: Any) -> None:
        self.epoch = epoch
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
            self.best_weights = head.get_weights()
        else:
            self.waited += 1


def save_checkpoint(path: Path, head: Any, state: LoopState) -> None:
    """The head's weights (current and best so far) and the loop state, written atomically."""
    arrays = {f"w{i}": w for i, w in enumerate(head.get_weights())}
    if state.best_weights is not None:
        arrays.update({f"b{i}": w for i, w in enumerate(state.best_weights)})
    meta = {
        "epoch": state.epoch,
        "best_loss": None if math.isinf(state.best_loss) else state.best_loss,
        "best_epoch": state.best_epoch,
        "waited": state.waited,
        "history": state.history,
    }
    arrays["state"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with files.atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_checkpoint(path: Path, head: Any) -> LoopState | None:
    """The loop state of a checkpoint, with the head's weights set from it (None when damaged)."""
    n = len(head.get_weights())
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["state"]).decode())
            current = [data[f"w{i}"] for i in range(n)]
            best = [data[f"b{i}"] for i in range(n)] if "b0" in data else None
    except (OSError, KeyError, ValueError):
        return None  # a damaged checkpoint: start the head again
    head.set_weights(current)
    return LoopState(
        epoch=int(meta["epoch"]),
        best_loss=float(meta["best_loss"]) if meta["best_loss"] is not None else math.inf,
        best_epoch=int(meta["best_epoch"]),
        waited=int(meta["waited"]),
        best_weights=best,
        history=list(meta.get("history", [])),
    )


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


class _Trainer:
    """The head, its optimizer and the compiled chunk step."""

    def __init__(self, config: TrainConfig, data: TrainingData, features: Features):
        import keras
        import tensorflow as tf

        self.config, self.data, self.features = config, data, features
        self.n_classes = len(data.classes)
        self.head = build.build_head_model(features.array.shape[1:], self.n_classes, config.head)
        optimizer = make_optimizer(config.optimizer, config.lr)
        optimizer.build(self.head.trainable_variables)  # its slots must exist before the tf.function runs
        self.optimizer = optimizer
        self._start = (self.head.get_weights(), [np.array(v) for v in optimizer.variables])
        loss_fn = keras.losses.CategoricalCrossentropy(
            label_smoothing=config.label_smoothing, reduction="none"
        )
        self.train_items = data.index("train")
        self.val_items = data.index("validation")
        self.weights = (
            class_weights(data.labels[self.train_items], self.n_classes) if config.class_weights else None
        )
        batch = int(config.batch_size)
        shape = features.array.shape[1:]
        self.chunk = _chunk_rows(features, batch)
        head, n_classes = self.head, self.n_classes

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, *shape), tf.float32),
                tf.TensorSpec((None, n_classes), tf.float32),
                tf.TensorSpec((None,), tf.float32),
            ]
        )
        def train_chunk(x, y, w):
            steps = (tf.shape(x)[0] + batch - 1) // batch
            total_loss = tf.constant(0.0)
            correct = tf.constant(0.0)
            for i in tf.range(steps):
                xb, yb, wb = (t[i * batch : (i + 1) * batch] for t in (x, y, w))
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

        self.train_chunk, self.predict = train_chunk, predict

    def restart(self) -> None:
        """The head's first weights and the optimizer as new (step 0, its learning rate, empty
        slots), keeping the traced steps: a new _Trainer would trace them again (~0.5 s each)."""
        weights, optimizer = self._start
        self.head.set_weights(weights)
        for variable, value in zip(self.optimizer.variables, optimizer, strict=True):
            variable.assign(value)

    def epoch(self, rng: np.random.Generator, session: Session) -> dict[str, float]:
        """One pass over the training features (a random view of each image); then validation."""
        sum_loss, sum_correct, seen = self.train_pass(rng, session)
        val = self.validate()
        return {
            "loss": sum_loss / seen,
            "accuracy": sum_correct / seen,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
        }

    def train_pass(self, rng: np.random.Generator, session: Session) -> tuple[float, float, int]:
        """One pass over self.train_items; augmented views only for images that have them."""
        features, labels = self.features, self.data.labels
        order = rng.permutation(self.train_items)
        view = None
        if features.views:
            view = rng.integers(0, features.views + 1, size=len(order))
            view[~np.isin(order, features.train_items)] = 0
        rows = features.rows(order, view)
        sum_loss = sum_correct = 0.0
        for at in range(0, len(order), self.chunk):
            y = labels[order[at : at + self.chunk]]
            w = self.weights[y] if self.weights is not None else np.ones(len(y), np.float32)
            loss, correct = self.train_chunk(
                features.take(rows[at : at + self.chunk]),
                np.eye(self.n_classes, dtype=np.float32)[y],
                w.astype(np.float32),
            )
            sum_loss += float(loss)
            sum_correct += float(correct)
            session.check_stop()
        return sum_loss, sum_correct, len(order)

    def validate(self) -> dict[str, float]:
        val, step = self.val_items, self.chunk
        probs = np.concatenate(
            [self.predict(self.features.take(val[i : i + step])).numpy() for i in range(0, len(val), step)]
        )
        return scores(probs, self.data.labels[val], self.config.label_smoothing)


@dataclass
class HeadResult:
    head: Any
    stopped: str = ""
    best_epoch: int = 0
    epochs_kept: int = 0  # epochs of training in the weights kept (the recipe the out-of-fold copies repeat)


def _stop_reason(config: TrainConfig, state: LoopState, val_accuracy: float) -> str:
    if config.target_val_accuracy and val_accuracy >= config.target_val_accuracy:
        return f"reached the target validation accuracy {config.target_val_accuracy:.2%}"
    if config.early_stopping and state.waited >= config.early_stopping:
        return (
            f"early stopping (no better validation loss for {config.early_stopping} epochs; "
            f"best epoch {state.best_epoch} restored)"
        )
    return ""


def train_head(
    config: TrainConfig,
    data: TrainingData,
    features: Features,
    session: Session,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> HeadResult:
    """Fit the head on cached features, epoch by epoch, checkpointing each; resume=True continues
    from the checkpoint. The best epoch's weights are kept (except when the target was reached)."""
    trainer = _Trainer(config, data, features)
    state = LoopState()
    rng = np.random.default_rng(config.seed)
    if resume and checkpoint is not None and checkpoint.is_file():
        restored = load_checkpoint(checkpoint, trainer.head)
        if restored is not None:
            state = restored
            session.history = list(state.history)
            rng = np.random.default_rng([config.seed, state.epoch + 1])
            session.log(f"Resumed from the checkpoint of epoch {state.epoch}.")
    first = state.epoch + 1
    start = time.perf_counter()
    session.report(phase="head", epoch=state.epoch, epochs=config.epochs, logs={}, eta_seconds=None)
    stopped = ""
    for epoch in range(first, config.epochs + 1):
        epoch_start = time.perf_counter()
        logs = trainer.epoch(rng, session)
        session.epoch_end("head", logs, time.perf_counter() - epoch_start)
        state.update(epoch, logs["val_loss"], trainer.head)
        state.history = session.history
        if checkpoint is not None:
            save_checkpoint(checkpoint, trainer.head, state)
        per_epoch = (time.perf_counter() - start) / (epoch - first + 1)
        session.report(
            phase="head",
            epoch=epoch,
            epochs=config.epochs,
            logs=logs,
            eta_seconds=round(per_epoch * (config.epochs - epoch) + 2.0, 1),
        )
        stopped = _stop_reason(config, state, logs["val_accuracy"])
        if not stopped and session.out_of_time():
            stopped = session.time_note()
        if stopped:
            break
    kept = state.epoch
    if state.best_weights is not None and not stopped.startswith("reached"):
        trainer.head.set_weights(state.best_weights)
        kept = state.best_epoch
    return HeadResult(head=trainer.head, stopped=stopped, best_epoch=state.best_epoch, epochs_kept=kept)


# ----------------------------------------------------------------------------------------------
# Out-of-fold predictions (for the temperature)
# ----------------------------------------------------------------------------------------------

OOF_FOLDS = 5
OOF_MAX_IMAGES = 3000  # train+validation images the out-of-fold heads use (a random subset beyond)


def out_of_fold_probs(
    config: TrainConfig,
    data: TrainingData,
    features: Features,
    items: np.ndarray,
    epochs: int,
    session: Session,
    *,
    groups: list[str] | np.ndarray | None = None,
    folds: int = OOF_FOLDS,
) -> np.ndarray:
    """Each item's probabilities from a copy of the head (same recipe, `epochs` epochs, no early
    stopping) trained on the other folds' cached features: honest held-out confidences for every
    train+validation image, so the temperature rests on many more images than validation holds.
    Items sharing a group (the same photo twice) share a fold."""
    items = np.asarray(items)
    n = len(items)
    folds = max(2, min(folds, n))
    fold = fold_of_groups(groups if groups is not None else np.arange(n), folds, config.seed)
    out = np.full((n, len(data.classes)), np.nan)
    trainer = _Trainer(config, data, features)  # one trainer, restarted per fold: traced once
    for k in range(folds):
        held = fold == k
        if not held.any() or held.all():
            continue
        trainer.restart()
        trainer.train_items = items[~held]
        if config.class_weights:
            trainer.weights = class_weights(data.labels[trainer.train_items], trainer.n_classes)
        rng = np.random.default_rng([config.seed, 1000 + k])
        for _ in range(max(1, int(epochs))):
            trainer.train_pass(rng, session)
        rows = items[held]
        out[held] = np.concatenate(
            [
                trainer.predict(features.take(rows[i : i + trainer.chunk])).numpy()
                for i in range(0, len(rows), trainer.chunk)
            ]
        )
    return out
