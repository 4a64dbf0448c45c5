"""lib.cli: the shell mirrors the app. Every TrainConfig field is a flag of `train`, --config
reproduces a run (flags override it), `runs` lists runs, and bad flags are one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from lib import cli, files, runs
from lib.errors import UserError
from lib.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _train_args(*argv: str):
    return cli.build_parser().parse_args(["train", *argv])


def test_every_config_field_is_a_train_flag():
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    dests = {action.dest for action in train._actions}
    assert {f.name for f in fields(TrainConfig)} <= dests
    text = train.format_help()
    for flag in ("--cut-layer", "--pooling", "--hidden-units", "--dropout", "--label-smoothing", "--class-weights",
                 "--no-class-weights", "--early-stopping", "--target-val-accuracy", "--augmented-views", "--flip"):  # fmt: skip
        assert flag in text, flag


def test_flags_build_the_config_the_page_would(tiny_dataset):
    args = _train_args("--data", str(tiny_dataset), "--hidden-units", "64", "--no-class-weights", "--flip", "Vertical",
                       "--augment", "--lr", "0.003", "--base", "mobilenetv2")  # fmt: skip
    cfg = cli.config_from_args(args)
    assert (cfg.hidden_units, cfg.class_weights, cfg.flip, cfg.augment, cfg.lr) == (
        64,
        False,
        "vertical",
        True,
        0.003,
    )
    assert cfg.base == "MobileNetV2" and cfg.image_size == 160 and cfg.weights == "auto"
    assert cfg.data_dir == str(tiny_dataset.resolve())


def test_config_reproduces_a_run_and_flags_override_it(tiny_dataset, tmp_path):
    original = TrainConfig(
        data_dir=str(tiny_dataset), base="SmallCNN", weights="none", image_size=64, epochs=7, dropout=0.4
    )
    run_dir = runs.create_run(tmp_path / "models", original)
    again = cli.config_from_args(_train_args("--config", str(run_dir / "config.json")))
    assert again == original.resolved()
    changed = cli.config_from_args(_train_args("--config", str(run_dir), "--epochs", "3"))
    assert changed.epochs == 3 and changed.dropout == 0.4 and changed.base == "SmallCNN"


def test_a_recorded_relative_dataset_is_relative_to_the_repository(tmp_path):
    files.write_json(tmp_path / "config.json", {**TrainConfig().to_dict(), "data_dir": "data/sample"})
    cfg = cli.config_from_args(_train_args("--config", str(tmp_path / "config.json")))
    assert cfg.data_dir == str((ROOT / "data" / "sample").resolve())
    with pytest.raises(UserError, match="No dataset given"):
        cli.config_from_args(_train_args())


def _run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lib", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_runs_lists_state_accuracy_and_note(tmp_path):
    run_dir = runs.create_run(tmp_path, TrainConfig(data_dir="/d"))
    files.write_json(run_dir / "metrics.json", {"val_accuracy": 0.875})
    runs.write_status(run_dir, "finished")
    (run_dir / "model.keras").write_bytes(b"x")
    runs.set_note(run_dir, "first try\nmore")
    out = _run("runs", "--runs-dir", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["id"] == run_dir.name and row["state"] == "finished" and row["val accuracy"] == 0.875
    assert row["note"].startswith("first try")
    text = _run("runs", "--runs-dir", str(tmp_path))
    assert f"{run_dir.name}  finished  MobileNetV2  val 87.5%  first try" in text.stdout
    assert json.loads(text.stdout.strip().splitlines()[-1]) == {"runs": 1}


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--data", "data/sample", "--no-such-flag"], "unrecognized arguments"),
        (["train", "--data", "data/sample", "--dropout", "lots"], "invalid float value"),
        (["train", "--data", "data/sample", "--pooling", "max"], "Pooling must be one of avg, flatten"),
        (["train", "--config", "/no/such/run"], "cannot be read"),
        (["runs", "--json", "extra"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv, words, tmp_path):
    out = _run(*argv, "--runs-dir", str(tmp_path)) if argv[0] == "train" else _run(*argv)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], out.stderr


def _cache_cli(cache: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIO_CACHE_DIR": str(cache), "STUDIO_HOSTED": ""}
    return subprocess.run(
        [sys.executable, "-m", "lib", "cache", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cache_lists_what_the_cache_holds_and_clears_the_features(tmp_path):
    cache = tmp_path / "cache"
    entry = cache / "features" / "0123abcd"
    entry.mkdir(parents=True)
    (entry / "features.npy").write_bytes(b"\0" * 250_000)
    (entry / "meta.json").write_text("{}")
    (cache / "scans").mkdir()
    (cache / "scans" / "x.pkl").write_bytes(b"s" * 1000)
    shown = _cache_cli(cache)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert any(line.split()[0] == "features" and "250.0 KB" in line for line in lines[1:-2]), lines
    assert any(line.split()[0] == "scans" for line in lines[1:-2])
    summary = json.loads(lines[-1])
    assert summary["folders"] == {"features": 250_002, "scans": 1000} and "freed_bytes" not in summary

    cleared = _cache_cli(cache, "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert "Cleared the cached image features: 250.0 KB freed." in cleared.stdout
    assert json.loads(cleared.stdout.strip().splitlines()[-1])["freed_bytes"] == 250_002
    assert list((cache / "features").iterdir()) == [] and (cache / "scans" / "x.pkl").is_file()

    as_json = _cache_cli(cache, "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["folders"]["features"] == 0
    assert len(as_json.stdout.strip().splitlines()) == 1


def test_train_removes_what_killed_runs_left_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old_run = tmp_path / "models" / "20260101-000000-MobileNetV2"
    old_run.mkdir(parents=True)
    orphan = old_run / f"{files.TEMP_PREFIX}model.keras.{dead.pid}.0123abcd.keras"
    orphan.write_bytes(b"half a model")
    features = tmp_path / "cache" / "features" / f"{files.TEMP_PREFIX}key.{dead.pid}.89abcdef"
    features.mkdir(parents=True)
    with pytest.raises(UserError):  # stops at the dataset check, after the clean-up
        cli.train_command(
            _train_args("--data", str(tmp_path / "nothing-here"), "--runs-dir", str(tmp_path / "models"))
        )
    assert not orphan.exists() and not features.exists() and old_run.is_dir()


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        ({"module": ["keras.layers"], "class_name": "Dense", "config": {}}, "module of Dense is a list"),
        (
            {"module": "keras.layers", "class_name": "Dense", "config": {"units": 10**9}},
            "units = 1,000,000,000",
        ),
    ],
)
def test_a_hostile_model_in_a_run_is_one_line_and_exit_2(tmp_path, layer, words):
    """A copied-in run whose model.keras is malformed or oversized: a plain refusal, no traceback."""
    import h5py

    run_dir = runs.create_run(tmp_path / "models", {"data_dir": "/d", "base": "SmallCNN", "image_size": 32,
                                                    "classes": ["a", "b"]})  # fmt: skip
    runs.write_status(run_dir, "finished")
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as h5:
        h5.create_dataset("layers/dense/vars/0", data=np.zeros((2, 2), "<f4"))
    config = {"module": "keras", "class_name": "Functional", "config": {"name": "m", "layers": [layer]}}
    with zipfile.ZipFile(run_dir / "model.keras", "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", "{}")
        zf.writestr("model.weights.h5", weights.read_bytes())
    out = _run(
        "predict", "--run", str(run_dir), str(tmp_path), env={"STUDIO_CACHE_DIR": str(tmp_path / "cache")}
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: The model of run") and words in lines[0], (
        out.stderr
    )
    assert "Traceback" not in out.stderr
