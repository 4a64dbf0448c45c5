"""Shared fixtures. Everything is generated in temporary folders; nothing touches the repository.

Dataset fixtures
- `tiny_dataset` (session): Path to DIR/<class>/*.png with 3 classes ("blue", "green", "red") x 30
  images of 64x64, each a distinct noisy image around its class colour, so a small model separates
  them by colour within an epoch or two. Shared and read-only: copy it (shutil.copytree) to change it.
- `make_image` : the `write_image` function below, for tests that build their own folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_CLASSES = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}
TINY_PER_CLASS = 30
TINY_SIZE = 64


def write_image(
    path: Path,
    colour: tuple[int, int, int] = (128, 128, 128),
    *,
    seed: int = 0,
    size: int | tuple[int, int] = TINY_SIZE,
    fmt: str | None = None,
    **save_args,
) -> Path:
    """Write a noisy RGB image around `colour` (different bytes per seed); format from the suffix.

    size is a side or (width, height); save_args go to PIL's Image.save (quality=, exif=, ...).
    """
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    noise = rng.integers(-30, 31, size=(h, w, 3), dtype=np.int16)
    pixels = np.clip(np.array(colour, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **save_args)
    return path


@pytest.fixture(scope="session")
def make_image():
    return write_image


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """DIR/<class>/*.png: 3 colour classes x 30 distinct 64x64 images (see the module docstring)."""
    root = tmp_path_factory.mktemp("tiny_dataset")
    for c, (name, colour) in enumerate(sorted(TINY_CLASSES.items())):
        for i in range(TINY_PER_CLASS):
            write_image(root / name / f"{name}_{i:03d}.png", colour, seed=1000 * c + i)
    return root


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> Path:
    """A finished run trained on the bundled sample with the bundled backbone (about 15 s, once).

    Shared and read-only: copy the folder (shutil.copytree) before changing it.
    """
    import os

    from lib import runs, settings
    from lib.train.config import TrainConfig
    from lib.train.recipe import train

    home = tmp_path_factory.mktemp("sample-run")
    old = os.environ.get("STUDIO_CACHE_DIR")
    os.environ["STUDIO_CACHE_DIR"] = str(home / "cache")
    try:
        config = TrainConfig(data_dir=str(settings.sample_dir()), weights="bundled", epochs=15, seed=1)
        run_dir = runs.create_run(home / "models", config)
        train(config, run_dir)
        runs.write_status(run_dir, "finished")
    finally:
        if old is None:
            os.environ.pop("STUDIO_CACHE_DIR", None)
        else:
            os.environ["STUDIO_CACHE_DIR"] = old
    return run_dir
