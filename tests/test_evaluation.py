"""Evaluation: metrics against hand-computed cases, cached predictions on tiny runs, report escaping, CLI.

The runs here are built by hand: a keras model whose Dense weights make it predict the dominant
colour channel, so every prediction is known in advance without training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib import evaluation as ev
from lib.errors import UserError
from lib.report import md_escape, render_html, render_markdown, write_report

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = {"red": 0, "green": 1, "blue": 2}
SIZE = 32


# ---------------------------------------------------------------------------------------------
# Metrics (pure numpy/pandas)
# ---------------------------------------------------------------------------------------------

ACTUAL = ["cat", "cat", "cat", "dog", "dog", "bird"]
PREDICTED = ["cat", "dog", "cat", "dog", "cat", "dog"]
CLASSES = ["cat", "dog", "bird"]


def test_confusion_matrix_rows_are_actual_in_class_order():
    cm = ev.confusion_matrix(ACTUAL, PREDICTED, CLASSES)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    norm = ev.normalize_rows(cm)
    np.testing.assert_allclose(norm, [[2 / 3, 1 / 3, 0], [0.5, 0.5, 0], [0, 1, 0]])
    assert ev.normalize_rows(np.zeros((2, 2))).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError):
        ev.confusion_matrix(["cat"], ["cow"], CLASSES)


def test_metrics_hand_computed_with_a_class_never_predicted():
    m = ev.compute_metrics(ACTUAL, PREDICTED, CLASSES)
    assert m["n_images"] == 6 and m["correct"] == 3 and m["incorrect"] == 3
    assert m["accuracy"] == pytest.approx(0.5)
    pc = m["per_class"]
    assert pc["cat"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert pc["dog"] == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4, "support": 2})
    # bird is never predicted: precision 0 by convention, not NaN
    assert pc["bird"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_avg"] == pytest.approx({"precision": 1 / 3, "recall": 7 / 18, "f1": (2 / 3 + 0.4) / 3})
    assert m["weighted_avg"] == pytest.approx({"precision": 8 / 18, "recall": 0.5, "f1": 2.8 / 6})
    assert m["majority_baseline"] == {"class": "cat", "accuracy": 0.5}
    assert m["top_k_accuracy"] == {}
    json.dumps(m)  # JSON-ready, no numpy types
    flat = [v for c in pc.values() for v in c.values()] + list(m["macro_avg"].values())
    assert all(math.isfinite(v) for v in flat)


def test_one_class_split():
    m = ev.compute_metrics(["cat", "cat", "cat"], ["cat", "cat", "dog"], ["cat", "dog"])
    assert m["confusion_matrix"] == [[2, 1], [0, 0]]
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert m["per_class"]["dog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["majority_baseline"] == {"class": "cat", "accuracy": 1.0}
    assert m["confusion_matrix_normalized"][1] == [0.0, 0.0]
    # all correct: the absent class is left out of the macro average
    perfect = ev.compute_metrics(["cat"] * 4, ["cat"] * 4, ["cat", "dog"])
    assert perfect["accuracy"] == 1.0 and perfect["macro_avg"]["f1"] == 1.0
    empty = ev.compute_metrics([], [], ["cat", "dog"])
    assert empty["accuracy"] == 0.0 and empty["majority_baseline"]["class"] is None


def test_most_missed_pairs_sorted_by_count():
    actual = ["Cat"] * 14 + ["Dog"] * 5 + ["Fox"] * 3
    predicted = ["Dog"] * 12 + ["Cat"] * 2 + ["Fox"] * 3 + ["Dog"] * 2 + ["Cat"] * 3
    pairs = ev.most_missed(
        ev.confusion_matrix(actual, predicted, ["Cat", "Dog", "Fox"]), ["Cat", "Dog", "Fox"]
    )
    assert [p["text"] for p in pairs] == [
        "Cat predicted as Dog: 12",
        "Dog predicted as Fox: 3",
        "Fox predicted as Cat: 3",
    ]
    assert ev.most_missed(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def test_top_k_accuracy_and_majority_baseline():
    probs = np.array(
        [
            [0.5, 0.3, 0.1, 0.1],  # actual 1: second -> top-2 yes, top-1 no
            [0.1, 0.2, 0.3, 0.4],  # actual 0: last -> top-3 no
            [0.7, 0.1, 0.1, 0.1],  # actual 0: top-1 yes
        ]
    )
    actual = [1, 0, 0]
    assert ev.top_k_accuracy(probs, actual, 1) == pytest.approx(1 / 3)
    assert ev.top_k_accuracy(probs, actual, 2) == pytest.approx(2 / 3)
    assert ev.top_k_accuracy(probs, actual, 3) == pytest.approx(2 / 3)
    assert ev.top_k_accuracy(probs, actual, 4) == pytest.approx(1.0)
    assert ev.top_k_values(3) == [] and ev.top_k_values(4) == [3] and ev.top_k_values(6) == [3, 5]
    m = ev.compute_metrics(["b", "a", "a"], ["a", "d", "a"], ["a", "b", "c", "d"], probs)
    assert m["top_k_accuracy"] == {"3": pytest.approx(2 / 3)}
    # ties go to the first class in class order
    assert ev.majority_baseline(["b", "a", "b", "a"], ["a", "b"]) == {"class": "a", "accuracy": 0.5}


def test_compare_runs_lists_images_whose_verdict_differs():
    base = {"path": ["p1", "p2", "p3"], "actual": ["a", "a", "b"]}
    r1 = pd.DataFrame({**base, "predicted": ["a", "b", "b"], "confidence": [0.9, 0.6, 0.8]})
    r2 = pd.DataFrame({**base, "predicted": ["a", "a", "a"], "confidence": [0.9, 0.7, 0.5]})
    for df in (r1, r2):
        df["correct"] = df["actual"] == df["predicted"]
    table, diff = ev.compare_runs({"run1": r1, "run2": r2})
    assert table.set_index("run")["accuracy"].to_dict() == pytest.approx({"run1": 2 / 3, "run2": 2 / 3})
    assert diff["path"].tolist() == ["p2", "p3"]
    assert diff["predicted_run1"].tolist() == ["b", "b"] and diff["correct_run2"].tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# Tiny runs and datasets
# ---------------------------------------------------------------------------------------------


def _image(path: Path, rgb: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.integers(-20, 21, (40, 48, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _colour(name: str) -> tuple[int, int, int]:
    rgb = [40, 40, 40]
    rgb[CHANNEL[name]] = 210
    return tuple(rgb)  # type: ignore[return-value]


def make_dataset(root: Path, classes: list[str], per_split: int = 3, mislabel: dict | None = None) -> dict:
    """DIR/<split>/<class>/*.png of solid noisy colours; `mislabel` puts {split: (folder, colour)} extras."""
    seed = 0
    for split in ("train", "validation", "test"):
        for cls in classes:
            for i in range(per_split):
                seed += 1
                _image(root / split / cls / f"{cls}_{i}.png", _colour(cls), seed)
    truth = {}
    for split, (folder, colour) in (mislabel or {}).items():
        seed += 1
        path = root / split / folder / f"odd_{colour}.png"
        _image(path, _colour(colour), seed)
        truth[str(path)] = colour
    return truth


def make_run(run_dir: Path, classes: list[str], data_dir: Path | None) -> Path:
    """A run folder whose model predicts the dominant colour channel (known predictions, no training)."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Resizing(SIZE, SIZE)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    w = np.zeros((3, len(classes)), dtype=np.float32)
    for j, c in enumerate(classes):
        w[CHANNEL[c], j] = 12.0
    model.layers[-1].set_weights([w, np.zeros(len(classes), dtype=np.float32)])
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    config = {
        "classes": classes,
        "image_size": SIZE,
        "base": "tiny",
        "data_dir": str(data_dir) if data_dir else None,
        "epochs": 0,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "finished"}))
    (run_dir / "history.csv").write_text("epoch,phase,loss,accuracy,val_loss,val_accuracy\n")
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "notes.md").write_text("Hand-made <i>tiny</i> run.\n")
    return run_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 3-class and a 2-class dataset and one run for each (built once: keras start-up is slow)."""
    base = tmp_path_factory.mktemp("eval")
    rgb = base / "rgb"
    truth3 = make_dataset(rgb, ["red", "green", "blue"], mislabel={"test": ("red", "blue")})
    rb = base / "rb"
    make_dataset(rb, ["red", "blue"], per_split=2, mislabel={"validation": ("blue", "red")})
    return {
        "rgb": rgb,
        "truth3": truth3,
        "rb": rb,
        "run3": make_run(base / "runs" / "run3", ["red", "green", "blue"], rgb),
        "run2": make_run(base / "runs" / "run2", ["blue", "red"], rb),  # class order differs from folders
        "base": base,
    }


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def _expected(df: pd.DataFrame, truth: dict) -> list[str]:
    return [truth.get(p, Path(p).parent.name) for p in df["path"]]


def test_predict_split_three_classes_and_cache(world):
    run = world["run3"]
    before = dict(ev.STATS)
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
    assert ev.STATS["model_batches"] == before["model_batches"] + 1  # 10 images, one padded batch
    stored = list((run / "predictions").glob("test-*"))
    assert len(stored) == 1

    # A second call reads the stored predictions: the model does not run again.
    batches = ev.STATS["model_batches"]
    again = ev.predict_split(run, split="test")
    assert ev.STATS["model_batches"] == batches
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True), check_dtype=False)

    result = ev.evaluate(run, split="test")
    assert ev.STATS["model_batches"] == batches
    m = result.metrics
    assert m["n_images"] == 10 and m["accuracy"] == pytest.approx(0.9)
    assert m["most_missed"][0]["text"] == "red predicted as blue: 1"
    assert m["confusion_matrix"] == [[3, 0, 1], [0, 3, 0], [0, 0, 3]]

    # A changed dataset is predicted again.
    _image(world["rgb"] / "test" / "green" / "extra.png", _colour("green"), 999)
    try:
        assert len(ev.predict_split(run, split="test")) == 11
        assert ev.STATS["model_batches"] == batches + 1
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


def test_read_only_and_copied_run(world, tmp_path, monkeypatch):
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
    with pytest.raises(UserError, match="no saved model.*running"):
        ev.predict_split(broken, data_dir=world["rb"], split="test")

    # Root can write anywhere, so read-only is simulated at the one place that decides it.
    monkeypatch.setattr(ev, "_writable_dir_no_create", lambda path: False)
    before = sorted(p.name for p in copy.iterdir())
    result = ev.evaluate(copy, data_dir=world["rb"], split="test")
    assert result.metrics["accuracy"] == 1.0
    cache = Path(os.environ["STUDIO_CACHE_DIR"]) / "predictions"
    assert result.predictions_file is not None and cache in result.predictions_file.parents
    paths = write_report(result)
    assert cache in paths["html"].parents and paths["markdown"].is_file()
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing written into the run
    batches = ev.STATS["model_batches"]
    ev.predict_split(copy, data_dir=world["rb"], split="test")
    assert ev.STATS["model_batches"] == batches


def test_model_summary(world):
    s = ev.model_summary(world["run3"])
    assert s["parameters"] == 3 * 3 + 3 and s["trainable_parameters"] == 12
    assert s["top_level_layers"] == 5 and s["size_bytes"] == (world["run3"] / "model.keras").stat().st_size


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

EVIL_CLASSES = ["<b>x</b>", "![x](http://e/x.png)"]


def _evil_result(tmp_path: Path) -> ev.EvaluationResult:
    img = tmp_path / "![y](http:e.png) <script>.png"
    _image(img, (200, 30, 30), 5)
    paths = [str(img), str(tmp_path / "gone <img src=x onerror=alert(1)>.png"), str(tmp_path / "ok.png")]
    actual = [EVIL_CLASSES[0], EVIL_CLASSES[0], EVIL_CLASSES[1]]
    predicted = [EVIL_CLASSES[1], EVIL_CLASSES[1], EVIL_CLASSES[1]]
    df = pd.DataFrame({"path": paths, "split": "test", "actual": actual, "predicted": predicted})
    df["confidence"] = [0.9, 0.7, 0.8]
    df[f"prob_{EVIL_CLASSES[0]}"] = [0.1, 0.3, 0.2]
    df[f"prob_{EVIL_CLASSES[1]}"] = [0.9, 0.7, 0.8]
    df["correct"] = df["actual"] == df["predicted"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return ev.EvaluationResult(
        predictions=df,
        metrics=ev.metrics_from_predictions(df, EVIL_CLASSES),
        classes=EVIL_CLASSES,
        run_dir=run_dir,
        split="test",
        config={"base": "<i>base</i>", "image_size": 32},
    )


def test_report_escapes_user_text(tmp_path):
    result = _evil_result(tmp_path)
    page = render_html(result)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "<img src=x" not in page and "<i>base</i>" not in page
    assert page.count('src="data:image/jpeg;base64,') == 1  # the readable mistake has a thumbnail
    assert "http://e/x.png" in page and 'src="http' not in page
    assert "predicted as" in page and "width:90.0%" in page  # probability bars

    md = render_markdown(result)
    assert "![" not in md and "](http" not in md and "<b>" not in md and "<script>" not in md
    assert md_escape("![x](http://e/x.png)") == r"\!\[x\]\(http://e/x.png\)"
    assert md_escape("a|b\nc") == r"a\|b c" and md_escape("1. x") == r"1\. x" and md_escape("# x") == r"\# x"
    assert "\\<b\\>x\\</b\\> predicted as \\!\\[x\\]" in md
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<b>x" not in rendered and "<script" not in rendered
    assert "&lt;b&gt;x&lt;/b&gt; predicted as ![x](http://e/x.png)" in rendered
    assert rendered.count("<table>") == 4  # summary, matrix, per class, mistakes: no cell broke out


def test_report_written_next_to_run(world):
    result = ev.evaluate(world["run3"], split="test")
    paths = write_report(result)
    assert paths == {"html": world["run3"] / "report.html", "markdown": world["run3"] / "report.md"}
    text = paths["html"].read_text()
    assert "Most confident mistakes" in text and "odd_blue.png" in text and "90.0%" in text
    assert "red predicted as blue: 1" in paths["markdown"].read_text()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


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


def test_the_shipped_demo_evaluates_from_any_working_folder(tmp_path, monkeypatch):
    """The demo records its dataset as "data/sample" (relative to the repository), and is read-only."""
    from lib import settings

    demo = settings.demo_run_dir()
    assert demo is not None
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    before = sorted(p.name for p in demo.iterdir())
    df = ev.predict_split(demo, split="test")
    assert len(df) == 45 and df["correct"].mean() > 0.6
    assert sorted(p.name for p in demo.iterdir()) == before, "nothing is written into demo/"
