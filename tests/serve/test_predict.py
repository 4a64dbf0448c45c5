"""lib.serve.predict (and inputs): every bad input gets its own message and the batch goes on;
folders and zips expand; verdicts; CSV; the loaded model; the predict CLI."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from lib.errors import UserError
from lib.models import loader
from lib.serve import inputs
from lib.serve import predict as pr
from tests.serve.conftest import COLOURS, SIZE, bad_and_odd_items, encode, noisy, red_png, zip_bytes

# ---------------------------------------------------------------------------------------------
# Batch with every bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(predictor, tmp_path_factory):
    items = bad_and_odd_items(tmp_path_factory.mktemp("inputs"))
    results = pr.predict_images(predictor, items, max_pixels=100_000)
    return {r.name: r for r in results}, results


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("notes.txt", "not an image"),
        ("renamed.jpg", "PDF document, not a photo"),
        ("truncated.jpg", "corrupt or truncated"),
        ("empty.jpg", "empty (0 bytes)"),
        ("huge.png", "too large"),
        ("missing.png", "does not exist"),
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
    monkeypatch.setattr(inputs, "ZIP_MAX_MEMBERS", 5)
    (r,) = pr.predict_images(predictor, [("many.zip", many)])
    assert not r.ok and "6 files" in r.error and "limit is 5" in r.error
    monkeypatch.setattr(inputs, "ZIP_MAX_MEMBERS", 100)
    monkeypatch.setattr(inputs, "ZIP_MAX_TOTAL_BYTES", 1000)
    (r,) = pr.predict_images(predictor, [("big.zip", many)])
    assert not r.ok and "unpacks to" in r.error
    # A member whose real size exceeds the per-file cap, whatever the header says.
    monkeypatch.setattr(inputs, "ZIP_MAX_TOTAL_BYTES", 10**9)
    monkeypatch.setattr(inputs, "ZIP_MAX_MEMBER_BYTES", 100)
    results = pr.predict_images(predictor, [("one.zip", zip_bytes({"a.png": red_png()}))])
    assert len(results) == 1 and not results[0].ok and "too big" in results[0].error


def test_default_pixel_limit_refuses_a_decompression_bomb(predictor, monkeypatch):
    """A 56-megapixel PNG that compresses to a few hundred KB: refused by the 50 MP default setting."""
    monkeypatch.delenv("STUDIO_MAX_PIXELS", raising=False)
    bomb = encode(Image.new("L", (8000, 7000)), "PNG")
    assert len(bomb) < 1_000_000
    results = pr.predict_images(predictor, [("bomb.png", bomb), ("ok.png", red_png())])
    assert not results[0].ok and "8000x7000" in results[0].error and "limit is 50" in results[0].error
    assert results[1].ok


def test_a_plain_keras_model_works_too(predictor):
    plain = pr.KerasModel(predictor.keras_model, predictor.classes, SIZE)
    (result,) = pr.predict_images(plain, [("a.png", red_png())])
    (loaded,) = pr.predict_images(predictor, [("a.png", red_png())])
    assert result.predicted == loaded.predicted == "red"
    assert result.confidence == pytest.approx(loaded.confidence, abs=1e-5)


def test_empty_zip_and_only_junk_say_so(predictor):
    results = pr.predict_images(
        predictor,
        [("junk.zip", zip_bytes({"__MACOSX/._x.png": b"junk", "dir/": b""}))],
    )
    assert [r.name for r in results] == ["junk.zip/__MACOSX/._x.png", "junk.zip"]
    assert "no photos" in results[-1].error


def test_zip_given_as_a_path_and_a_zip_renamed_as_jpg(predictor, tmp_path):
    data = zip_bytes({"a.png": red_png()})
    (tmp_path / "x.zip").write_bytes(data)
    (tmp_path / "x.jpg").write_bytes(data)
    results = pr.predict_images(predictor, [("x.zip", tmp_path / "x.zip"), ("x.jpg", tmp_path / "x.jpg")])
    assert [(r.name, r.predicted) for r in results] == [("x.zip/a.png", "red"), ("x.jpg/a.png", "red")]


def test_many_images_span_several_batches(predictor):
    items = [(f"{i}.png", encode(Image.fromarray(noisy(COLOURS["green"], seed=i)), "PNG")) for i in range(40)]
    results = pr.predict_images(predictor, items, keep_images=False)
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
    assert (
        pr.knows_line(["bean_rust", "bean-rust"])
        == "This model knows 2 kinds: Bean rust (bean_rust), Bean rust (bean-rust)"
    )
    verdict, _ = pr.verdict_text([0.5, 0.5], ["cats", "Cats"])
    assert verdict == "Not sure: could be Cats (cats) or Cats (Cats)"


def test_results_table_and_csv():
    ok = pr.make_result("=cmd|' /C calc'!A0.jpg", [0.1, 0.1, 0.8], CLASSES)
    bad = pr.PredictionResult(name="notes.txt", ok=False, error="This is not an image file.")
    df = pr.results_frame([ok, bad], CLASSES)
    assert list(df.columns) == [
        "file", "verdict", "predicted", "confidence", "unsure", "known", "unknown_score",
        "Angular leaf spot", "Bean rust", "Healthy", "error",
    ]  # fmt: skip
    assert df.loc[0, "verdict"] == "Healthy — 80% sure" and df.loc[0, "Healthy"] == pytest.approx(0.8)
    assert df.loc[0, "known"] is None  # a model without the unknown-photo detector
    assert df.loc[1, "error"] == "This is not an image file." and np.isnan(df.loc[1, "Healthy"])
    text = pr.results_csv([ok, bad], CLASSES).decode("utf-8-sig")
    first = text.splitlines()[1]
    assert first.startswith("'=cmd")  # a spreadsheet will not run it as a formula
    assert "This is not an image file." in text


def test_results_csv_neutralizes_formulas_in_cells_and_headers():
    classes = ['=HYPERLINK("http://e.invalid","x")', "+cmd", "healthy"]
    ok = pr.make_result("+cmd|' /C calc'!A0.jpg", [0.8, 0.1, 0.1], classes)
    bad = pr.PredictionResult(name="@evil.png", ok=False, error="-not an image")
    rows = list(csv.reader(io.StringIO(pr.results_csv([ok, bad], classes).decode("utf-8-sig"))))
    cells = [cell for row in rows for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], rows
    assert '\'=HYPERLINK("http://e.invalid","x")' in rows[0] and "'+cmd" in rows[0]
    assert rows[1][0].startswith("'+cmd|") and rows[2][0] == "'@evil.png"


def test_an_unknown_score_above_the_acceptance_gives_the_third_verdict():
    known = pr.make_result("leaf.jpg", [0.1, 0.1, 0.8], CLASSES, unknown_score=0.5, acceptance=0.99)
    assert known.known is True and known.verdict == "Healthy — 80% sure" and not known.unsure
    strange = pr.make_result("cat.jpg", [0.1, 0.1, 0.8], CLASSES, unknown_score=0.995, acceptance=0.99)
    assert strange.known is False and strange.unsure
    assert strange.verdict == (
        "This doesn't look like any of the 3 kinds this model knows "
        "(Angular leaf spot, Bean rust, Healthy). Closest: Healthy"
    )
    assert strange.predicted == "healthy"  # the closest kind stays a hint in the table
    # Moving the acceptance level changes the verdict of the same score.
    assert pr.make_result("cat.jpg", [0.1, 0.1, 0.8], CLASSES, unknown_score=0.995, acceptance=0.999).known
    df = pr.results_frame([known, strange], CLASSES)
    assert df["known"].tolist() == [True, False] and df["unknown_score"].tolist() == [0.5, 0.995]
    assert json.loads(json.dumps(strange.to_dict()))["known"] is False


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


def test_the_loaded_model_knows_its_run(predictor, run_dir):
    assert predictor.classes == ["blue", "green", "red"] and predictor.size == SIZE
    assert predictor.run.path == run_dir and predictor.run.base == "MobileNetV2"
    x = np.stack([noisy(COLOURS[c], size=(SIZE, SIZE)) for c in predictor.classes]).astype(np.float32)
    probs = predictor.predict(x)
    assert probs.shape == (3, 3) and list(probs.argmax(axis=1)) == [0, 1, 2]
    # Any input size works (the model resizes), and one image (HxWx3) is a batch of one.
    assert predictor.predict(noisy(COLOURS["red"], size=(150, 120))).argmax() == 2
    # The same as the Keras model called directly.
    np.testing.assert_allclose(probs, predictor.keras_model.predict_on_batch(x), atol=1e-5)


def test_broken_runs_give_plain_errors(tmp_path, run_dir):
    with pytest.raises(UserError, match="does not exist"):
        loader.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        loader.load(tmp_path / "empty")
    running = tmp_path / "running"
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 96}))
    (running / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(UserError, match="no saved model.*interrupted"):
        loader.load(running)
    (running / "model.keras").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot be (loaded|used)"):
        loader.load(running)
    (running / "config.json").write_text("{broken")
    with pytest.raises(UserError, match="config.json cannot be read"):
        loader.load(running)
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    (mismatch / "config.json").write_text(json.dumps({"classes": ["a", "b"], "image_size": 96}))
    with pytest.raises(UserError, match="3 outputs but the run lists 2 classes"):
        loader.load(mismatch)


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
    assert (
        out[1]
        == f"{bad}: error: This is not an image file (or its format is not supported): use JPEG, PNG, BMP, GIF or WebP."
    )
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


def test_folders_expand_into_their_photos_recursively(predictor, tmp_path):
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(red_png())
    (folder / "sub" / "b.png").write_bytes(red_png())
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not a photo")
    (tmp_path / "empty").mkdir()
    results = pr.predict_images(
        predictor, [("shots", folder), ("empty", tmp_path / "empty")], keep_images=False
    )
    assert [r.name for r in results] == ["shots/a.png", "shots/notes.txt", "shots/sub/b.png", "empty"]
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[0].predicted == "red" and "not an image" in results[1].error
    assert results[3].error == "The folder has no files in it."


def test_a_batch_is_capped_in_photos_bytes_and_megapixels(predictor):
    pr.SEEN.clear()  # photos judged before cost no decoding: they would pass the megapixel cap
    photos = [
        (f"p{i}.png", encode(Image.fromarray(noisy(COLOURS["red"], seed=50 + i)), "PNG")) for i in range(5)
    ]
    results = pr.predict_images(predictor, photos, keep_images=False, limits=pr.Limits(3, 100, 100))
    assert [r.ok for r in results] == [True, True, True, False, False]
    assert "Only 3 photos are judged per batch" in results[3].error
    zipped = zip_bytes({f"z{i}.png": red_png() for i in range(4)})
    one_mb = pr.Limits(100, 1, 100)
    big = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)), "PNG"
    )
    results = pr.predict_images(
        predictor, [("z.zip", zipped), ("big.png", big)], keep_images=False, limits=one_mb
    )
    assert [r.ok for r in results] == [True, True, True, True, False] and "over the 1.0 MB limit" in results[
        4
    ].error
    pr.SEEN.clear()
    results = pr.predict_images(predictor, photos[:3], keep_images=False, limits=pr.Limits(100, 100, 0))
    assert not any(r.ok for r in results) and "too many megapixels" in results[0].error


def test_the_same_photo_is_not_judged_twice_by_the_same_model(predictor, monkeypatch):
    pr.SEEN.clear()
    calls = []
    original = type(predictor).predict
    monkeypatch.setattr(
        type(predictor), "predict", lambda self, px: calls.append(len(px)) or original(self, px)
    )
    photo = red_png()
    first = pr.predict_images(predictor, [("a.png", photo)], unsure_threshold=0.5)
    again = pr.predict_images(predictor, [("b.png", photo)], unsure_threshold=0.999)  # the slider moved
    assert calls == [1]  # the model ran once
    assert first[0].digest == again[0].digest and again[0].image is not None
    assert first[0].confidence == again[0].confidence and again[0].unsure and not first[0].unsure
    pr.predict_images(predictor, [("c.png", red_png() + b"")], unsure_threshold=0.5)
    assert calls == [1]
