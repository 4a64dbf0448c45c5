"""Prediction: every bad input gets its own message and the batch goes on; verdicts; CSV; CLI; Grad-CAM.

The run is built here in the decided run-folder format: MobileNetV2 (bundled weights, 96 px) nested
as "base" after Resizing + Rescaling, a GAP/Dropout/Dense head fitted for a few epochs on the
colour classes of conftest's tiny_dataset, so predictions are known (a red photo is "Red").
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

from lib import prediction as pr
from lib.errors import UserError

SIZE = 96
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}


# ---------------------------------------------------------------------------------------------
# A run folder (also used by tests/test_export.py)
# ---------------------------------------------------------------------------------------------


def build_run(run_dir: Path, data_dir: Path, *, size: int = SIZE, epochs: int = 6) -> Path:
    """A finished run in the decided format, trained on data_dir's class folders (all images)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from lib import settings
    from lib.images import decode

    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    paths = [(p, i) for i, c in enumerate(classes) for p in sorted((data_dir / c).iterdir())]
    x = np.stack([decode(p, size=size) for p, _ in paths]).astype("float32")
    y = np.array([i for _, i in paths])

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), dtype="float32", name="image")
    h = keras.layers.Resizing(size, size, antialias=True, name="resize")(inp)
    h = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(h)
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=str(settings.bundled_weights())
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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tiny_dataset) -> Path:
    return build_run(tmp_path_factory.mktemp("runs") / "20250101-000000-MobileNetV2", tiny_dataset)


@pytest.fixture(scope="session")
def predictor(run_dir):
    return pr.load_predictor(run_dir)


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


# ---------------------------------------------------------------------------------------------
# Batch with every bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(predictor, tmp_path_factory):
    items = bad_and_odd_items(tmp_path_factory.mktemp("inputs"))
    results = pr.predict_images(predictor, items, predictor.size, predictor.classes, max_pixels=100_000)
    return {r.name: r for r in results}, results


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("notes.txt", "not an image"),
        ("renamed.jpg", "not an image"),
        ("truncated.jpg", "corrupt or truncated"),
        ("empty.jpg", "empty (0 bytes)"),
        ("huge.png", "too large"),
        ("missing.png", "does not exist"),
        ("folder", "is a folder"),
        ("photos.zip/photos/readme.txt", "not an image"),
        ("evil.zip", "leaves the archive"),
        ("absolute.zip", "absolute path"),
        ("link.zip", "link"),
        ("nested.zip", "another archive"),
        ("broken.zip", "damaged"),
    ],
)
def test_each_bad_input_gets_its_own_message(batch, name, words):
    by_name, _ = batch
    r = by_name[name]
    assert not r.ok and not r.skipped
    assert words in r.error
    assert r.verdict == "" and r.predicted is None
    assert "\n" not in r.error and "Traceback" not in r.error


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("good.png", "red"),
        ("good_on_disk.png", "blue"),
        ("animated.gif", "blue"),  # the first frame is blue; the second (red) is ignored
        ("cmyk.jpg", "green"),
        ("rotated.jpg", None),
        ("gray.png", None),
        ("gray16.png", None),
        ("transparent.png", "blue"),
        ("palette_alpha.png", None),
        ("photos.zip/photos/a.png", "red"),
        ("photos.zip/photos/sub/b.jpg", "blue"),
        ("last.png", "green"),
    ],
)
def test_odd_but_valid_images_are_judged(batch, name, expected):
    by_name, _ = batch
    r = by_name[name]
    assert r.ok, r.error
    assert r.image is not None and r.image.shape == (SIZE, SIZE, 3) and r.image.dtype == np.uint8
    assert set(r.probabilities) == {"blue", "green", "red"}
    assert abs(sum(r.probabilities.values()) - 1) < 1e-4
    if expected:
        assert r.predicted == expected
        assert r.verdict


