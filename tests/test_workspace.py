"""Hosted workspaces: tokens, isolation between visitors, expiry, and the runs download."""

from __future__ import annotations

import io
import os
import time
import zipfile
from datetime import UTC, datetime, timedelta

import pytest

from lib import files, runs, settings, workspace
from lib.errors import UserError


@pytest.fixture(autouse=True)
def hosted_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STUDIO_RUNS_DIR", str(tmp_path / "local-models"))
    monkeypatch.setenv("STUDIO_HOSTED", "1")
    monkeypatch.setenv("STUDIO_WORKSPACE_TTL_HOURS", "24")
    return tmp_path


def _finished_run(runs_dir, name="run", model=b"fake model bytes"):
    run_dir = runs.create_run(runs_dir, {"base": "MobileNetV2", "name": name, "image_size": 160})
    (run_dir / "model.keras").write_bytes(model)
    files.write_json(run_dir / "metrics.json", {"val_accuracy": 0.9})
    runs.write_status(run_dir, "finished")
    return run_dir


def _age(token, hours):
    """Pretend the workspace was last used `hours` ago (last visit and every run's status)."""
    root = workspace.workspaces_root() / token
    old = time.time() - hours * 3600
    for p in [root / workspace.LAST_SEEN, *root.glob("models/*/status.json")]:
        os.utime(p, (old, old))


def test_new_tokens_are_valid_unique_and_long():
    tokens = {workspace.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for t in tokens:
        assert workspace.valid_token(t)
        assert len(t) >= 22


@pytest.mark.parametrize(
    "bad",
    ["", "../x", "/etc", "..", "a" * 21, "a" * 65, "abc/def" + "x" * 20, "x" * 22 + "/..", "x" * 22 + "\n",
     "x" * 21 + ".", "x" * 22 + "%2e", None, 12345, "x" * 20 + "é" * 3],
)  # fmt: skip
def test_traversal_and_odd_tokens_are_refused(bad):
    assert not workspace.valid_token(bad)
    with pytest.raises(UserError):
        workspace.workspace_dir(bad)
    with pytest.raises(UserError):
        workspace.runs_dir(bad)
    with pytest.raises(UserError):
        workspace.runs_zip(bad)
    with pytest.raises(UserError):
        workspace.expires_at(bad)
    assert not (settings.cache_dir() / "workspaces").exists() or not any(
        p.name != ".last-cleanup" for p in (settings.cache_dir() / "workspaces").iterdir()
    )


def test_workspace_layout_is_under_the_cache_and_created_on_demand():
    token = workspace.new_token()
    root = workspace.workspace_dir(token)
    assert root == settings.cache_dir() / "workspaces" / token
    assert (root / "models").is_dir() and (root / "uploads").is_dir() and (root / "last_seen").is_file()
    assert workspace.runs_dir(token) == root / "models"
    assert workspace.uploads_dir(token) == root / "uploads"


def test_two_visitors_see_only_their_own_runs():
    a, b = workspace.new_token(), workspace.new_token()
    run_a = _finished_run(workspace.runs_dir(a), "alice's run")
    run_b = _finished_run(workspace.runs_dir(b), "bob's run")
    assert workspace.runs_dir(a) != workspace.runs_dir(b)
    assert [i.name for i in runs.list_runs(workspace.runs_dir(a))] == ["alice's run"]
    assert [i.name for i in runs.list_runs(workspace.runs_dir(b))] == ["bob's run"]
    assert workspace.finished_runs(a) == [run_a]
    assert workspace.owns(a, run_a) and not workspace.owns(a, run_b)
    assert not workspace.owns(a, workspace.runs_dir(a) / ".." / ".." / b / "models" / run_b.name)
    assert not workspace.owns(a, settings.runs_dir())
    names = zipfile.ZipFile(io.BytesIO(workspace.runs_zip(a))).namelist()
    assert names and all(n.startswith(run_a.name + "/") for n in names)


def test_runs_dir_for_is_local_when_not_hosted_and_per_visitor_when_hosted(monkeypatch):
    token = workspace.new_token()
    assert workspace.runs_dir_for(token) == workspace.runs_dir(token)
    with pytest.raises(UserError):
        workspace.runs_dir_for(None)
    with pytest.raises(UserError):
        workspace.runs_dir_for("../../models")
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    assert workspace.runs_dir_for(None) == settings.runs_dir()
    assert workspace.runs_dir_for(token) == settings.runs_dir()
    assert workspace.uploads_dir_for(None) == settings.cache_dir() / "uploads"


def test_expiry_follows_the_last_visit():
    token = workspace.new_token()
    workspace.workspace_dir(token)
    expiry = workspace.expires_at(token)
    assert timedelta(hours=23.9) < expiry - datetime.now(UTC) <= timedelta(hours=24, seconds=5)
    _age(token, 10)
    assert timedelta(hours=13.9) < workspace.expires_at(token) - datetime.now(UTC) < timedelta(hours=14.1)
    workspace.runs_dir(token)  # a visit renews it
    assert workspace.expires_at(token) - datetime.now(UTC) > timedelta(hours=23.9)


def test_cleanup_deletes_only_expired_workspaces_and_never_a_live_job():
    fresh, old, busy, queued_dead = (workspace.new_token() for _ in range(4))
    _finished_run(workspace.runs_dir(fresh))
    _finished_run(workspace.runs_dir(old))
    live = runs.create_run(workspace.runs_dir(busy), {"base": "MobileNetV2"})
    runs.write_status(live, "running", pid=os.getpid())  # this test process: certainly alive
    dead = runs.create_run(workspace.runs_dir(queued_dead), {"base": "MobileNetV2"})
    runs.write_status(dead, "running", pid=2**22 + 12345)  # no such process: interrupted
    for token in (old, busy, queued_dead):
        _age(token, 30)
    stray = workspace.workspaces_root() / "not-a-token"
    stray.mkdir()

    removed = workspace.cleanup_expired()

    assert sorted(removed) == sorted([old, queued_dead])
    root = workspace.workspaces_root()
    assert (root / fresh).is_dir() and (root / busy).is_dir() and stray.is_dir()
    assert not (root / old).exists() and not (root / queued_dead).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".deleting-")]
    assert (live / "status.json").is_file()

    # Later, once the job has ended and nobody came back, it goes too.
    runs.write_status(live, "finished")
    _age(busy, 30)
    assert workspace.cleanup_expired() == [busy]
    # A far-future "now" expires everything that's left (except folders that aren't workspaces).
    assert workspace.cleanup_expired(now=datetime.now(UTC) + timedelta(days=2)) == [fresh]
    assert stray.is_dir()


