"""lib.data.images: every mode and format is read as RGB, EXIF orientation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.data import images
from lib.data import scan as scanning
from lib.errors import ImageError

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


@pytest.mark.parametrize(
    "head, words",
    [
        (b"%PDF-1.7\n1 0 obj", "PDF document"),
        (b"<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG drawing"),
        (b"II*\x00\x08\x00\x00\x00", "TIFF images"),
        (b"8BPS\x00\x01", "Photoshop (PSD)"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", "icon (ICO)"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC photos"),
        (b"<!DOCTYPE html><html>", "web page"),
    ],
)
def test_other_kinds_of_files_are_refused_by_content_with_their_own_sentence(tmp_path, head, words):
    path = tmp_path / "photo.jpg"  # the name says JPEG; the content decides
    path.write_bytes(head + b"\x00" * 64)
    for call in (
        lambda: images.decode(path, 32),
        lambda: images.inspect(path),
        lambda: images.thumbnail(path),
    ):
        with pytest.raises(ImageError, match=re.escape(words)):
            call()


def test_real_tiff_ico_and_psd_files_are_refused_before_pillow_parses_them(tmp_path):
    im = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    for fmt, words in (("TIFF", "TIFF images"), ("ICO", "icon")):
        path = tmp_path / f"x.{fmt.lower()}"
        im.save(path, format=fmt)
        with pytest.raises(ImageError, match=words):
            images.decode(path, 32)


def test_an_animation_with_many_frames_is_never_walked(tmp_path):
    frames = [Image.new("RGB", (8, 8), (i % 250, i // 250, 0)) for i in range(3000)]
    path = tmp_path / "many.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1)
    assert images.decode(path, 16).shape == (16, 16, 3)
    info = images.inspect(path)
    assert info.format == "GIF" and 1 < info.frames <= images.GIF_FRAME_CAP


def test_a_webp_whose_header_claims_a_huge_canvas_is_refused_before_opening(tmp_path):
    import struct

    # VP8X chunk: canvas 7000 x 7000, no image data at all (libwebp would allocate the canvas on open)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\x00\x00\x00" + (6999).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    path = tmp_path / "bomb.webp"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="too large"):
        images.decode(path, 32, max_pixels=20_000_000)
    with pytest.raises(
        ImageError, match="too large to decode safely: a 7000x7000 WEBP image needs about 800 MB"
    ):
        images.decode(path, 32)


def test_the_byte_budget_serves_in_order_and_never_exceeds_its_total():
    import threading
    import time

    pool = images.ByteBudget(100)
    inside, peak, order = [0], [0], []
    lock = threading.Lock()

    def work(i: int, n: int) -> None:
        with pool.reserve(n):
            with lock:
                inside[0] += n
                peak[0] = max(peak[0], inside[0])
                order.append(i)
            time.sleep(0.02)
            with lock:
                inside[0] -= n

    threads = [threading.Thread(target=work, args=(i, 40)) for i in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert peak[0] <= 100 and sorted(order) == list(range(8)) and pool.used == 0
