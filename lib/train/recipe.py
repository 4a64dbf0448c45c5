"""The training recipe: a TrainConfig in, a finished run folder out, fast.

    data = prepare_data(...)          scan (cached), the images in a fixed order, splits
    base = prepare_base(...)          weights resolved, the feature cache looked up, decoding
                                      started, the base built, config.json written
    fitted = fit_on_features(...)     frozen base: the head trains on cached features
          or fit_on_images(...)       from scratch / no cache: the whole network on images
    fitted = fine_tune(...)           optional: the top of the base, keeping the better weights
    finish(...)                       scores, model.keras, metrics.json

Cancellation is raised once (Cancelled, by Session.check_stop) and caught once, by
lib.runs.recording_status in the caller (the job worker or the CLI).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib import files, runs, settings
from lib.data import curation
from lib.data.feeder import Stream
from lib.data.images import decode
from lib.data.scan import load_scan
from lib.errors import UserError
from lib.models import build, engine, loader, safety
from lib.models import head as dense_head
from lib.train import detect, estimate, features
from lib.train.config import TrainConfig
from lib.train.finetune import fine_tune as fine_tune_base
from lib.train.fit import evaluate_images, fit_images
from lib.train.head import evaluate_features, train_head
from lib.train.items import TrainingData, training_data
from lib.train.progress import ProgressFn, Session, StopFn
from lib.vocab import RUN_FILES


@dataclass
class Base:
    """The base network and what training knows about it before the first epoch."""

    model: Any
    weights: str  # resolved: imagenet | bundled | none | a file
    features: features.Features | None = None  # cached features (a hit), when the cache is used
    stream: Stream | None = None  # images being decoded for a feature pass (a miss)
    strategy: Any = None


@dataclass
class Fitted:
    """A classifier after a training phase, with its validation/test scores when already known."""

    model: Any
    val: dict[str, float] | None = None
    test: dict[str, float] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    head: Any = None  # the head trained on cached features (while those still describe the base)
    features: features.Features | None = None
    head_epochs: int = 0  # epochs in the head's kept weights (out-of-fold copies train as many)


def train(
    config: TrainConfig,
    run_dir: str | Path,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume: bool = False,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Train as configured, writing the run folder (config, classes, history, model, metrics, log);
    returns the metrics. Raises Cancelled when should_stop() turns true (no model is saved), and
    UserError for bad data or settings. status.json is the caller's (see lib.runs.recording_status).
    The head is checkpointed every epoch; resume=True continues from the last checkpoint. After
    `time_limit` seconds (default: settings.job_time_limit_minutes()) training stops at the end of
    its epoch, keeps its best weights and finishes; the metrics then say "time_limited"."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = config.resolved()
    limit = settings.job_time_limit_minutes() * 60 if time_limit is None else time_limit
    session = Session(Path(run_dir), on_progress, should_stop, time_limit=limit)
    session.run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(config, session)
    base = prepare_base(config, data, session)
    if config.uses_feature_cache:
        fitted = fit_on_features(config, data, base, session, resume=resume)
    else:
        fitted = fit_on_images(config, data, base, session)
    if config.fine_tuning and session.out_of_time():
        fitted.metrics["fine_tuning"] = f"skipped: {session.time_note()}"
    elif config.fine_tuning:
        fitted = fine_tune(config, data, base, fitted, session)
    elif config.fine_tune_epochs > 0:
        fitted.metrics["fine_tuning"] = "skipped: the base was trained from scratch, all of it already trains"
    return finish(config, data, base, fitted, session)


def prepare_data(config: TrainConfig, session: Session) -> TrainingData:
    """The scan (cached on disk) as the ordered list of training images, with their splits."""
    session.report(phase="scan", epoch=0, epochs=config.epochs, logs={}, eta_seconds=None)
    session.log(
        f"Training {config.base} ({config.weights} weights, {config.image_size} px) on {config.data_dir}."
    )
    if not config.data_dir:
        raise UserError("No dataset chosen: pick a dataset folder first.")
    # A relative folder (the shipped demo records "data/sample") is relative to the repository.
    root = runs.resolve_data_dir(config.data_dir) or config.data_dir
    data = training_data(load_scan(root, config.val_fraction, config.test_fraction))
    counts = data.counts()
    session.log(
        f"{len(data.classes)} classes; {counts['train']} train, {counts['validation']} validation, "
        f"{counts['test']} test images."
    )
    return data


def prepare_base(config: TrainConfig, data: TrainingData, session: Session) -> Base:
    """Resolve the weights, look the features up in the cache, start decoding on a miss (it
    overlaps importing TensorFlow and building the base), build the base, write config.json."""
    weights, note = build.resolve_weights(config.spec, config.weights)
    if note:
        session.log(note)
    cached = stream = None
    if config.uses_feature_cache:
        cached = features.cached(config, data, weights)
        if cached is not None:
            session.log(f"Features found in the cache ({cached.path.name}).")
        else:
            stream = features.start_decoding(config, data)
    try:
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(config.seed)
        _write_run_config(session.run_dir, config, data, weights, note)
        strategy = (
            tf.distribute.MirroredStrategy()
            if len(tf.config.list_physical_devices("GPU")) > 1
            else tf.distribute.get_strategy()
        )
        with strategy.scope():
            model = build.build_base(config.base, config.image_size, weights, cut=config.cut_layer)
            model.trainable = not config.frozen
    except BaseException:
        if stream is not None:
            stream.close()
        raise
    return Base(model=model, weights=weights, features=cached, stream=stream, strategy=strategy)


def fit_on_features(
    config: TrainConfig, data: TrainingData, base: Base, session: Session, *, resume: bool
) -> Fitted:
    """Frozen base: compute (or reuse) its features, train the head on them, put the head on the base."""
    import keras

    start = time.perf_counter()
    cached = base.features
    if cached is None:
        assert base.stream is not None
        cached = features.compute(
            config,
            data,
            base.weights,
            base.model,
            base.stream,
            report=session.report,
            should_stop=session.stop_requested,
            log=session.log,
        )
        estimate.record_throughput(
            config, len(data.paths) + len(data.index("train")) * config.views, cached.seconds
        )
        session.log(f"Computed features of {cached.array.shape[0]} images in {cached.seconds:.1f} s.")
    cached = cached.loaded()  # small enough: in memory for the head's epochs and the out-of-fold heads
    keras.utils.set_random_seed(config.seed)
    head_start = time.perf_counter()
    result = train_head(
        config, data, cached, session, checkpoint=session.run_dir / RUN_FILES["checkpoint"], resume=resume
    )
    head_seconds = time.perf_counter() - head_start
    with base.strategy.scope():
        model = build.build_classifier(
            config.spec, config.image_size, base.model, len(data.classes), config.head
        )
    build.copy_head_weights(result.head, model)
    return Fitted(
        model=model,
        val=evaluate_features(result.head, cached, data, "validation", config.label_smoothing),
        test=evaluate_features(result.head, cached, data, "test", config.label_smoothing),
        metrics={
            "feature_cache": "hit" if cached.hit else "computed",
            "feature_engine": cached.engine or "cache",
            "feature_engine_max_difference": cached.engine_max_diff,
            "feature_seconds": round(cached.seconds, 2),
            "head_seconds": round(head_seconds, 2),
            "assembly_max_difference": round(
                _check_assembly(model, result.head, cached, data, config.image_size), 6
            ),
            "stopped": result.stopped,
            "first_phase_seconds": round(time.perf_counter() - start, 2),
        },
        head=result.head,
        features=cached,
        head_epochs=result.epochs_kept,
    )


def fit_on_images(config: TrainConfig, data: TrainingData, base: Base, session: Session) -> Fitted:
    """The plain path: the whole classifier runs on decoded images every epoch."""
    start = time.perf_counter()
    with base.strategy.scope():
        model = build.build_classifier(
            config.spec,
            config.image_size,
            base.model,
            len(data.classes),
            config.head,
            base_training=False if config.frozen else None,
        )
    stopped = fit_images(
        model,
        config,
        data,
        session,
        phase="head" if config.frozen else "train",
        epochs=config.epochs,
        lr=config.lr,
    )
    return Fitted(
        model=model,
        metrics={
            "feature_cache": "off",
            "feature_seconds": 0.0,
            "stopped": stopped,
            "first_phase_seconds": round(time.perf_counter() - start, 2),
        },
    )


def fine_tune(
    config: TrainConfig, data: TrainingData, base: Base, fitted: Fitted, session: Session
) -> Fitted:
    """Fine-tune the top of the base (see lib.train.finetune); the test score is measured anew."""
    tuned = fine_tune_base(fitted.model, base.model, config, data, session)
    metrics = {**fitted.metrics, "fine_tuning": tuned.note, "fine_tune_seconds": tuned.seconds}
    if tuned.stopped:
        metrics["fine_tune_stopped"] = tuned.stopped
    return Fitted(model=fitted.model, val=tuned.val, test=None, metrics=metrics)


def finish(
    config: TrainConfig, data: TrainingData, base: Base, fitted: Fitted, session: Session
) -> dict[str, Any]:
    """Scores not known yet, model.keras, metrics.json; the checkpoint has served."""
    session.report(phase="saving", epoch=len(session.history), epochs=config.epochs, logs={}, eta_seconds=2.0)
    val = fitted.val or evaluate_images(fitted.model, config, data, "validation")
    test = fitted.test or evaluate_images(fitted.model, config, data, "test")
    _save_model(fitted.model, session.run_dir)
    _save_head(fitted, config, session.run_dir)
    detector_start = time.perf_counter()
    unknown_metrics = detect.fit_detector(
        config,
        data,
        fitted.model,
        session,
        head=fitted.head,
        cached=fitted.features,
        head_epochs=fitted.head_epochs,
    )
    unknown_metrics["seconds"] = round(time.perf_counter() - detector_start, 2)
    lite = _save_lite(fitted.model, config, data, base, session)
    with contextlib.suppress(OSError, UserError, ValueError):  # for the Evaluate page, without TensorFlow
        run = runs.read_run(session.run_dir)  # after unknown.npz: the summary is keyed by both files
        loader.save_summary(run, loader.LoadedModel(run, fitted.model).summary())
    metrics = {
        "time_limited": session.timed_out,
        "classes": data.classes,
        "base": config.base,
        "image_size": config.image_size,
        "weights_used": base.weights if not Path(base.weights).is_absolute() else "file",
        **fitted.metrics,
        **lite,
        "val_accuracy": val["accuracy"],
        "val_loss": val["loss"],
        "test_accuracy": test["accuracy"] if test else None,
        "test_loss": test["loss"] if test else None,
        "epochs_run": len(session.history),
        "train_seconds": session.seconds(),
        "counts": data.counts(),
        "unknown": unknown_metrics,
    }
    files.write_json(session.run_dir / RUN_FILES["metrics"], metrics)
    with contextlib.suppress(OSError):
        (session.run_dir / RUN_FILES["checkpoint"]).unlink()
    session.log(
        f"Finished: validation accuracy {val['accuracy']:.4f}"
        + (f", test accuracy {test['accuracy']:.4f}" if test else "")
        + f", {metrics['epochs_run']} epochs, {metrics['train_seconds']:.1f} s."
    )
    return metrics


def _check_assembly(model: Any, head: Any, cached: features.Features, data: TrainingData, size: int) -> float:
    """The assembled model must predict like the head on cached features (guards the weight copy)."""
    items = data.index("validation")[:4]
    pixels = np.stack([decode(data.paths[i], size=size) for i in items]).astype(np.float32)
    full = np.asarray(model(pixels, training=False))  # eager calls: no graph tracing to pay for
    part = np.asarray(head(cached.take(items), training=False))
    diff = float(np.max(np.abs(full - part)))
    if diff > 0.05:
        raise RuntimeError(f"the assembled model disagrees with its trained head (max difference {diff:.3f})")
    return diff


def _save_model(model: Any, run_dir: Path) -> None:
    """Save atomically, without optimizer state (a fresh uncompiled wrapper of the same layers),
    after checking the disk has room for it (a full disk fails as "disk full", never half a file)."""
    import keras

    clean = keras.Model(model.inputs, model.outputs, name=model.name)
    weight_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in clean.weights)
    files.ensure_free(run_dir, weight_bytes + weight_bytes // 10 + 1024 * 1024, "saving the model")
    with files.atomic_path(run_dir / RUN_FILES["model"]) as tmp:
        clean.save(tmp)
    safety.remember_trusted(run_dir / RUN_FILES["model"])  # made here: no isolated check when loaded


def _head_dense(model: Any) -> list[tuple[Any, Any, str]] | None:
    """The head's Dense layers after the "pool" layer as (kernel, bias, activation), for grafting
    onto the converted base; None when the head has anything else (or the pooling isn't avg)."""
    import keras

    layers = list(model.layers)
    names = [layer.name for layer in layers]
    if "pool" not in names or not isinstance(
        layers[names.index("pool")], keras.layers.GlobalAveragePooling2D
    ):
        return None
    dense = []
    for layer in layers[names.index("pool") + 1 :]:
        if isinstance(layer, keras.layers.Dropout):
            continue
        if not isinstance(layer, keras.layers.Dense) or not layer.use_bias:
            return None
        kernel, bias = layer.get_weights()
        dense.append((kernel, bias, getattr(layer.activation, "__name__", "")))
    return dense or None


def _save_head(fitted: Fitted, config: TrainConfig, run_dir: Path) -> None:
    """head.npz: the head trained on cached features, as numpy, when the base stayed frozen (the
    Evaluate page then scores the splits from the cached features). Not written otherwise."""
    (run_dir / RUN_FILES["head"]).unlink(missing_ok=True)  # a resumed run's older head never stays
    if fitted.head is None or fitted.features is None or config.fine_tuning:
        return
    dense = _head_dense(fitted.model)
    if dense is None or not dense_head.usable_layers(dense):
        return
    run = runs.read_run(run_dir)
    dense_head.DenseHead(dense, loader.model_digest(run)).save(run_dir / RUN_FILES["head"])


def _save_lite(
    model: Any, config: TrainConfig, data: TrainingData, base: Base, session: Session
) -> dict[str, Any]:
    """With the LiteRT engine, the run's full model as model.tflite too (probabilities and pooled
    features), checked against Keras on validation images, so prediction needs no TensorFlow.
    A base that stayed frozen is the converted one the feature pass shares: the trained head is
    grafted onto it in milliseconds; otherwise the whole model is converted (10-20 s)."""
    if engine.choose() != "litert":
        return {"lite_model": "not made (the Keras engine runs here; made on first use)"}
    items = list(data.index("validation")[: engine.CHECK_IMAGES]) or list(range(min(len(data.paths), 4)))
    pixels = []
    for i in items:
        with contextlib.suppress(UserError):
            pixels.append(decode(data.paths[i], size=config.image_size))
    made = None
    how = {"made": "converted"}
    dense = _head_dense(model) if config.uses_feature_cache and not config.fine_tuning else None
    if dense is not None:

        def made() -> bytes:
            converted_base = features.base_lite(config, base.model, base.weights, data)
            if converted_base.lite is None or converted_base.path is None:
                raise ValueError(converted_base.reason)
            grafted = engine.graft_head(converted_base.path.read_bytes(), dense)
            how["made"], how["base"] = "grafted", converted_base.lite
            return grafted

    def reference(x: np.ndarray) -> dict[str, np.ndarray] | None:
        """A graft checked without a Keras forward pass of the whole model (~330 MB more in the
        worker): the converted base (itself checked against Keras when it was made) and the
        head's own Keras weights, in float64."""
        if how["made"] != "grafted" or dense is None:
            return None
        feats = np.asarray(how["base"](x)[engine.FEATURES], dtype=np.float32)
        return {engine.PROBABILITIES: dense_head.forward(dense, feats), engine.FEATURES: feats}

    converted = loader.run_lite(
        runs.read_run(session.run_dir),
        keras_model=model,
        pixels=np.stack(pixels) if pixels else None,
        made=made,
        reference=reference,
    )
    if converted.lite is None:
        session.log(f"No LiteRT model: {converted.reason}; prediction uses Keras.")
        return {"lite_model": f"not made: {converted.reason}"}
    session.log(
        f"Wrote model.tflite ({how['made']} in {converted.seconds:.1f} s; largest difference from "
        + ("its checked base and the Keras head" if how["made"] == "grafted" else "Keras")
        + f" {converted.max_diff:.1e})."
    )
    return {
        "lite_model": loader.LITE_FILE,
        "lite_made": how["made"] if not converted.cached else "cached",
        "lite_seconds": round(converted.seconds, 2),
        "lite_max_difference": converted.max_diff,
    }


def _write_run_config(
    run_dir: Path, config: TrainConfig, data: TrainingData, weights: str, note: str
) -> None:
    import keras
    import tensorflow as tf

    path = run_dir / RUN_FILES["config"]
    existing: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        existing = files.read_json(path)
    record = {
        **existing,
        **config.to_dict(),
        "weights_used": weights,
        "weights_note": note,
        "classes": data.classes,
        "dataset": {
            "root": str(data.root),
            "fingerprint": data.fingerprint,
            "counts": data.counts(),
            "curation": curation.fingerprint(data.root),
            "decisions": len(curation.decisions(data.root)),
        },
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": sys.version.split()[0],
        },
    }
    record.setdefault("name", run_dir.name)
    files.write_json(path, record)
    files.write_atomic(run_dir / RUN_FILES["classes"], "".join(f"{c}\n" for c in data.classes))
