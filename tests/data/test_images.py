"""lib.data.images: every mode and format is read as RGB, EXIF orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lib.data import images
from lib.data import scan as scanning

ROOT = Path(__file__).resolve().parents[2]
RED, GREEN, BLUE = (200, 40, 40), (40, 180, 60), (40, 60, 200)


# ----------------------------------------------------------------------------------------------
# Formats, modes, EXIF (through the one decoder the scan and the pipeline use)
# ----------------------------------------------------------------------------------------------


def _save(path: Path, im: Image.Image, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **kwargs)
    return path


def test_every_mode_and_format_is_read_as_rgb(tmp_path, fill):
    d = tmp_path / "modes"
    fill(tmp_path / "other", 3)
    files = {}
    files["L"] = _save(d / "l.png", Image.new("L", (40, 40), 77))
    files["LA"] = _save(d / "la.png", Image.new("LA", (40, 40), (0, 0)))  # fully transparent -> white
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    files["P"] = _save(d / "p.png", pal, transparency=0)  # index 1 opaque green
    files["RGBA"] = _save(d / "rgba.png", Image.new("RGBA", (40, 40), (255, 0, 0, 0)))
    files["CMYK"] = _save(d / "cmyk.jpg", Image.new("CMYK", (40, 40), (0, 0, 0, 0)), quality=95)
    files["I;16"] = _save(d / "i16.png", Image.fromarray(np.full((40, 40), 65535, np.uint16)))
    frames = [Image.new("RGB", (40, 40), c) for c in ((250, 0, 0), (0, 0, 250))]
    files["GIF"] = d / "anim.gif"
    frames[0].save(files["GIF"], save_all=True, append_images=frames[1:], duration=100)
    files["WEBP"] = _save(d / "x.webp", Image.new("RGB", (40, 40), (1, 2, 3)), lossless=True)
    files["BMP"] = _save(d / "x.bmp", Image.new("RGB", (40, 40), (4, 5, 6)))

    expected = {
        "L": (77, 77, 77),
        "LA": (255, 255, 255),
        "P": (10, 200, 30),
        "RGBA": (255, 255, 255),
        "CMYK": (255, 255, 255),
        "I;16": (255, 255, 255),
        "GIF": (250, 0, 0),
        "WEBP": (1, 2, 3),
        "BMP": (4, 5, 6),
    }
    for key, path in files.items():
        rgb = images.decode(path, 32)
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8, key
        assert np.abs(rgb.reshape(-1, 3).mean(axis=0) - expected[key]).max() <= 2, key

    s = scanning.scan(tmp_path)
    r = {row["relpath"]: row for row in s.manifest.to_dict("records")}
    assert all(r[f"modes/{p.name}"]["usable"] for p in files.values())
    assert r["modes/i16.png"]["mode"].startswith("I")
    assert r["modes/cmyk.jpg"]["mode"] == "CMYK"
    assert r["modes/anim.gif"]["format"] == "GIF"
    assert r["modes/x.webp"]["format"] == "WEBP"


def test_exif_orientation_is_applied(tmp_path, img):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "rotated.jpg", Image.new("RGB", (80, 40), (120, 30, 30)), exif=exif.tobytes())
    assert images.decode(path).shape == (80, 40, 3)
