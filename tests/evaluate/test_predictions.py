"""lib.evaluate.predictions: stored predictions on tiny hand-made runs, splits and folders, class
checks, read-only and copied runs, the shipped demo, the evaluate CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import runs
from lib.errors import UserError
from lib.evaluate import predictions as ev
from lib.evaluate.report import write_report
from lib.models import loader
from tests.conftest import share_converted_models
from tests.evaluate.conftest import _colour, _image

ROOT = Path(__file__).resolve().parents[2]


def _expected(df: pd.DataFrame, truth: dict) -> list[str]:
    return [truth.get(p, Path(p).parent.name) for p in df["path"]]


def test_predict_split_three_classes_and_cache(world, model_calls):
    run = world["run3"]
    df = ev.predict_split(run, split="test")
    classes = ["red", "green", "blue"]
    assert list(df.columns) == ["path", "split", "actual", "predicted", "confidence"] + [
        f"prob_{c}" for c in classes
    ] + ["correct"]
    assert len(df) == 10 and set(df["split"]) == {"test"}
    assert df["predicted"].tolist() == _expected(df, world["truth3"])
    assert df["correct"].sum() == 9
    np.testing.assert_allclose(df[[f"prob_{c}" for c in classes]].sum(axis=1), 1.0, atol=1e-5)
    assert (df["confidence"] > 0.8).all()
    assert model_calls["batches"] == 1  # 10 images, one padded batch
    stored = list((run / "predictions").glob("test-*"))
    assert len(stored) == 1

    # A second call reads the stored predictions: the model does not run again.
    again = ev.predict_split(run, split="test")
    assert model_calls["batches"] == 1
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True), check_dtype=False)

    result = ev.evaluate(run, split="test")
    assert model_calls["batches"] == 1
    m = result.metrics
    assert m["n_images"] == 10 and m["accuracy"] == pytest.approx(0.9)
    assert m["most_missed"][0]["text"] == "red predicted as blue: 1"
    assert m["confusion_matrix"] == [[3, 0, 1], [0, 3, 0], [0, 0, 3]]

    # A changed dataset is predicted again.
    _image(world["rgb"] / "test" / "green" / "extra.png", _colour("green"), 999)
    try:
        assert len(ev.predict_split(run, split="test")) == 11
        assert model_calls["batches"] == 2
        newer = list((run / "predictions").glob("test-*"))
        assert len(newer) == 1 and newer != stored  # the outdated file was replaced
    finally:
        (world["rgb"] / "test" / "green" / "extra.png").unlink()


def test_predict_two_classes_all_splits_and_class_order(world):
    df = ev.predict_split(world["run2"], split="all")
    assert len(df) == 13 and set(df["split"]) == {"train", "validation", "test"}
    assert list(df.columns)[5:7] == ["prob_blue", "prob_red"]  # run's class order
    wrong = df[~df["correct"]]
    assert len(wrong) == 1 and wrong.iloc[0]["actual"] == "blue" and wrong.iloc[0]["predicted"] == "red"
    m = ev.evaluate(world["run2"], split="validation").metrics
    assert m["classes"] == ["blue", "red"] and m["confusion_matrix"] == [[2, 1], [0, 2]]


def test_class_mismatch_is_refused(world):
    with pytest.raises(UserError, match="blue") as info:
        ev.predict_split(world["run2"], data_dir=world["rgb"], split="test")
    assert "green" in str(info.value)
    with pytest.raises(UserError, match="Unknown split"):
        ev.predict_split(world["run2"], split="nonsense")
    with pytest.raises(UserError, match="does not exist"):
        ev.predict_split(world["base"] / "nope", split="test")


def test_folder_with_a_subset_of_classes(world, tmp_path):
    folder = tmp_path / "new_photos"
    _image(folder / "red" / "a.png", _colour("red"), 1)
    _image(folder / "red" / "b.png", _colour("green"), 2)
    _image(folder / "green" / "c.png", _colour("green"), 3)
    df = ev.predict_split(world["run3"], split=str(folder))
    assert sorted(df["predicted"]) == ["green", "green", "red"] and set(df["split"]) == {"folder"}
    m = ev.evaluate(world["run3"], split=str(folder)).metrics
    assert m["per_class"]["blue"]["support"] == 0 and m["accuracy"] == pytest.approx(2 / 3)
    _image(folder / "purple" / "d.png", _colour("blue"), 4)
    with pytest.raises(UserError, match="purple"):
        ev.predict_split(world["run3"], split=str(folder))


def test_read_only_and_copied_run(world, tmp_path, monkeypatch, model_calls):
    copy = tmp_path / "copied_run"
    shutil.copytree(world["run2"], copy, ignore=shutil.ignore_patterns("predictions", "report.*"))
    cfg = json.loads((copy / "config.json").read_text())
    cfg["data_dir"] = "/somewhere/else/beans"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="--data"):
        ev.predict_split(copy, split="test")
    broken = tmp_path / "broken_run"
    shutil.copytree(copy, broken)
    (broken / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot be (loaded|used)"):
        ev.predict_split(broken, data_dir=world["rb"], split="test")
    (broken / "model.keras").unlink()
    (broken / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(UserError, match="no saved model.*interrupted"):
        ev.predict_split(broken, data_dir=world["rb"], split="test")

    # Root can write anywhere, so read-only is simulated at the one place that decides it.
    monkeypatch.setattr(runs.Run, "writable", property(lambda self: False))
    before = sorted(p.name for p in copy.iterdir())
    result = ev.evaluate(copy, data_dir=world["rb"], split="test")
    assert result.metrics["accuracy"] == 1.0
    cache = Path(os.environ["STUDIO_CACHE_DIR"]) / "predictions"
    assert result.predictions_file is not None and cache in result.predictions_file.parents
    paths = write_report(result)
    assert cache.parent / "reports" in paths["html"].parents and paths["markdown"].is_file()
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing written into the run
    batches = model_calls["batches"]
    ev.predict_split(copy, data_dir=world["rb"], split="test")
    assert model_calls["batches"] == batches


def test_model_summary(world):
    s = loader.load(world["run3"]).summary()
    assert s["parameters"] == 3 * 3 + 3 and s["trainable_parameters"] == 12
    assert s["top_level_layers"] == 5 and s["size_bytes"] == (world["run3"] / "model.keras").stat().st_size


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_CACHE_DIR": str(tmp_path / "cli-cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "lib", "evaluate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_json_last_and_exit_codes(world, tmp_path):
    run = world["run3"]
    ok = _cli("--run", str(run), "--split", "validation", tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout.strip().splitlines()[-1])
    assert out["accuracy"] == 1.0 and out["n_images"] == 9 and out["classes"] == ["red", "green", "blue"]
    assert out["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert out["per_class"]["red"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}
    assert Path(out["report"]["html"]).is_file() and Path(out["report"]["markdown"]).is_file()

    for args, needle in (
        (["--run", str(world["base"] / "missing")], "does not exist"),
        (["--run", str(run), "--split", "bogus"], "Unknown split"),
        (["--run", str(run), "--data", str(world["rb"])], "green"),
        (["--run", str(world["rgb"])], "no config.json"),
    ):
        bad = _cli(*args, tmp_path=tmp_path)
        assert bad.returncode == 2, (args, bad.stderr)
        assert needle in bad.stderr and "Traceback" not in bad.stderr


def test_the_shipped_demo_evaluates_from_any_working_folder(tmp_path, monkeypatch, converted_models):
    """The demo records its dataset as "data/sample" (relative to the repository), and is read-only."""
    from lib import settings

    demo = settings.demo_run_dir()
    assert demo is not None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(tmp_path / "cache", converted_models)))
    before = sorted(p.name for p in demo.iterdir())
    df = ev.predict_split(demo, split="test")
    assert len(df) == 45 and df["correct"].mean() > 0.6
    assert sorted(p.name for p in demo.iterdir()) == before, "nothing is written into demo/"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _formula_cells(data: bytes) -> list[str]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    return [cell for row in rows for cell in row if cell.startswith(FORMULA_START)]


@pytest.mark.parametrize("relative", [True, False])
def test_predictions_csv_neutralizes_formulas_in_cells_and_headers(tmp_path, relative):
    evil_class, evil_file = '=HYPERLINK("http://e.invalid","x")', "+cmd|' /C calc'!A0.png"
    classes = [evil_class, "@SUM(1+1)"]
    df = pd.DataFrame(
        {
            "path": [str(tmp_path / "data" / "-sub" / evil_file)],
            "split": ["test"],
            "actual": [evil_class],
            "predicted": ["@SUM(1+1)"],
            "confidence": [0.8],
            f"prob_{evil_class}": [0.2],
            "prob_@SUM(1+1)": [0.8],
            "correct": [False],
        }
    )
    data = ev.predictions_csv(df, classes, root=tmp_path / "data" if relative else None)
    assert _formula_cells(data) == []
    text = data.decode("utf-8")
    assert "'=HYPERLINK" in text and "'@SUM" in text
    assert ("'-sub/+cmd" if relative else str(tmp_path)) in text
    if relative:
        assert str(tmp_path) not in text  # no server paths when the root is given (hosted)


def test_calibrated_rows_show_the_temperature_like_predict():
    from lib.models import unknown

    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.34, 0.33, 0.33]])
    classes = ["a", "b", "c"]
    df = pd.DataFrame({"path": ["x/1.png", "x/2.png", "x/3.png"], "split": "test", "actual": ["a", "a", "c"]})
    df["predicted"] = [classes[i] for i in probs.argmax(1)]
    df["confidence"] = probs.max(1)
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, j]
    df["correct"] = df["actual"] == df["predicted"]
    shown = ev.calibrated_predictions(df, classes, 0.5)  # T < 1 sharpens
    want = unknown.calibrate(probs, 0.5)
    assert np.allclose(shown[[f"prob_{c}" for c in classes]].to_numpy(), want)
    assert np.allclose(shown["confidence"], want.max(1)) and (shown["confidence"] > df["confidence"]).all()
    assert np.allclose(shown["model_confidence"], df["confidence"])
    assert shown["predicted"].tolist() == df["predicted"].tolist() and "model_confidence" not in df
    # The confidence filter and the most-confident-mistakes order use the calibrated numbers.
    assert len(ev.filter_predictions(shown, confidence=(0.8, 1.0))) == 1
    text = ev.predictions_csv(shown, classes).decode()
    assert text.splitlines()[0].startswith("path,split,actual,predicted,confidence,model_confidence,correct")
    for t in (None, 1.0):
        same = ev.calibrated_predictions(df, classes, t)
        assert same.equals(df) and same is not df


def test_evaluate_returns_the_calibrated_rows_of_the_shipped_demo(tmp_path, monkeypatch, converted_models):
    from lib import settings
    from lib.models import unknown

    demo = settings.demo_run_dir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(tmp_path / "cache", converted_models)))
    detector = unknown.load(demo / unknown.FILE_NAME)
    assert (
        detector is not None and detector.temperature != 1.0
    )  # out-of-fold temperature (31 validation images)
    result = ev.evaluate(demo, split="test")
    stored = ev.predict_split(demo, split="test")
    classes = result.classes
    raw = stored[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(result.predictions["confidence"], detector.calibrated(raw).max(1))
    assert np.allclose(result.predictions["model_confidence"], stored["confidence"])
    assert result.metrics["calibration"]["ece_before"] == round(
        unknown.ece(raw, [classes.index(a) for a in stored["actual"]]), 4
    )


@pytest.fixture
def trained_home(sample_run, tmp_path, monkeypatch):
    """A private copy of the sample run with the cache it was trained with (features, scan)."""
    home = tmp_path / "home"
    shutil.copytree(sample_run.parent.parent, home, symlinks=True)
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(home / "cache"))
    run = home / "models" / sample_run.name
    shutil.rmtree(run / "predictions", ignore_errors=True)
    return run


@pytest.fixture
def images_run(monkeypatch):
    """How many images every loaded model has been given."""
    seen = {"images": 0}
    for name in ("predict", "predict_with_features"):
        original = getattr(loader.LoadedModel, name)

        def counted(self, pixels, original=original):
            seen["images"] += len(pixels)
            return original(self, pixels)

        monkeypatch.setattr(loader.LoadedModel, name, counted)
    return seen


def _probs(df: pd.DataFrame) -> np.ndarray:
    return df[[c for c in df.columns if c.startswith("prob_")]].to_numpy()


def test_a_trained_run_is_scored_from_the_features_training_cached(trained_home, images_run):
    from lib.models import head as dense_head
    from lib.train import features

    run = trained_home
    assert (run / "head.npz").is_file()
    cached = ev.predict_split(run, split="test")
    n = len(cached)
    assert n > ev.CHECKED_IMAGES
    assert images_run["images"] == ev.CHECKED_IMAGES  # only the check: no other image decoded or run
    assert "unknown_score" in cached.columns and cached["unknown_score"].notna().all()

    # The same rows as the model on every image (what happens without head.npz).
    saved_head = (run / "head.npz").read_bytes()
    (run / "head.npz").unlink()
    shutil.rmtree(run / "predictions")
    full = ev.predict_split(run, split="test")
    assert images_run["images"] >= ev.CHECKED_IMAGES + n
    assert full["path"].tolist() == cached["path"].tolist()
    assert full["predicted"].tolist() == cached["predicted"].tolist()
    np.testing.assert_allclose(_probs(cached), _probs(full), atol=ev.CACHED_TOLERANCE)
    np.testing.assert_allclose(cached["unknown_score"], full["unknown_score"], rtol=0.02, atol=0.05)

    # A head that disagrees with the model on the checked images (forced here) is not trusted.
    (run / "head.npz").write_bytes(saved_head)
    head = dense_head.load(run / "head.npz")
    kernel, bias, activation = head.layers[-1]
    wrong = dense_head.DenseHead(
        [*head.layers[:-1], (kernel[:, ::-1].copy(), bias, activation)], head.model_sha256
    )
    wrong.save(run / "head.npz")
    shutil.rmtree(run / "predictions")
    before = images_run["images"]
    again = ev.predict_split(run, split="test")
    assert images_run["images"] - before >= ev.CHECKED_IMAGES + n
    np.testing.assert_allclose(_probs(again), _probs(full), atol=1e-6)

    # Features no longer cached (evicted): the images go through the model.
    (run / "head.npz").write_bytes(saved_head)
    assert features.clear_feature_cache() > 0
    shutil.rmtree(run / "predictions")
    before = images_run["images"]
    ev.predict_split(run, split="test")
    assert images_run["images"] - before >= n


def test_a_head_file_of_another_model_is_not_used(trained_home, images_run):
    from lib.models import head as dense_head

    run = trained_home
    head = dense_head.load(run / "head.npz")
    dense_head.DenseHead(head.layers, "0" * 64).save(run / "head.npz")
    n = len(ev.predict_split(run, split="test"))
    assert images_run["images"] >= n
