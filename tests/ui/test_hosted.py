"""Hosted mode through the pages: per-visitor workspaces from the URL token, limits, the demo model."""

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lib import settings, workspace
from tests.conftest import share_converted_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _hosted(tmp_path, monkeypatch, converted_models):
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(share_converted_models(tmp_path / "cache", converted_models)))
    monkeypatch.setenv("STUDIO_RUNS_DIR", str(tmp_path / "shared-models"))


def _visit(page: str, token: str | None = None, dataset: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    if token:
        at.query_params["ws"] = token
    if dataset:
        at.session_state["dataset_dir"] = str(dataset)
    at.run()
    if page != "streamlit_app.py":
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_visitor_without_a_token_gets_one_in_the_url():
    at = _visit("streamlit_app.py")
    token = at.query_params["ws"]
    token = token[0] if isinstance(token, list) else token
    assert workspace.valid_token(token)
    assert any("private to this link" in c.value for c in at.sidebar.caption)


def test_a_forged_token_is_replaced_not_used_as_a_path():
    at = _visit("streamlit_app.py", token="../../etc")
    token = at.query_params["ws"]
    token = token[0] if isinstance(token, list) else token
    assert token != "../../etc" and workspace.valid_token(token)


def test_visitors_see_only_their_own_runs_and_the_demo(sample_run):
    alice, bob = workspace.new_token(), workspace.new_token()
    shutil.copytree(sample_run, workspace.runs_dir(alice) / sample_run.name)
    a = _visit("pages/3_Evaluate.py", alice)
    b = _visit("pages/3_Evaluate.py", bob)
    a_options = a.selectbox(key="eval_run").options
    b_options = b.selectbox(key="eval_run").options
    assert any(sample_run.name in o for o in a_options)
    assert not any(sample_run.name in o for o in b_options)
    assert any("Demo" in o for o in b_options), "the demo model is always there"


def test_no_server_folders_and_training_limits():
    at = _visit("pages/1_Dataset.py")
    assert "Folder on the server" not in at.radio(key="dataset_source").options
    at = _visit("pages/2_Train.py", dataset=settings.sample_dir())
    assert at.number_input(key="cfg_epochs").max == settings.max_epochs() == 30
    assert max(int(o) for o in at.selectbox(key="cfg_image_size").options) <= 224


def _url_token(at: AppTest) -> str:
    token = at.query_params["ws"]
    return token[0] if isinstance(token, list) else token


def test_an_unknown_token_gets_a_fresh_workspace_never_the_chosen_name():
    chosen = "attacker-chosen-name-0123456789"
    at = _visit("streamlit_app.py", token=chosen)
    token = _url_token(at)
    assert token != chosen and workspace.exists(token)
    assert not (workspace.workspaces_root() / chosen).exists()


def test_a_token_of_an_existing_workspace_is_kept_and_its_use_shown():
    token = workspace.issue()
    (workspace.uploads_dir(token) / "photos.bin").write_bytes(b"x" * 2_500_000)
    at = _visit("streamlit_app.py", token=token)
    assert _url_token(at) == token
    assert any("Your workspace holds 2.5 MB of 1.0 GB" in c.value for c in at.sidebar.caption)


def test_a_full_workspace_starts_no_training(monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE_QUOTA_MB", "1")
    token = workspace.issue()
    (workspace.uploads_dir(token) / "photos.bin").write_bytes(b"x" * 1_200_000)
    at = _visit("pages/2_Train.py", token, dataset=settings.sample_dir())
    at.button(key="t_start").click()
    at.run()
    shown = [e.value.replace("\\", "") for e in at.error]  # escaped Markdown, read as plain text
    assert any("Your workspace holds 1.2 MB, the limit on this demo" in s for s in shown), shown
    assert list(workspace.runs_dir(token).iterdir()) == []  # no run folder, no job


def test_hosted_visitors_see_the_feature_cache_but_cannot_clear_it_for_everyone():
    at = _visit("pages/2_Train.py", dataset=settings.sample_dir())
    assert any("Cached image features" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "t_clear_cache"]
