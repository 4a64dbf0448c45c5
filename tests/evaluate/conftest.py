"""Tiny runs and datasets for the evaluation tests.

The runs are built by hand: a keras model whose Dense weights make it predict the dominant colour
channel, so every prediction is known in advance without training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.models import loader

CHANNEL = {"red": 0, "green": 1, "blue": 2}
SIZE = 32


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


@pytest.fixture
def model_calls(monkeypatch):
    """How many batches every loaded model has run (a stored call must run none)."""
    calls = {"batches": 0}
    original = loader.LoadedModel.predict

    def counted(self, pixels):
        calls["batches"] += 1
        return original(self, pixels)

    monkeypatch.setattr(loader.LoadedModel, "predict", counted)
    return calls
