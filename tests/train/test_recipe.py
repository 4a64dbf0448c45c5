"""lib.train.recipe end to end on a tiny colour dataset with the bundled MobileNetV2: accuracy, the
feature cache, both training paths giving the same saved model, fine-tuning, cancel, bad input, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lib import runs
from lib.data.scan import load_scan
from lib.errors import Cancelled, ImageError, UserError
from lib.models import build, loader, registry, unknown
from lib.models import head as dense_head
from lib.train import estimate, features
from lib.train.config import TrainConfig
from lib.train.recipe import train
from tests.conftest import share_converted_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory, converted_models):
    """A private cache (features, scans; the shared converted models) for this module; restored afterwards."""
    path = share_converted_models(tmp_path_factory.mktemp("train_cache"), converted_models)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_CACHE_DIR", str(path))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        yield path


def _config(data: Path, **overrides) -> TrainConfig:
    base = {"data_dir": str(data), "weights": "bundled", "epochs": 30, "seed": 3}
    return TrainConfig(**{**base, **overrides})


class Recorder:
    def __init__(self):
        self.events: list[tuple[float, dict]] = []
        self.start = time.perf_counter()

    def __call__(self, progress: dict) -> None:
        self.events.append((time.perf_counter() - self.start, dict(progress)))

    def phases(self) -> list[str]:
        return [e["phase"] for _, e in self.events]

    def first(self, phase: str) -> float:
        return next(t for t, e in self.events if e["phase"] == phase)


@pytest.fixture(scope="module")
def first_run(tiny_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "first"
    recorder = Recorder()
    metrics = train(_config(tiny_dataset), run_dir, on_progress=recorder)
    return run_dir, metrics, recorder


def test_training_on_a_separable_set_reaches_high_accuracy(first_run):
    run_dir, metrics, _ = first_run
    assert metrics["feature_cache"] == "computed"
    assert metrics["val_accuracy"] >= 0.9
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["classes"] == ["blue", "green", "red"]
    assert 1 <= metrics["epochs_run"] <= 30
    assert metrics["assembly_max_difference"] < 0.01
    assert metrics["unknown"]["images"] == sum(metrics["counts"][s] for s in ("train", "validation"))
    assert metrics["unknown"]["test_refused"] <= 0.1


def test_a_tiny_frozen_run_gets_its_temperature_from_out_of_fold_heads(first_run):
    # 90 images (validation far below 50): the temperature used to stay 1. Five copies of the head,
    # trained on the cached features, each predict their held-out fold of train+validation.
    _, metrics, _ = first_run
    u, counts = metrics["unknown"], metrics["counts"]
    assert counts["validation"] < unknown.MIN_VAL_FOR_TEMPERATURE
    assert u["temperature_source"].startswith("out-of-fold")
    assert u["oof_images"] == counts["train"] + counts["validation"]
    assert u["temperature_images"] == u["oof_images"] + counts["validation"]
    assert u["temperature"] != 1.0 and "temperature_note" not in u
    assert u["oof_nll_after"] < u["oof_nll_before"]


def test_the_run_folder_holds_everything(first_run, tiny_dataset):
    from lib.data.images import decode

    run_dir, metrics, _ = first_run
    for name in ("config.json", "classes.txt", "history.csv", "model.keras", "metrics.json", "log.txt"):
        assert (run_dir / name).is_file(), name
    config = runs.read_run(run_dir).config
    assert config["classes"] == ["blue", "green", "red"] and config["image_size"] == 160
    assert config["base"] == "MobileNetV2" and config["weights"] == "bundled"
    assert config["dataset"]["counts"]["train"] > 0
    assert TrainConfig.from_dict(config).lr == pytest.approx(1e-3)  # config.json reproduces the run
    assert (run_dir / "classes.txt").read_text().split() == ["blue", "green", "red"]
    history = runs.read_history(run_dir)
    assert len(history) == metrics["epochs_run"] and set(history["phase"]) == {"head"}
    assert json.loads((run_dir / "metrics.json").read_text())["val_accuracy"] == metrics["val_accuracy"]

    # The saved model takes raw pixels of any size and classifies the colours.
    model = loader.load(run_dir).keras_model
    red = decode(next((tiny_dataset / "red").iterdir()))  # 64 x 64: resized inside the model
    blue = decode(next((tiny_dataset / "blue").iterdir()), size=160)
    probs = model.predict(np.stack([red.astype("float32")]), verbose=0)
    assert probs.argmax() == 2
    assert model.predict(blue[None].astype("float32"), verbose=0).argmax() == 0

    # head.npz: the head as numpy, of this very model file, predicting like the model from the
    # features training cached (what the Evaluate page scores a split with).
    run = runs.read_run(run_dir)
    head = dense_head.load(run_dir / "head.npz", loader.model_digest(run))
    assert head is not None and head.dims == 1280 and head.outputs == 3
    scan = load_scan(tiny_dataset, config["val_fraction"], config["test_fraction"])
    paths = [str(p) for p in scan.usable["path"]][:6]
    found, rows = features.cached_items(config, scan, paths)
    assert found is not None and (rows >= 0).all()
    pixels = np.stack([decode(p, size=160) for p in paths]).astype("float32")
    np.testing.assert_allclose(head(found.take(rows)), model.predict(pixels, verbose=0), atol=5e-3)
    assert dense_head.load(run_dir / "head.npz", "another model") is None


def test_progress_reports_features_then_head_epochs(first_run):
    _, metrics, recorder = first_run
    phases = recorder.phases()
    assert phases[0] == "scan" and "features" in phases and "head" in phases and phases[-1] == "saving"
    features = [e for _, e in recorder.events if e["phase"] == "features"]
    assert features[-1]["done"] == features[-1]["total"] == 90
    epochs = [e for _, e in recorder.events if e["phase"] == "head" and e["epoch"]]
    assert [e["epoch"] for e in epochs] == list(range(1, metrics["epochs_run"] + 1))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(epochs[-1]["logs"])
    assert epochs[0]["eta_seconds"] is not None and epochs[0]["epochs"] == 30


def test_a_second_run_with_another_head_hits_the_feature_cache(first_run, tiny_dataset, tmp_path):
    recorder = Recorder()
    config = _config(tiny_dataset, hidden_units=32, dropout=0.3, lr=3e-3, epochs=8, early_stopping=0)
    metrics = train(config, tmp_path / "second", on_progress=recorder)
    assert metrics["feature_cache"] == "hit"
    assert "features" not in recorder.phases()
    assert metrics["epochs_run"] == 8
    assert metrics["val_accuracy"] >= 0.9
    assert features.cached_features_ready(config, load_scan(tiny_dataset))
    assert not features.cached_features_ready(_config(tiny_dataset, augment=True), load_scan(tiny_dataset))


def _structure(model) -> list[tuple]:
    """Layer types, names (input layers are auto-named), output shapes and weight counts."""
    return [
        (
            type(layer).__name__,
            "" if type(layer).__name__ == "InputLayer" else layer.name,
            tuple(layer.output.shape),
            len(layer.weights),
        )
        for layer in model.layers
    ]


def test_cached_and_plain_paths_save_the_same_model_structure(first_run, tiny_dataset, tmp_path):
    run_dir, _, _ = first_run
    recorder = Recorder()
    plain = train(
        _config(tiny_dataset, feature_cache=False, epochs=1, augment=True),
        tmp_path / "plain",
        on_progress=recorder,
    )
    assert plain["feature_cache"] == "off" and plain["epochs_run"] == 1
    assert "features" not in recorder.phases()
    cached_model = loader.load(run_dir).keras_model
    plain_model = loader.load(tmp_path / "plain").keras_model
    assert _structure(cached_model) == _structure(plain_model)
    assert _structure(cached_model.get_layer("base")) == _structure(plain_model.get_layer("base"))
    # No augmentation layers leak into the saved model.
    assert not [layer for layer in plain_model.layers if "augment" in layer.name]


def test_augmented_views_are_cached_and_train(tiny_dataset, tmp_path, cache_dir):
    metrics = train(_config(tiny_dataset, augment=True, augmented_views=2, epochs=3), tmp_path / "aug")
    assert metrics["feature_cache"] == "computed"
    n_train = metrics["counts"]["train"]
    metas = [json.loads(p.read_text()) for p in (cache_dir / "features").glob("*/meta.json")]
    aug = [m for m in metas if m["views"] == 2]
    assert len(aug) == 1 and aug[0]["n_items"] == 90
    array = np.load(
        next(
            p.parent
            for p in (cache_dir / "features").glob("*/meta.json")
            if json.loads(p.read_text())["views"] == 2
        )
        / "features.npy",
        mmap_mode="r",
    )
    assert array.shape == (90 + 2 * n_train, 1280)
    assert not [p for p in (cache_dir / "features").iterdir() if p.name.startswith(".tmp-")]


def test_fine_tuning_runs_and_keeps_the_better_weights(tiny_dataset, tmp_path):
    recorder = Recorder()
    # The bundled file as a local weights file works at any size; 32 px keeps this quick (the
    # colours stay separable) and shares its converted base with test_jobs' resume test.
    config = _config(
        tiny_dataset,
        weights=str(registry.get_base("MobileNetV2").bundled),
        image_size=32,
        epochs=5,
        fine_tune_layers=10,
        fine_tune_epochs=1,
        fine_tune_lr=1e-5,
    )
    metrics = train(config, tmp_path / "ft", on_progress=recorder)
    assert "fine-tune" in recorder.phases()
    assert metrics["fine_tuning"].startswith(("fine-tuned", "kept pre-fine-tuning weights"))
    history = runs.read_history(tmp_path / "ft")
    assert history["phase"].tolist()[-1] == "fine-tune"
    assert (tmp_path / "ft" / "unknown.npz").is_file()  # fitted on the fine-tuned base's features
    assert not (tmp_path / "ft" / "head.npz").exists()  # cached features no longer describe its base
    assert metrics["val_accuracy"] >= 0.9
    model = loader.load(tmp_path / "ft").keras_model
    # BatchNorm statistics are unchanged by fine-tuning (inference mode), so the base still
    # matches the bundled weights there.
    reference = build.build_base("MobileNetV2", 32, "bundled")
    np.testing.assert_allclose(
        model.get_layer("base").get_layer("Conv_1_bn").moving_mean.numpy(),
        reference.get_layer("Conv_1_bn").moving_mean.numpy(),
    )


def test_from_scratch_small_cnn_trains_on_the_plain_path(tiny_dataset, tmp_path):
    recorder = Recorder()
    metrics = train(
        TrainConfig(data_dir=str(tiny_dataset), base="SmallCNN", weights="imagenet", image_size=32, epochs=2),
        tmp_path / "cnn",
        on_progress=recorder,
    )
    assert "train" in recorder.phases() and "features" not in recorder.phases()
    assert metrics["feature_cache"] == "off" and metrics["epochs_run"] == 2
    assert runs.read_run(tmp_path / "cnn").config["weights"] == "none"
    # The plain path computes the features for the unknown-photo detector from the finished model.
    detector = loader.load(tmp_path / "cnn").detector
    assert detector is not None and detector.dimensions == 256 and metrics["unknown"]["images"] > 0


def test_cancel_stops_without_saving_a_model(first_run, tiny_dataset, tmp_path, cache_dir):
    def stopper(after: int):
        calls = {"n": 0}

        def should_stop() -> bool:
            calls["n"] += 1
            return calls["n"] > after

        return should_stop

    # During head training (features cached by the first run) ...
    with pytest.raises(Cancelled):
        train(_config(tiny_dataset, epochs=50, early_stopping=0), tmp_path / "c1", should_stop=stopper(3))
    assert len(runs.read_history(tmp_path / "c1")) < 50
    assert not (tmp_path / "c1" / "model.keras").exists()
    assert (tmp_path / "c1" / "checkpoint.npz").is_file()  # kept: the run can be resumed
    # ... and during the feature pass: no half-written cache entry is left behind.
    before = sorted(p.name for p in (cache_dir / "features").iterdir())
    config = _config(tiny_dataset, augment=True, augmented_views=5, flip="vertical")
    with pytest.raises(Cancelled):
        train(config, tmp_path / "c2", should_stop=stopper(2))
    assert runs.read_history(tmp_path / "c2").empty
    assert sorted(p.name for p in (cache_dir / "features").iterdir()) == before
    assert not (tmp_path / "c2" / "model.keras").exists()


def test_bad_data_and_settings_are_user_errors(tiny_dataset, tmp_path):
    one_class = tmp_path / "one"
    shutil.copytree(tiny_dataset / "red", one_class / "red")
    with pytest.raises(UserError, match="at least 2 classes"):
        train(_config(one_class), tmp_path / "r1")
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match="bad.weights.h5 cannot be used: This is not a Keras weights file"):
        train(_config(tiny_dataset, weights=str(bad)), tmp_path / "r2")
    with pytest.raises(UserError, match="does not fit MobileNetV2"):
        train(_config(tiny_dataset, weights=str(_other_network_weights(tmp_path))), tmp_path / "r3")
    with pytest.raises(UserError, match="bundled offline weights for MobileNetV2 only"):
        _config(tiny_dataset, base="ResNet50").resolved()
    with pytest.raises(UserError, match="Optimizer"):
        _config(tiny_dataset, optimizer="adagrad").resolved()
    with pytest.raises(UserError, match="Unknown base"):
        _config(tiny_dataset, base="VGG16").resolved()


def test_config_json_round_trip_ignores_run_extras():
    config = TrainConfig(data_dir="/d", base="EfficientNetB0", lr=0.01, augment=True, fine_tune_epochs=3)
    data = {**json.loads(config.to_json()), "classes": ["a"], "name": "x", "dataset": {}}
    again = TrainConfig.from_json(json.dumps(data))
    assert again == config
    resolved = again.resolved()
    assert resolved.image_size == 224 and resolved.fine_tune_layers == 40
    with pytest.raises(UserError):
        TrainConfig.from_json("[1, 2]")


def test_the_feature_cache_can_be_measured_and_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path))
    entry = tmp_path / "features" / "abc"
    entry.mkdir(parents=True)
    (entry / "features.npy").write_bytes(b"x" * 1000)
    assert features.feature_cache_bytes() == 1000
    assert features.clear_feature_cache() == 1000
    assert features.feature_cache_bytes() == 0 and (tmp_path / "features").is_dir()


def test_estimates_are_positive_and_cache_aware():
    config = TrainConfig(data_dir="/d", weights="bundled")
    counts = {"train": 700, "validation": 150, "test": 150}
    cold = estimate.estimate_seconds(config, counts)
    warm = estimate.estimate_seconds(config, counts, cached=True)
    assert 0 < warm < cold
    assert (
        estimate.estimate_seconds(TrainConfig(data_dir="/d", weights="bundled", fine_tune_epochs=3), counts)
        > cold
    )


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _other_network_weights(folder: Path) -> Path:
    """A genuine Keras weights file, saved from a small network that is not MobileNetV2."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    path = folder / "other.weights.h5"
    model.save_weights(str(path))
    return path


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_CACHE_DIR": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "lib", "train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_trains_and_prints_json_last(tiny_dataset, tmp_path, cache_dir):
    result = _cli(
        "--data",
        str(tiny_dataset),
        "--weights",
        "bundled",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--runs-dir",
        str(tmp_path / "models"),
        cache=cache_dir,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"run_id", "run_dir", "val_accuracy", "test_accuracy", "epochs_run", "train_seconds"} <= set(
        summary
    )
    assert summary["epochs_run"] == 3 and summary["run_dir"].startswith(str(tmp_path / "models"))
    assert runs.read_status(summary["run_dir"])["state"] == "finished"
    assert "epoch 3/3" in result.stderr  # the progress bar


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/no/such/folder"], "not found"),
        (["--base", "VGG16"], "Unknown base model"),
        (["--weights", "/no/such.weights.h5"], "does not exist"),
        (["--epochs", "0"], "Epochs"),
        (["--optimizer", "adagrad"], "Optimizer"),
        (["--weights", "bundled", "--base", "EfficientNetB0"], "bundled offline weights"),
        (["--bogus"], "unrecognized arguments"),
        (["--epochs", "many"], "invalid int value"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tiny_dataset, tmp_path, cache_dir, args, message):
    if "--data" not in args:
        args = ["--data", str(tiny_dataset), *args]
    result = _cli(*args, "--runs-dir", str(tmp_path / "models"), cache=cache_dir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_cli_failure_in_training_marks_the_run_failed(tiny_dataset, tmp_path, cache_dir):
    bad = _other_network_weights(tmp_path)
    result = _cli(
        "--data", str(tiny_dataset), "--weights", str(bad), "--runs-dir", str(tmp_path / "m"), cache=cache_dir
    )
    assert result.returncode == 2
    assert "does not fit MobileNetV2" in result.stderr.strip().splitlines()[-1]
    (run,) = list((tmp_path / "m").iterdir())
    status = runs.read_status(run)
    assert status["state"] == "failed" and "does not fit" in status["reason"]


@pytest.mark.parametrize("feature_cache", [True, False])
def test_an_image_that_breaks_after_the_scan_fails_with_its_name(tiny_dataset, tmp_path, feature_cache):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    load_scan(data)  # scanned while every file was fine ...
    victim = sorted((data / "red").iterdir())[0]
    before = victim.stat()
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (before.st_size - 8))  # ... then broken, same size
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # and time: the stored scan is reused
    config = _config(
        data, epochs=2, feature_cache=feature_cache, augment=True, flip="vertical", augmented_views=1
    )
    with pytest.raises(ImageError) as err:
        train(config, tmp_path / "broken")
    assert (
        err.value.path == str(victim) and victim.name in str(err.value) and "Traceback" not in str(err.value)
    )
