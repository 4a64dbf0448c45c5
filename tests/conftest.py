"""Shared fixtures. Everything is generated in temporary folders; nothing touches the repository.

Dataset fixtures
- `tiny_dataset` (session): Path to DIR/<class>/*.png with 3 classes ("blue", "green", "red") x 30
  images of 64x64, each a distinct noisy image around its class colour, so a small model separates
  them by colour within an epoch or two. Shared and read-only: copy it (shutil.copytree) to change it.
- `make_image` : the `write_image` function below, for tests that build their own folders.

Converted models
- `converted_models` (session): LiteRT conversions (10-13 s each) shared by every test that trains,
  examines or predicts without testing the conversion itself: `share_converted_models(cache_dir,
  converted_models)` makes the cache's engines/ (converted frozen bases) and tflite/ (read-only
  runs' models, like the demo's) folders the shared ones. Their entries are keyed by content (base,
  weights, size and library versions; a model file's hash) and written atomically, so sharing them
  changes nothing but the time.

Under pytest-xdist, `made_once` builds these session folders (the tiny dataset, the converted
bases, the sample run) once for the whole test run: the first worker that needs one makes it under
a file lock, the others wait and use it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's --dist loadfile (pyproject.toml), with the browser tests as one unit: each
    test module runs on one worker (module-scoped fixtures, like a training run or a set of
    exports, are made once) and all browser tests on one worker (one app server, one Chromium).
    (--dist loadgroup would do it with marks, but xdist 3.8 can't rename pytest 9's test ids.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndBrowser(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/browser" if path.startswith("tests/browser/") else path

    return ModulesAndBrowser(config, log)


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


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder <base temp>/<name>, filled by make(folder) once per test run.

    Under pytest-xdist the workers share it (their base temps have a common parent): the first
    one makes it while holding a lock, the others wait for it. A folder whose make() failed is
    made again by the next one that asks."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            make(folder)
            (root / f"{name}.done").touch()
    return folder


@pytest.fixture(scope="session")
def make_image():
    return write_image


def _write_tiny_dataset(root: Path) -> None:
    for c, (name, colour) in enumerate(sorted(TINY_CLASSES.items())):
        for i in range(TINY_PER_CLASS):
            write_image(root / name / f"{name}_{i:03d}.png", colour, seed=1000 * c + i)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """DIR/<class>/*.png: 3 colour classes x 30 distinct 64x64 images (see the module docstring)."""
    return made_once(tmp_path_factory, "tiny_dataset", _write_tiny_dataset)


@pytest.fixture(scope="session")
def converted_models(tmp_path_factory) -> Path:
    """The folder of converted models shared by the test run (see the module docstring)."""
    return made_once(tmp_path_factory, "converted-models", lambda folder: None)


def share_converted_models(cache_dir: str | Path, converted_models: Path) -> Path:
    """Make <cache_dir>/engines and <cache_dir>/tflite the shared folders of converted models
    (symlinks into `converted_models`); returns cache_dir."""
    for name in ("engines", "tflite"):
        link = Path(cache_dir) / name
        (converted_models / name).mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(converted_models / name, target_is_directory=True)
    return Path(cache_dir)


def _train_sample_run(home: Path, converted_models: Path) -> None:
    from lib import runs, settings
    from lib.train.config import TrainConfig
    from lib.train.recipe import train

    share_converted_models(home / "cache", converted_models)
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


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, converted_models) -> Path:
    """A finished run trained on the bundled sample with the bundled backbone (about 15 s, once).

    Shared and read-only: copy the folder (shutil.copytree) before changing it. Its cache (the
    folder's ../../cache) holds the features and the converted base it was trained with.
    """
    home = made_once(tmp_path_factory, "sample-run", lambda home: _train_sample_run(home, converted_models))
    (run_dir,) = (home / "models").iterdir()
    return run_dir
