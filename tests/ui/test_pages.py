"""AppTest: every page renders without an exception, with and without a dataset chosen."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import share_converted_models

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["pages/1_Dataset.py", "pages/2_Train.py", "pages/3_Evaluate.py", "pages/4_Predict.py"]


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch, converted_models):
    monkeypatch.setenv("STUDIO_RUNS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(tmp_path / "cache", converted_models)))
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(tmp_path / "no-demo"))  # tests opt in to the demo model


def _run(script: str, dataset: Path | None = None, timeout: float = 120) -> AppTest:
    """Open the app at its home page (so page links resolve), then go to `script` like a user."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=timeout)
    if dataset is not None:
        at.session_state["dataset_dir"] = str(dataset)
    at.run()
    if script != "streamlit_app.py":
        at.switch_page(script)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.info] + [m.value for m in at.success]
    parts += [m.value for m in at.warning] + [m.value for m in at.error] + [m.value for m in at.caption]
    return "\n".join(str(p) for p in parts)


def test_home_page_links_the_four_steps_in_order():
    at = _run("streamlit_app.py")
    assert "Image classifier studio" in at.title[0].value
    labels = [link.proto.label for link in at.main.get("page_link")]
    assert labels == ["1 · Dataset", "2 · Train", "3 · Evaluate", "4 · Predict"]
    nav = [link.proto.label for link in at.sidebar.get("page_link")]
    assert nav == ["Home", "1 · Dataset", "Data doctor", "2 · Train", "3 · Evaluate", "4 · Predict"]


@pytest.mark.parametrize("script", PAGES)
def test_pages_render_without_a_dataset(script):
    at = _run(script)
    assert at.info or at.warning, "a friendly empty state tells the user what to do"


def test_dataset_page_with_the_sample(tmp_path):
    from lib.data import sources as datasets

    at = _run("pages/1_Dataset.py", datasets.sample_dataset_dir())
    text = _text(at)
    assert "usable images" in text
    assert "would be right" in text  # the majority-class baseline sentence
    assert "Angular leaf spot" in text and "Bean rust" in text and "Healthy" in text
    assert "No problems found" in text


def test_dataset_page_escapes_user_file_and_class_names(tmp_path, make_image):
    root = tmp_path / "data"
    for cls in ("![x](http://e.invalid/x.png)", "plain"):
        for i in range(3):
            make_image(
                root / cls / f"<b>{i}<i>.png", (i * 40, 100, 200 if cls == "plain" else 0), seed=i + len(cls)
            )
    at = _run("pages/1_Dataset.py", root)
    for md in at.markdown:
        assert "![x](http" not in md.value, md.value
    captions = [c for img in at.get("image") for c in img.captions if c]
    assert captions, "sample images are shown with their file names"
    for caption in captions:
        assert "<b>" not in caption and "\\<b\\>" in caption, caption


def test_dataset_page_reports_a_broken_file(tmp_path, make_image):
    root = tmp_path / "data"
    for cls in ("cats", "dogs"):
        for i in range(4):
            make_image(
                root / cls / f"{i}.png", (i * 50, 80, 120 if cls == "cats" else 10), seed=i + len(cls) * 7
            )
    (root / "cats" / "broken.jpg").write_bytes(b"this is not a jpeg")
    at = _run("pages/1_Dataset.py", root)
    assert "problem" in _text(at)
    table = at.dataframe[0].value
    assert table.astype(str).apply(lambda col: col.str.contains("broken.jpg")).any().any()


def _with_run(sample_run, tmp_path) -> Path:
    import shutil

    runs_dir = tmp_path / "models"
    shutil.copytree(sample_run, runs_dir / sample_run.name)
    return runs_dir / sample_run.name


def test_train_page_with_the_sample_shows_an_estimate_and_the_runs(sample_run, tmp_path):
    from lib.data import sources as datasets

    _with_run(sample_run, tmp_path)
    at = _run("pages/2_Train.py", datasets.sample_dataset_dir())
    text = _text(at)
    assert "Estimated time: **about" in text
    assert at.dataframe, "the runs table is shown"
    assert sample_run.name in at.dataframe[-1].value["run"].tolist()


def test_evaluate_page_for_a_finished_run(sample_run, tmp_path):
    _with_run(sample_run, tmp_path)
    at = _run("pages/3_Evaluate.py")
    assert [m.label for m in at.metric][:4] == ["Images", "Correct", "Incorrect", "Accuracy"]
    assert at.metric[0].value == "45"  # the sample's test split
    table = at.dataframe[1].value  # [0] per-class, [1] predictions
    assert len(table) == 45 and {"file", "actual", "predicted", "confidence"} <= set(table.columns)
    # filtering to incorrect rows only
    at.radio(key="f_correct").set_value("incorrect").run()
    wrong = int(at.metric[2].value)
    assert len(at.dataframe[1].value) == wrong