def test_cleanup_if_due_runs_at_most_once_per_interval():
    token = workspace.new_token()
    workspace.workspace_dir(token)
    _age(token, 30)
    assert workspace.cleanup_if_due(every_seconds=600) == [token]
    other = workspace.new_token()
    workspace.workspace_dir(other)
    _age(other, 30)
    assert workspace.cleanup_if_due(every_seconds=600) == []  # ran a moment ago
    assert workspace.cleanup_if_due(every_seconds=0) == [other]


def test_runs_zip_holds_the_finished_runs_and_leaves_out_caches():
    token = workspace.new_token()
    rd = workspace.runs_dir(token)
    one = _finished_run(rd, "one", model=b"model one")
    two = _finished_run(rd, "two", model=b"model two")
    (two / "predictions").mkdir()
    (two / "predictions" / "test-abc.parquet").write_bytes(b"cache")
    (two / ".model-1234.keras").write_bytes(b"half written")
    failed = runs.create_run(rd, {"base": "MobileNetV2", "name": "broken"})
    runs.write_status(failed, "failed", reason="boom")

    zf = zipfile.ZipFile(io.BytesIO(workspace.runs_zip(token)))
    names = set(zf.namelist())
    assert zf.testzip() is None
    assert {f"{one.name}/model.keras", f"{two.name}/model.keras", f"{one.name}/config.json"} <= names
    assert zf.read(f"{one.name}/model.keras") == b"model one"
    assert zf.read(f"{two.name}/model.keras") == b"model two"
    assert not [n for n in names if n.startswith(failed.name)]
    assert not [n for n in names if "predictions" in n or "/." in n]


def test_an_empty_workspace_downloads_an_empty_zip():
    token = workspace.new_token()
    assert zipfile.ZipFile(io.BytesIO(workspace.runs_zip(token))).namelist() == []
