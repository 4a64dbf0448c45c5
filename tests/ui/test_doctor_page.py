"""AppTest: the Data doctor page lists the planted problems, one click records a decision (never
touching the files), undo takes it back, and the Dataset page links to it."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lib.data import curation
from tests.conftest import share_converted_models
from tests.doctor.conftest import flipped_paths, folder_hash, make_planted

ROOT = Path(__file__).resolve().parents[2]
PAGE = "pages/5_Doctor.py"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("doctor-page") / "planted")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch, converted_models):
    home = tmp_path_factory.getbasetemp() / "doctor-page-home"
    monkeypatch.setenv("STUDIO_RUNS_DIR", str(home / "models"))
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(home / "cache", converted_models)))
    monkeypatch.setenv("STUDIO_DEMO_DIR", str(home / "no-demo"))


def _open(dataset: Path | None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=240)
    if dataset is not None:
        at.session_state["dataset_dir"] = str(dataset)
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _buttons(at: AppTest, label: str):
    return [b for b in at.button if b.label == label]


def test_without_a_dataset_it_says_what_to_do():
    at = _open(None)
    assert at.info and "Dataset" in at.info[0].value


def test_the_page_shows_the_findings_and_records_decisions(planted):
    before = folder_hash(planted)
    at = _open(planted)
    summary = at.success[0].value
    assert "suspect label" in summary and "near-duplicate pair" in summary and "outlier" in summary
    text = "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)
    text = text.replace("\\", "")  # file names are shown Markdown-escaped
    for path in flipped_paths():
        assert path in text, f"{path} shown among the suspects"
    assert "across-splits" in text and "conflicting-labels" in text
    assert "screenshot.png" in text
    relabel = [b for b in at.button if b.label.startswith("Relabel as ")]
    assert relabel, "one-click relabel buttons"
    relabel[0].click().run()
    assert not at.exception
    decided = curation.decisions(planted)
    assert len(decided) == 1 and next(iter(decided.values())).action == "relabel"
    _buttons(at, "Exclude")[0].click().run()
    assert len(curation.decisions(planted)) == 2
    assert "2 decisions" in "\n".join(m.value for m in at.markdown)
    assert any(b.label == "Download the decisions (CSV)" for b in at.get("download_button"))
    _buttons(at, "↶ Undo the last decision")[0].click().run()
    assert len(curation.decisions(planted)) == 1
    _buttons(at, "↶ Undo the last decision")[0].click().run()
    assert curation.decisions(planted) == {}
    assert folder_hash(planted) == before, "decisions never touch the user's files"


def test_retrain_with_these_fixes_starts_a_run_on_the_curated_dataset(planted, tmp_path_factory):
    from lib import runs
    from lib.train import jobs

    at = _open(planted)
    _buttons(at, "Exclude")[0].click().run()
    assert len(curation.decisions(planted)) == 1
    _buttons(at, "Retrain with these fixes")[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    models = tmp_path_factory.getbasetemp() / "doctor-page-home" / "models"
    found = runs.list_runs(models)
    assert len(found) == 1
    run = found[0]
    try:
        assert run.config["data_dir"] == str(planted)
        assert "Data doctor decision" in (run.path / "notes.md").read_text()
    finally:
        jobs.cancel(run.path)
        curation.undo(planted)


def test_the_dataset_page_links_to_the_doctor(planted):
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.session_state["dataset_dir"] = str(planted)
    at.run()
    at.switch_page("pages/1_Dataset.py")
    at.run()
    assert not at.exception
    assert any(
        link.proto.page.endswith("5_Doctor.py") or "Data doctor" in link.proto.label
        for link in at.main.get("page_link")
    )
