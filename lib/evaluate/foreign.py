"""Pictures that are none of a model's classes, made on the spot: noise, flat colours and rendered
screenshots of text and charts. For checking the unknown-photo detector when no foreign photos are
at hand (the Evaluate page offers them; tests and bench/unknown.py use them too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FLAT_COLOURS = (
    (0, 0, 0),
    (255, 255, 255),
    (128, 128, 128),
    (220, 30, 30),
    (30, 60, 220),
    (240, 220, 40),
    (40, 160, 60),
    (250, 140, 200),
)
WORDS = "the quick brown fox jumps over a lazy dog report total page settings file edit view help".split()


def noise(seed: int, size: int = 224) -> np.ndarray:
    """Uniform colour noise, or (odd seeds) blotchy low-frequency noise."""
    rng = np.random.default_rng(seed)
    if seed % 2 == 0:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))


def flat(colour: tuple[int, int, int], size: int = 224) -> np.ndarray:
    return np.full((size, size, 3), colour, dtype=np.uint8)


def screenshot(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A rendered window: a title bar, lines of text, and a bar chart or a table."""
    rng = np.random.default_rng(seed)
    dark = seed % 3 == 0
    image = Image.new("RGB", (width, height), (30, 30, 36) if dark else (250, 250, 250))
    draw = ImageDraw.Draw(image)
    ink = (220, 220, 220) if dark else (20, 20, 20)
    accent = tuple(int(v) for v in rng.integers(40, 220, 3))
    draw.rectangle([0, 0, width, 22], fill=accent)
    draw.text((8, 5), " ".join(rng.choice(WORDS, 3)), fill=(255, 255, 255))
    y = 32
    for _ in range(int(rng.integers(4, 9))):
        draw.text((10, y), " ".join(rng.choice(WORDS, int(rng.integers(3, 8)))), fill=ink)
        y += 14
    if seed % 2 == 0:
        bars = rng.integers(10, height - y - 10, 6)
        for i, h in enumerate(bars):
            x = 20 + i * 45
            draw.rectangle([x, height - 10 - int(h), x + 30, height - 10], fill=accent)
    else:
        for r in range(4):
            for c in range(3):
                box = [10 + c * 100, y + r * 18, 105 + c * 100, y + 16 + r * 18]
                draw.rectangle(box, outline=ink)
                draw.text((box[0] + 4, box[1] + 3), str(int(rng.integers(0, 9999))), fill=ink)
    return np.asarray(image)


def examples(n_noise: int = 8, n_screens: int = 8) -> dict[str, np.ndarray]:
    """Named foreign pictures: noise, every flat colour, screenshots."""
    out = {f"noise-{i}.png": noise(i) for i in range(n_noise)}
    out.update({f"flat-{'-'.join(map(str, c))}.png": flat(c) for c in FLAT_COLOURS})
    out.update({f"screenshot-{i}.png": screenshot(i) for i in range(n_screens)})
    return out


def write_examples(folder: str | Path, **kwargs: int) -> Path:
    """Write examples() as PNG files into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in examples(**kwargs).items():
        Image.fromarray(pixels).save(folder / name)
    return folder
