"""After training: fit the run's unknown-photo detector and temperature (lib.models.unknown) and
measure them on the test split; written to the run as unknown.npz.

The temperature: with a head trained on cached features (frozen base, the default), five copies of
the same head recipe are trained on the cached features, each predicting its held-out fold of
train+validation; T is fitted on those out-of-fold probabilities plus the real head's validation
ones (hundreds of images instead of a validation split that may hold 31). After fine-tuning or
from scratch a copy would cost a whole training: validation alone.

With a frozen base and no fine-tuning the base features are the cached ones (no extra pass); after
fine-tuning or training from scratch the finished model computes them in one pass over the images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lib.data.feeder import Feeder
from lib.models import build, unknown
from lib.train.config import TrainConfig
from lib.train.features import Features
from lib.train.head import OOF_MAX_IMAGES, out_of_fold_probs
from lib.train.items import TrainingData
from lib.train.progress import Session

MAX_IMAGES = (
    10_000  # images per split the detector uses (a random subset beyond that: bounded time and memory)
)
CHUNK = 4096


def _subset(items: np.ndarray, seed: int) -> np.ndarray:
    if len(items) <= MAX_IMAGES:
        return items
    return np.sort(np.random.default_rng(seed).choice(items, MAX_IMAGES, replace=False))


def _oof_items(data: TrainingData, seed: int) -> np.ndarray:
    """Train+validation items for the out-of-fold heads (a random subset beyond OOF_MAX_IMAGES:
    five head trainings on cached features stay seconds even for a huge dataset)."""
    items = np.concatenate([data.index("train"), data.index("validation")])
    if len(items) <= OOF_MAX_IMAGES:
        return np.sort(items)
    return np.sort(np.random.default_rng([seed, 7]).choice(items, OOF_MAX_IMAGES, replace=False))


def _from_cache(head: Any, cached: Features, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, feats = [], []
    for at in range(0, len(items), CHUNK):
        x = cached.take(items[at : at + CHUNK])
        probs.append(np.asarray(head(x, training=False), dtype=np.float64))
        feats.append(unknown.pooled(x))
    return np.concatenate(probs), np.concatenate(feats)


def _from_images(
    model: Any, config: TrainConfig, data: TrainingData, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf  # the model is Keras: TensorFlow is loaded already

    two = build.with_features(model)
    fn = tf.function(
        lambda t: two(t, training=False),
        input_signature=[tf.TensorSpec((None, config.image_size, config.image_size, 3), tf.float32)],
    )
    n_classes = len(data.classes)

    def run(pixels: np.ndarray) -> np.ndarray:
        probs, feats = fn(tf.convert_to_tensor(pixels, dtype=tf.float32))
        return np.concatenate([np.asarray(probs), np.asarray(feats)], axis=1)

    out, _ = Feeder(config.image_size, batch=32).run([data.paths[i] for i in items], run, on_error="raise")
    return out[:, :n_classes].astype(np.float64), out[:, n_classes:].astype(np.float64)


def out_of_fold(
    config: TrainConfig, data: TrainingData, cached: Features, head_epochs: int, session: Session
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of train+validation images, each predicted by a copy of the head
    recipe trained without its fold (lib.train.head.out_of_fold_probs): what T is fitted on."""
    items = _oof_items(data, config.seed)
    probs = out_of_fold_probs(
        config,
        data,
        cached,
        items,
        head_epochs or config.epochs,
        session,
        groups=[data.sha1[i] for i in items],
    )
    return probs, data.labels[items]


def fit_detector(
    config: TrainConfig,
    data: TrainingData,
    model: Any,
    session: Session,
    *,
    head: Any = None,
    cached: Features | None = None,
    head_epochs: int = 0,
) -> dict[str, Any]:
    """Fit, save (unknown.npz) and measure the detector; returns what metrics.json records."""
    split_items = {s: _subset(data.index(s), config.seed) for s in ("train", "validation", "test")}
    everything = np.concatenate(list(split_items.values()))
    if head is not None and cached is not None:
        probs, feats = _from_cache(head, cached, everything)
    else:
        probs, feats = _from_images(model, config, data, everything)
    at = np.cumsum([0, *(len(v) for v in split_items.values())])
    part = {s: slice(at[i], at[i + 1]) for i, s in enumerate(split_items)}
    known = np.r_[part["train"].start : part["validation"].stop]
    labels = data.labels[everything]
    val = part["validation"]
    oof_probs = oof_labels = None
    if head is not None and cached is not None:
        oof_probs, oof_labels = out_of_fold(config, data, cached, head_epochs, session)
    detector = unknown.fit(
        feats[known],
        labels[known],
        len(data.classes),
        [data.sha1[i] for i in everything[known]],
        val_probs=probs[val],
        val_labels=labels[val],
        oof_probs=oof_probs,
        oof_labels=oof_labels,
        seed=config.seed,
    )
    test = part["test"]
    if test.stop > test.start:
        y = labels[test]
        before = unknown.reliability(probs[test], y)
        after_probs = detector.calibrated(probs[test])
        after = unknown.reliability(after_probs, y)
        refused = detector.unknown_score(feats[test]) > detector.acceptance
        detector.info.update(
            test_images=int(len(y)),
            test_ece_before=before["ece"],
            test_ece_after=after["ece"],
            test_nll_before=unknown.nll(probs[test], y),
            test_nll_after=unknown.nll(after_probs, y),
            test_refused=float(refused.mean()),
            test_accuracy_accepted=float(np.mean(after_probs[~refused].argmax(1) == y[~refused]))
            if (~refused).any()
            else None,
        )
    detector.save(session.run_dir / unknown.FILE_NAME)
    summary = {
        "temperature": round(detector.temperature, 4),
        "acceptance": detector.acceptance,
        **{
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in detector.info.items() if k != "method"
        },
    }
    refused = summary.get("test_refused")
    session.log(
        f"Unknown-photo detector fitted on {summary['images']} images; temperature {detector.temperature:.2f}"
        + (f"; {refused:.1%} of test images would be refused as unknown." if refused is not None else ".")
    )
    return summary
