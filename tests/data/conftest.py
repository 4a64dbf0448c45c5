"""Fixtures for the data tests: folders of distinct images whose colour follows the class name."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

RED, GREEN, BLUE = (200, 40, 40), (40, 180, 60), (40, 60, 200)


@pytest.fixture
def img(make_image):
    """img(path, seed) writes a distinct image; the colour follows the class folder name."""

    def write(path: Path, seed: int, **kwargs) -> Path:
        colour = {"red": RED, "green": GREEN, "blue": BLUE}.get(path.parent.name, (128, 128, 128))
        return make_image(path, kwargs.pop("colour", colour), seed=seed, **kwargs)

    return write


@pytest.fixture
def fill(img, tmp_path):
    """fill(folder, n) writes n distinct images; content depends only on the path under tmp_path."""

    def write(folder: Path, n: int, start: int = 0) -> list[Path]:
        base = zlib.crc32(folder.relative_to(tmp_path).as_posix().encode()) * 10_000
        return [img(folder / f"{i:04d}.png", seed=base + i) for i in range(start, start + n)]

    return write
