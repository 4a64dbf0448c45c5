"""Hosted workspaces: tokens, isolation between visitors, expiry, and the runs download."""

from __future__ import annotations

import io
import json
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


# ----------------------------------------------------------------------------------------------
# Tokens are issued by the server
# ----------------------------------------------------------------------------------------------


def test_only_issued_tokens_name_a_workspace():
    token = workspace.issue()
    assert workspace.exists(token) and (workspace.workspaces_root() / token / "models").is_dir()
    chosen = "attacker-chosen-name-0123456789"
    assert workspace.valid_token(chosen) and not workspace.exists(chosen)
    assert not workspace.exists("../../etc") and not workspace.exists(None)
    assert not (workspace.workspaces_root() / chosen).exists()


# ----------------------------------------------------------------------------------------------
# Quota
# ----------------------------------------------------------------------------------------------


def test_the_quota_counts_uploads_and_runs_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE_QUOTA_MB", "1")
    token = workspace.issue()
    workspace.check_room(token)  # empty: fine
    (workspace.uploads_dir(token) / "photos.bin").write_bytes(b"x" * 600_000)
    run = _finished_run(workspace.runs_dir(token), model=b"m" * 300_000)
    assert workspace.usage(token) >= 900_000 and 0 < workspace.room(token) <= 100_000
    with pytest.raises(UserError, match="This needs 500.0 KB but your workspace has only"):
        workspace.check_room(token, 500_000)
    (run / "exports").mkdir()
    (run / "exports" / "model.zip").write_bytes(b"e" * 200_000)  # derived files count too
    assert workspace.room(token) == 0
    with pytest.raises(
        UserError, match=r"Your workspace holds 1\.1 MB, the limit on this demo: delete old runs"
    ):
        workspace.check_room(token)
    assert workspace.usage_text(token) == "Your workspace holds 1.1 MB of 1.0 MB."


def test_no_quota_locally_or_when_set_to_zero(monkeypatch):
    token = workspace.issue()
    monkeypatch.setenv("STUDIO_WORKSPACE_QUOTA_MB", "0")
    assert workspace.room(token) is None and "of" not in workspace.usage_text(token).split("holds")[1]
    monkeypatch.setenv("STUDIO_WORKSPACE_QUOTA_MB", "1")
    monkeypatch.setenv("STUDIO_HOSTED", "0")
    assert workspace.room(token) is None and workspace.room(None) is None
    workspace.check_room(None, 10**12)


# ----------------------------------------------------------------------------------------------
# What leaves the server
# ----------------------------------------------------------------------------------------------


def _traceback_from_the_libraries() -> str:
    import traceback

    import pandas as pd

    try:
        pd.read_csv(settings.ROOT / "no" / "such.csv")
    except OSError as exc:
        return "".join(traceback.format_exception(exc))
    raise AssertionError("read_csv should have failed")


def test_the_runs_zip_carries_no_server_paths(tmp_path):
    import sys
    import tempfile

    token = workspace.issue()
    data = workspace.uploads_dir(token) / "beans-0123456789abcdef" / "beans"
    (data / "healthy").mkdir(parents=True)
    weights = tmp_path / "secret-place" / "my.weights.h5"
    config = {
        "base": "MobileNetV2",
        "image_size": 160,
        "data_dir": str(data),
        "weights": str(weights),
        "weights_used": str(weights),
        "dataset": {"root": str(data.resolve()), "counts": {"train": 3}},
        "classes": ["healthy", "rust"],
    }
    run = runs.create_run(workspace.runs_dir(token), config)
    (run / "model.keras").write_bytes(b"model")
    runs.write_status(run, "finished")
    runs.append_log(run, f"Training MobileNetV2 (bundled weights, 160 px) on {data}.")
    runs.append_log(run, f"Loaded {settings.ROOT / 'weights' / 'mobilenet_v2.h5'}; run folder {run}.")
    (run / "worker.log").write_text(_traceback_from_the_libraries())
    (run / "report.md").write_text(f"- **Data folder**: {data}\n")

    zf = zipfile.ZipFile(io.BytesIO(workspace.runs_zip(token)))
    secrets_ = {
        str(settings.ROOT),
        str(data),
        str(data.resolve()),
        str(tmp_path),
        str(workspace.workspace_dir(token)),
    }
    secrets_ |= {sys.prefix, tempfile.gettempdir() + "/", token}
    for name in zf.namelist():
        text = zf.read(name).decode("utf-8", "replace")
        for secret in secrets_:
            assert secret not in text, (name, secret, text)
    public = json.loads(zf.read(f"{run.name}/config.json"))
    assert public["data_dir"] == "beans" and public["dataset"]["root"] == "beans"
    assert public["weights"] == "my.weights.h5" and public["classes"] == ["healthy", "rust"]
    log = zf.read(f"{run.name}/log.txt").decode()
    assert "on beans." in log and "weights/mobilenet_v2.h5" in log and f"run folder models/{run.name}" in log
    worker = zf.read(f"{run.name}/worker.log").decode()
    assert "Traceback" in worker and "FileNotFoundError" in worker and "no/such.csv" in worker
    assert zf.read(f"{run.name}/model.keras") == b"model"
    assert runs.read_run(run).config["data_dir"] == str(data)  # the run folder itself is untouched