def test_exif_rotation_is_applied_before_predicting(batch):
    by_name, _ = batch
    image = by_name["rotated.jpg"].image.astype(float)
    top, bottom = image[: SIZE // 2 - 4], image[SIZE // 2 + 4 :]
    assert top[..., 0].mean() > 150 and top[..., 2].mean() < 100  # red on top
    assert bottom[..., 2].mean() > 150 and bottom[..., 0].mean() < 100  # blue below


def test_batch_keeps_order_and_goes_on_after_failures(batch):
    _, results = batch
    names = [r.name for r in results]
    assert names[0] == "good.png" and names[-1] == "last.png"
    assert results[-1].ok  # the batch went on past every failure
    # The good zip expands in member order, junk reported as skipped (folders are not files).
    zipped = [n for n in names if n.startswith("photos.zip/")]
    assert zipped == [
        "photos.zip/photos/a.png",
        "photos.zip/photos/sub/b.jpg",
        "photos.zip/__MACOSX/photos/._a.png",
        "photos.zip/photos/.DS_Store",
        "photos.zip/photos/readme.txt",
    ]
    by_name = {r.name: r for r in results}
    for junk in ("photos.zip/__MACOSX/photos/._a.png", "photos.zip/photos/.DS_Store"):
        assert by_name[junk].skipped and "system file" in by_name[junk].error
    # Refused zips give one result each, nothing from inside them.
    for refused in ("evil.zip", "absolute.zip", "link.zip", "nested.zip", "broken.zip"):
        assert names.count(refused) == 1
        assert not any(n.startswith(refused + "/") for n in names)


def test_zip_limits_refuse_too_many_and_too_big(predictor, monkeypatch):
    many = zip_bytes({f"img{i}.png": red_png() for i in range(6)})
    monkeypatch.setattr(pr, "ZIP_MAX_MEMBERS", 5)
    (r,) = pr.predict_images(predictor, [("many.zip", many)], SIZE, predictor.classes)
    assert not r.ok and "6 files" in r.error and "limit is 5" in r.error
    monkeypatch.setattr(pr, "ZIP_MAX_MEMBERS", 100)
    monkeypatch.setattr(pr, "ZIP_MAX_TOTAL_BYTES", 1000)
    (r,) = pr.predict_images(predictor, [("big.zip", many)], SIZE, predictor.classes)
    assert not r.ok and "unpacks to" in r.error
    # A member whose real size exceeds the per-file cap, whatever the header says.
    monkeypatch.setattr(pr, "ZIP_MAX_TOTAL_BYTES", 10**9)
    monkeypatch.setattr(pr, "ZIP_MAX_MEMBER_BYTES", 100)
    results = pr.predict_images(
        predictor, [("one.zip", zip_bytes({"a.png": red_png()}))], SIZE, predictor.classes
    )
    assert len(results) == 1 and not results[0].ok and "too big" in results[0].error


def test_default_pixel_limit_refuses_a_decompression_bomb(predictor, monkeypatch):
    """A 56-megapixel PNG that compresses to a few hundred KB: refused by the 50 MP default setting."""
    monkeypatch.delenv("STUDIO_MAX_PIXELS", raising=False)
    bomb = encode(Image.new("L", (8000, 7000)), "PNG")
    assert len(bomb) < 1_000_000
    results = pr.predict_images(
        predictor, [("bomb.png", bomb), ("ok.png", red_png())], SIZE, predictor.classes
    )
    assert not results[0].ok and "8000x7000" in results[0].error and "limit is 50" in results[0].error
    assert results[1].ok


def test_a_plain_keras_model_works_too(predictor):
    results = pr.predict_images(predictor.model, [("a.png", red_png())], SIZE, predictor.classes)
    again = pr.predict_images(predictor.model, [("a.png", red_png())], SIZE, predictor.classes)
    assert results[0].predicted == again[0].predicted == "red"
    assert pr._as_predictor(predictor.model, SIZE, predictor.classes) is pr._as_predictor(
        predictor.model, SIZE, predictor.classes
    )


def test_empty_zip_and_only_junk_say_so(predictor):
    results = pr.predict_images(
        predictor,
        [("junk.zip", zip_bytes({"__MACOSX/._x.png": b"junk", "dir/": b""}))],
        SIZE,
        predictor.classes,
    )
    assert [r.name for r in results] == ["junk.zip/__MACOSX/._x.png", "junk.zip"]
    assert "no photos" in results[-1].error


def test_zip_given_as_a_path_and_a_zip_renamed_as_jpg(predictor, tmp_path):
    data = zip_bytes({"a.png": red_png()})
    (tmp_path / "x.zip").write_bytes(data)
    (tmp_path / "x.jpg").write_bytes(data)
    results = pr.predict_images(
        predictor, [("x.zip", tmp_path / "x.zip"), ("x.jpg", tmp_path / "x.jpg")], SIZE, predictor.classes
    )
    assert [(r.name, r.predicted) for r in results] == [("x.zip/a.png", "red"), ("x.jpg/a.png", "red")]


def test_many_images_span_several_batches(predictor):
    items = [(f"{i}.png", encode(Image.fromarray(noisy(COLOURS["green"], seed=i)), "PNG")) for i in range(40)]
    results = pr.predict_images(predictor, items, SIZE, predictor.classes, keep_images=False)
    assert [r.name for r in results] == [f"{i}.png" for i in range(40)]
    assert all(r.ok and r.predicted == "green" and r.image is None for r in results)


# ---------------------------------------------------------------------------------------------
# Verdicts, labels, tables
# ---------------------------------------------------------------------------------------------

CLASSES = ["angular_leaf_spot", "bean_rust", "healthy"]


def test_confident_verdict_in_plain_words():
    text, unsure = pr.verdict_text([0.03, 0.03, 0.94], CLASSES)
    assert (text, unsure) == ("Healthy — 94% sure", False)


def test_unsure_when_top_is_low():
    text, unsure = pr.verdict_text([0.35, 0.45, 0.20], CLASSES)
    assert (text, unsure) == ("Not sure: could be Bean rust or Angular leaf spot", True)


def test_unsure_when_top_two_are_close_even_above_threshold():
    text, unsure = pr.verdict_text([0.0, 0.66, 0.34], CLASSES, unsure_threshold=0.3, margin=0.4)
    assert unsure and text == "Not sure: could be Bean rust or Healthy"
    text, unsure = pr.verdict_text([0.0, 0.66, 0.34], CLASSES, unsure_threshold=0.3, margin=0.1)
    assert not unsure and text == "Bean rust — 66% sure"


def test_threshold_is_the_users_setting():
    assert pr.verdict_text([0.1, 0.2, 0.7], CLASSES, unsure_threshold=0.8)[1] is True
    assert pr.verdict_text([0.1, 0.2, 0.7], CLASSES, unsure_threshold=0.6)[1] is False


def test_never_claims_100_percent():
    assert pr.verdict_text([0.0, 0.0, 1.0], CLASSES)[0] == "Healthy — 99% sure"


def test_make_result_top_k_and_probabilities_in_class_order():
    r = pr.make_result("x.jpg", [0.2, 0.7, 0.1], CLASSES, top_k=2)
    assert list(r.probabilities) == CLASSES
    assert r.top_k == [("bean_rust", 0.7), ("angular_leaf_spot", 0.2)]
    assert r.predicted == "bean_rust" and r.label == "Bean rust" and r.confidence == pytest.approx(0.7)
    with pytest.raises(UserError):
        pr.make_result("x.jpg", [0.5, 0.5], CLASSES)


def test_knows_line():
    assert pr.knows_line(CLASSES) == "This model knows 3 kinds: Angular leaf spot, Bean rust, Healthy"
    assert pr.readable_label("bean_rust") == "Bean rust"
    assert pr.readable_label("angular-leaf_spot") == "Angular leaf spot"


def test_results_table_and_csv():
    ok = pr.make_result("=cmd|' /C calc'!A0.jpg", [0.1, 0.1, 0.8], CLASSES)
    bad = pr.PredictionResult(name="notes.txt", ok=False, error="This is not an image file.")
    df = pr.results_frame([ok, bad], CLASSES)
    assert list(df.columns) == [
        "file", "verdict", "predicted", "confidence", "unsure",
        "Angular leaf spot", "Bean rust", "Healthy", "error",
    ]  # fmt: skip
    assert df.loc[0, "verdict"] == "Healthy — 80% sure" and df.loc[0, "Healthy"] == pytest.approx(0.8)
    assert df.loc[1, "error"] == "This is not an image file." and np.isnan(df.loc[1, "Healthy"])
    text = pr.results_csv([ok, bad], CLASSES).decode("utf-8-sig")
    first = text.splitlines()[1]
    assert first.startswith("'=cmd")  # a spreadsheet will not run it as a formula
    assert "This is not an image file." in text


def test_to_dict_is_json_ready():
    r = pr.make_result("a.jpg", [0.1, 0.1, 0.8], CLASSES, image=np.zeros((2, 2, 3), np.uint8))
    data = json.loads(json.dumps(r.to_dict()))
    assert data["verdict"] == "Healthy — 80% sure" and data["top_k"][0] == {
        "class": "healthy",
        "probability": 0.8,
    }


# ---------------------------------------------------------------------------------------------
# Loading runs, predict_arrays, CLI
# ---------------------------------------------------------------------------------------------


def test_predictor_knows_its_run(predictor, run_dir):
    assert predictor.classes == ["blue", "green", "red"] and predictor.size == SIZE
    assert predictor.run_dir == run_dir and predictor.base == "MobileNetV2"
    x = np.stack([noisy(COLOURS[c], size=(SIZE, SIZE)) for c in predictor.classes]).astype(np.float32)
    probs = predictor.predict_arrays(x)
    assert probs.shape == (3, 3) and list(probs.argmax(axis=1)) == [0, 1, 2]
    # Any input size works (the model resizes), and one image (HxWx3) is a batch of one.
    assert predictor.predict_arrays(noisy(COLOURS["red"], size=(150, 120))).argmax() == 2
    # The same as the Keras model called directly.
    np.testing.assert_allclose(probs, predictor.model.predict_on_batch(x), atol=1e-5)


def test_broken_runs_give_plain_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="does not exist"):
        pr.load_predictor(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        pr.load_predictor(tmp_path / "empty")
    running = tmp_path / "running"
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 96}))
    (running / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(UserError, match="no saved model.*running"):
        pr.load_predictor(running)
    (running / "model.keras").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot be (loaded|used)"):
        pr.load_predictor(running)
    (running / "config.json").write_text("{broken")
    with pytest.raises(UserError, match="config.json cannot be read"):
        pr.load_predictor(running)
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    (mismatch / "config.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 96}))
    with pytest.raises(UserError, match="3 outputs but the run lists 2 classes"):
        pr.load_predictor(mismatch)


def test_cli_lines_json_and_exit_codes(run_dir, tmp_path, capsys):
    from lib.cli import main

    good = tmp_path / "leaf.png"
    good.write_bytes(red_png())
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    code = main(["predict", "--run", str(run_dir), str(good), str(bad), str(tmp_path / "gone.jpg")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(out) == 3
    assert out[0].startswith(f"{good}: Red — ") and out[0].endswith("% sure")
    assert out[1] == f"{bad}: error: This is not an image file (or its format is not supported)."
    assert out[2] == f"{tmp_path / 'gone.jpg'}: error: The file does not exist."

    code = main(["predict", "--run", str(run_dir), str(good), str(bad), "--json"])
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and data["classes"] == ["blue", "green", "red"]
    assert [r["ok"] for r in data["results"]] == [True, False]
    assert data["results"][0]["predicted"] == "red" and data["results"][1]["error"]

    code = main(["predict", "--run", str(run_dir), str(good), "--threshold", "0.9999"])
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and line.startswith(f"{good}: Not sure: could be Red or ") and "(top guess" in line

    code = main(["predict", "--run", str(tmp_path / "no-run"), str(good)])
    captured = capsys.readouterr()
    assert code == 2 and "does not exist" in captured.err and captured.out == ""


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------


def _patch_image() -> np.ndarray:
    """Green background with a red square: the model (colour classes) should look at the square."""
    rgb = noisy(COLOURS["green"], size=(SIZE, SIZE))
    rgb[20:60, 30:70] = noisy(COLOURS["red"], size=(40, 40), seed=3)
    return rgb


def test_gradcam_mobilenet_map_shape_and_not_constant(predictor):
    from lib.gradcam import gradcam, overlay

    rgb = _patch_image()
    heat = gradcam(predictor, rgb)
    assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01
    # Explaining another class gives another map; a larger display image gets a map of its size.
    assert not np.allclose(heat, gradcam(predictor, rgb, class_index=1))
    big = np.asarray(Image.fromarray(rgb).resize((200, 150)))
    assert gradcam(predictor.model, big).shape == (150, 200)
    shown = overlay(rgb, heat)
    assert shown.shape == rgb.shape and shown.dtype == np.uint8 and not np.array_equal(shown, rgb)


def test_gradcam_other_base_efficientnet():
    import keras

    from lib.gradcam import gradcam, overlay

    size = 64
    keras.utils.set_random_seed(1)
    inp = keras.Input((None, None, 3), dtype="float32")
    h = keras.layers.Resizing(size, size, antialias=True)(inp)
    base = keras.applications.EfficientNetB0(input_shape=(size, size, 3), include_top=False, weights=None)
    base.name = "base"
    h = base(h, training=False)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="predictions")(h)
    model = keras.Model(inp, out)
    rgb = noisy(COLOURS["red"], size=(size, size))
    heat = gradcam(model, rgb, last_conv_layer="top_activation")
    assert heat.shape == (size, size) and heat.std() > 0.01 and 0 <= heat.min() and heat.max() <= 1
    # An unknown registry layer name falls back to the last spatial layer.
    assert gradcam(model, rgb, last_conv_layer="no_such_layer").shape == (size, size)
    assert overlay(rgb, heat).shape == (size, size, 3)


def test_gradcam_flat_model_without_nested_base():
    import keras

    from lib.gradcam import gradcam

    keras.utils.set_random_seed(2)
    inp = keras.Input((None, None, 3), dtype="float32")
    h = keras.layers.Resizing(48, 48)(inp)
    h = keras.layers.Rescaling(1 / 255)(h)
    h = keras.layers.Conv2D(8, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="last_conv")(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(2, activation="softmax")(h)
    model = keras.Model(inp, out)
    heat = gradcam(model, noisy(COLOURS["blue"], size=(48, 48)))
    assert heat.shape == (48, 48) and heat.std() > 0.01