def test_dataset_page_augmentation_preview_shows_nine_variations():
    from lib.data import sources as datasets

    at = _run("pages/1_Dataset.py", datasets.sample_dataset_dir())
    before = len(at.get("image"))
    at.toggle(key="aug_show").set_value(True).run()
    assert not at.exception
    assert len(at.get("image")) == before + 9


def test_dataset_page_folder_source_with_a_bad_path_says_so(tmp_path):
    at = _run("pages/1_Dataset.py")
    at.radio(key="dataset_source").set_value("folder").run()
    at.text_input[0].set_value(str(tmp_path / "nowhere")).run()
    at.button[0].click().run()
    assert not at.exception
    assert at.error and "nowhere" in at.error[0].value


def test_predict_page_preselects_your_best_run_over_the_demo(sample_run, tmp_path, monkeypatch):
    from lib import settings

    monkeypatch.setenv("STUDIO_DEMO_DIR", str(settings.ROOT / "demo"))
    _with_run(sample_run, tmp_path)
    at = _run("pages/4_Predict.py")
    picker = at.selectbox(key="p_run")
    assert any("Demo" in o for o in picker.options)
    assert sample_run.name in str(picker.value)
    assert "This model knows 3 kinds" in _text(at)


def test_augmentation_set_on_the_dataset_page_is_what_the_next_run_uses(tmp_path):
    """The preview's settings are the Train page's settings, and the started run records them."""
    import time

    from lib import runs
    from lib.data import sources
    from lib.train import jobs

    at = _run("pages/1_Dataset.py", sources.sample_dataset_dir())
    at.selectbox(key="cfg_flip").set_value("horizontal_and_vertical").run()
    at.slider(key="cfg_zoom").set_value(0.3).run()
    at.toggle(key="cfg_augment").set_value(True).run()
    at.toggle(key="aug_show").set_value(True).run()
    assert not at.exception and len(at.get("image")) >= 9  # the preview uses exactly these settings
    at.switch_page("pages/4_Predict.py").run()  # a page without these widgets in between
    at.switch_page("pages/2_Train.py").run()
    assert not at.exception
    assert at.selectbox(key="cfg_flip").value == "horizontal_and_vertical"
    assert at.slider(key="cfg_zoom").value == pytest.approx(0.3) and at.toggle(key="cfg_augment").value
    at.number_input(key="cfg_epochs").set_value(1).run()
    at.button(key="t_start").click().run()
    (run_dir,) = list((tmp_path / "models").iterdir())
    try:
        config = runs.read_run(run_dir).config
        assert (config["flip"], config["zoom"], config["augment"], config["epochs"]) == (
            "horizontal_and_vertical",
            pytest.approx(0.3),
            True,
            1,
        )
    finally:
        jobs.cancel(run_dir)
        deadline = time.time() + 30
        while runs.read_run(run_dir).state in ("queued", "running") and time.time() < deadline:
            time.sleep(0.2)


def test_one_image_size_is_a_sentence_not_two_empty_charts():
    from lib.data import sources

    at = _run("pages/1_Dataset.py", sources.sample_dataset_dir())
    assert "All images are **160 x 160** pixels" in _text(at)
    assert len(at.get("plotly_chart")) == 1  # the class balance only: no width/height or aspect charts


def test_train_page_storage_section_shows_and_clears_the_feature_cache(tmp_path):
    from lib.data import sources

    entry = tmp_path / "cache" / "features" / "0123abcd"
    entry.mkdir(parents=True)
    (entry / "features.npy").write_bytes(b"\0" * 300_000)
    at = _run("pages/2_Train.py", sources.sample_dataset_dir())
    assert "No runs yet." in _text(at)  # the storage section shows even without runs
    assert "Cached image features: 300.0 KB" in _text(at)
    at.button(key="t_clear_cache").click().run()
    assert not at.exception
    assert "Cleared the cached features: 300.0 KB freed." in _text(at)
    assert "Cached image features: 0 bytes" in _text(at) and at.button(key="t_clear_cache").disabled
    assert not entry.exists()


