"""A run folder and generated inputs for the serve tests.

The run is built in the decided run-folder format: MobileNetV2 (bundled weights, 96 px) nested as
"base" after Resizing + Rescaling, a GAP/Dropout/Dense head fitted for a few epochs on the colour
classes of the tiny_dataset, so predictions are known (a red photo is "Red").
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.models import loader, registry
from tests.conftest import made_once

SIZE = 96
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


# ---------------------------------------------------------------------------------------------
# A run folder (shared by the serve tests; test_export.py exports it into its exports/ folder)
# ---------------------------------------------------------------------------------------------


def build_run(run_dir: Path, data_dir: Path, *, size: int = SIZE, epochs: int = 6) -> Path:
    """A finished run in the decided format, trained on data_dir's class folders (all images)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from lib.data.images import decode

    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    paths = [(p, i) for i, c in enumerate(classes) for p in sorted((data_dir / c).iterdir())]
    x = np.stack([decode(p, size=size) for p, _ in paths]).astype("float32")
    y = np.array([i for _, i in paths])

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), dtype="float32", name="image")
    h = keras.layers.Resizing(size, size, antialias=True, name="resize")(inp)
    h = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(h)
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=str(registry.get_base("MobileNetV2").bundled)
    )
    base.name = "base"
    base.trainable = False
    h = base(h, training=False)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    h = keras.layers.Dropout(0.2, name="dropout")(h)
    out = keras.layers.Dense(len(classes), activation="softmax", name="predictions")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)

    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    config = {
        "classes": classes,
        "image_size": size,
        "base": "MobileNetV2",
        "data_dir": str(data_dir),
        "epochs": epochs,
        "learning_rate": 1e-2,
        "batch_size": 32,
        "seed": 0,
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    (run_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"val_accuracy": 1.0}))
    (run_dir / "status.json").write_text(json.dumps({"state": "finished"}))
    (run_dir / "notes.md").write_text("")
    return run_dir


def _build_shared_run(folder: Path, data_dir: Path) -> None:
    run = build_run(folder / "20250101-000000-MobileNetV2", data_dir)
    loader.load(run)  # its model.tflite, made once here rather than by each worker that loads it


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tiny_dataset) -> Path:
    """The serve tests' run (read-only: copy it to change it), with its LiteRT model made."""
    runs = made_once(tmp_path_factory, "serve-runs", lambda folder: _build_shared_run(folder, tiny_dataset))
    return runs / "20250101-000000-MobileNetV2"


@pytest.fixture(scope="session")
def predictor(run_dir):
    return loader.load(run_dir)


# ---------------------------------------------------------------------------------------------
# Generated inputs
# ---------------------------------------------------------------------------------------------


def noisy(colour, size=(80, 64), seed=0) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng(seed)
    noise = rng.integers(-25, 26, size=(h, w, 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            if name.endswith("/"):
                zf.writestr(zipfile.ZipInfo(name), b"")
            else:
                zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16) | 0
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def red_png() -> bytes:
    return encode(Image.fromarray(noisy(COLOURS["red"])), "PNG")


def bad_and_odd_items(tmp: Path) -> list[tuple[str, object]]:
    """(name, source) for every case of the issue, in a known order; sources are bytes or paths."""
    red, green, blue = (
        Image.fromarray(noisy(COLOURS[c], seed=i)) for i, c in enumerate(("red", "green", "blue"))
    )
    jpeg = encode(red, "JPEG", quality=90)

    truncated = jpeg[: len(jpeg) // 2]
    big = Image.fromarray(noisy(COLOURS["green"], size=(400, 300)))

    frames = [Image.fromarray(noisy(COLOURS["blue"], seed=i)) for i in range(3)]
    frames[1] = red.resize(frames[0].size)
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)

    gray16 = (np.linspace(0, 65535, 80 * 64).reshape(64, 80)).astype(np.uint16)
    png16 = encode(Image.fromarray(gray16), "PNG")
    cmyk = encode(green.convert("CMYK"), "JPEG")

    # EXIF orientation 6 (turn 90 degrees clockwise to show): stored left half red, right half blue,
    # so the photo as shown has red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    halves = np.concatenate(
        [noisy(COLOURS["red"], size=(40, 80)), noisy(COLOURS["blue"], size=(40, 80))], axis=1
    )
    rotated = encode(Image.fromarray(halves), "JPEG", quality=95, exif=exif.tobytes())

    gray = encode(green.convert("L"), "PNG")
    rgba = np.dstack([noisy(COLOURS["blue"]), np.full((64, 80), 128, np.uint8)])
    transparent = encode(Image.fromarray(rgba), "PNG")
    palette_alpha = encode(red.convert("P"), "PNG", transparency=0)

    zero = tmp / "empty.jpg"
    zero.write_bytes(b"")
    on_disk = tmp / "on_disk.png"
    on_disk.write_bytes(encode(blue, "PNG"))

    good_zip = zip_bytes(
        {
            "photos/": b"",
            "photos/sub/": b"",
            "photos/a.png": red_png(),
            "photos/sub/b.jpg": encode(blue, "JPEG"),
            "__MACOSX/photos/._a.png": b"\x00\x05\x16\x07junk",
            "photos/.DS_Store": b"\x00\x00\x00\x01Bud1",
            "photos/readme.txt": b"these are my leaves",
        }
    )
    return [
        ("good.png", encode(red, "PNG")),
        ("good_on_disk.png", on_disk),
        ("notes.txt", b"just some text, not a picture\n"),
        ("renamed.jpg", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
        ("truncated.jpg", truncated),
        ("empty.jpg", zero),
        ("huge.png", encode(big, "PNG")),  # over the 100,000-pixel limit used below
        ("animated.gif", gif.getvalue()),
        ("gray16.png", png16),
        ("cmyk.jpg", cmyk),
        ("rotated.jpg", rotated),
        ("gray.png", gray),
        ("transparent.png", transparent),
        ("palette_alpha.png", palette_alpha),
        ("missing.png", tmp / "does_not_exist.png"),
        ("folder", tmp),
        ("photos.zip", good_zip),
        ("evil.zip", zip_bytes({"../../etc/evil.png": red_png()})),
        ("absolute.zip", zip_bytes({"/tmp/evil.png": red_png()})),
        ("link.zip", zip_bytes({"a.png": red_png()}, symlink="link.png")),
        ("nested.zip", zip_bytes({"a.png": red_png(), "inner/more.zip": zip_bytes({"b.png": red_png()})})),
        ("broken.zip", b"PK\x03\x04" + b"\x00" * 40),
        ("last.png", encode(green, "PNG")),
    ]
