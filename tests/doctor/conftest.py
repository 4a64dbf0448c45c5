"""Datasets for the doctor, made from the bundled bean-leaf sample (in the repository): planted
flips (files put in the wrong class folder), planted near-copies (half size, 5% crop, JPEG 70) of
photos enlarged to 320 px (the sample's own photos are small), and a screenshot among the leaves."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lib import settings
from tests.conftest import share_converted_models

FLIPS = {  # a training photo -> the class folder it is wrongly put in
    "train/healthy/00728.jpg": "bean_rust",
    "train/bean_rust/00383.jpg": "healthy",
}
COPIES = {  # near-copy -> original
    "test/healthy/copy_of_00773.jpg": "train/healthy/00773.jpg",  # across splits
    "train/bean_rust/copy_of_00776.jpg": "train/healthy/00776.jpg",  # conflicting labels
}
OUTLIER = "train/healthy/screenshot.png"


def near_copy(img: Image.Image) -> bytes:
    """Half size, a 5% crop, JPEG quality 70: the kind of copy an exact hash misses."""
    w, h = img.size
    dx, dy = int(w * 0.05), int(h * 0.05)
    small = img.crop((dx, dy, w, h)).resize(((w - dx) // 2, (h - dy) // 2), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.convert("RGB").save(out, format="JPEG", quality=70)
    return out.getvalue()


def folder_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def flipped_paths() -> set[str]:
    return {f"train/{wrong}/{Path(p).name}" for p, wrong in FLIPS.items()}


def make_planted(root: Path) -> Path:
    shutil.copytree(settings.sample_dir(), root)
    for path, wrong in FLIPS.items():
        (root / path).rename(root / "train" / wrong / Path(path).name)
    for copy, original in COPIES.items():
        big = Image.open(root / original).convert("RGB").resize((320, 320), Image.Resampling.LANCZOS)
        big.save(root / original, quality=95)
        (root / copy).write_bytes(near_copy(big))
    shot = Image.new("RGB", (200, 160), (245, 245, 245))
    draw = ImageDraw.Draw(shot)
    for row in range(6, 150, 12):
        draw.text((6, row), "File  Edit  View  Window  Help  0123456789", fill=(20, 20, 20))
    shot.save(root / OUTLIER)
    return root


@pytest.fixture(scope="module")
def doctor_home(tmp_path_factory, converted_models):
    """A cache folder shared by one test module (the features are computed once)."""
    return share_converted_models(tmp_path_factory.mktemp("doctor-cache"), converted_models)


@pytest.fixture
def doctor_env(doctor_home, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(doctor_home))
    return doctor_home


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return make_planted(tmp_path_factory.mktemp("doctor-data") / "planted")