def test_the_app_removes_temporaries_of_killed_processes_on_start(tmp_path, monkeypatch):
    import subprocess
    import sys

    from lib import files
    from lib.ui import frame

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "models" / "20260101-000000-MobileNetV2"
    run_dir.mkdir(parents=True)
    left = [
        run_dir / f"{files.TEMP_PREFIX}model.keras.{dead.pid}.0123abcd.keras",
        tmp_path / "cache" / "scans" / f"{files.TEMP_PREFIX}k.pkl.{dead.pid}.0123abcd.pkl",
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    monkeypatch.setitem(frame._STARTED, "done", False)  # as in a freshly started server
    _run("streamlit_app.py")
    assert not any(p.exists() for p in left) and run_dir.is_dir()


def test_error_messages_show_user_text_as_plain_text(tmp_path):
    at = _run("pages/1_Dataset.py")
    at.radio(key="dataset_source").set_value("folder").run()
    at.text_input[0].set_value("/no/[x](http://evil.invalid) **bold**").run()
    at.button[0].click().run()
    (message,) = [e.value for e in at.error]
    assert "[x](http" not in message and "**bold**" not in message
    assert "\\[x\\]\\(http" in message and "\\*\\*bold\\*\\*" in message


def test_a_class_folder_with_a_line_break_is_refused_by_name(tmp_path, make_image):
    root = tmp_path / "data"
    for cls in ("bad\nname", "good"):
        for i in range(3):
            make_image(root / cls / f"{i}.png", (i * 40, 90, 10), seed=i + len(cls))
    at = _run("pages/1_Dataset.py", root)
    from lib.text import md_escape

    (message,) = [e.value for e in at.error]  # the folder named, its line break shown as \n
    assert md_escape("The class folder 'bad\\nname' has control characters or line breaks") in message


def test_classes_whose_labels_collide_are_shown_distinctly(tmp_path, make_image):
    root = tmp_path / "data"
    for n, cls in enumerate(("bean_rust", "bean-rust", "healthy")):
        for i in range(4):
            make_image(root / cls / f"{i}.png", (n * 80, 90, 200 - n * 80), seed=10 * n + i)
    at = _run("pages/1_Dataset.py", root)
    headings = [m.value.replace("\\", "") for m in at.markdown if " · " in m.value]
    assert any(h.startswith("**Bean rust (bean_rust)**") for h in headings), headings
    assert any(h.startswith("**Bean rust (bean-rust)**") for h in headings), headings
    assert any(h.startswith("**Healthy**") for h in headings)


def test_predict_page_offers_the_acceptance_level_and_says_what_other_photos_get(sample_run, tmp_path):
    _with_run(sample_run, tmp_path)
    at = _run("pages/4_Predict.py")
    assert "doesn't look like any of these" in _text(at)
    # the sample has 31 validation images, but its temperature comes from out-of-fold heads too
    assert "the percentages are calibrated" in _text(at)
    slider = at.select_slider(key="p_accept")
    assert slider.value == 0.99 and "95% (about 1 in 20 real photos refused)" in slider.options
    slider.set_value(0.95).run()
    assert not at.exception and at.select_slider(key="p_accept").value == 0.95


def test_predict_page_of_a_run_without_the_detector_keeps_the_old_sentence(sample_run, tmp_path):
    run = _with_run(sample_run, tmp_path)
    (run / "unknown.npz").unlink()
    at = _run("pages/4_Predict.py")
    assert "will still get one of these names" in _text(at)
    assert not [s for s in at.select_slider if s.key == "p_accept"]


def test_evaluate_page_shows_calibration_and_checks_other_photos(sample_run, tmp_path):
    import numpy as np

    from lib import runs
    from lib.evaluate import predictions as preds
    from lib.models import unknown

    run = _with_run(sample_run, tmp_path)
    at = _run("pages/3_Evaluate.py")
    labels = [m.label for m in at.metric]
    assert "Calibration error, the model's own" in labels and "Temperature" in labels
    # The sample (31 validation images) gets an out-of-fold temperature; the table shows its percentages.
    detector = unknown.load(run / unknown.FILE_NAME)
    assert detector.temperature != 1.0
    stored = preds.predict_split(run, split="test")
    raw = stored[[f"prob_{c}" for c in runs.read_run(run).classes]].to_numpy()
    table = next(d.value for d in at.dataframe if "thumbnail" in d.value.columns)
    assert np.allclose(sorted(table["confidence"]), sorted(detector.calibrated(raw).max(1)))
    assert not np.allclose(sorted(table["confidence"]), sorted(stored["confidence"]))
    assert "the table above show the calibrated percentages" in _text(at)
    assert "Calibration error: the average gap" in _text(at)
    assert any(
        getattr(c, "key", None) == "reliability" or "reliability" in str(c.proto.id)
        for c in at.get("plotly_chart")
    )
    at.button(key="other_check").click().run()
    assert not at.exception, [e.value for e in at.exception]
    values = {m.label: m.value for m in at.metric}
    assert values["Other photos caught"] == "24 of 24"
    refused, total = values["Real test images wrongly refused"].split(" of ")
    assert total == "45" and int(refused) <= 4
    assert float(values["Separation (AUROC)"]) >= 0.98
    assert "Caught 24 of 24 other photos" in _text(at)
    assert len(at.dataframe[-1].value) == 24


def test_evaluate_page_of_a_run_without_the_detector_says_to_train_again(sample_run, tmp_path):
    run = _with_run(sample_run, tmp_path)
    (run / "unknown.npz").unlink()
    at = _run("pages/3_Evaluate.py")
    assert "trained before the studio could recognise photos of other things" in _text(at)
    assert not [b for b in at.button if b.key == "other_check"]
