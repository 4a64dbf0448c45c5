"""lib.data.feeder: the one image feeder (decode -> batch -> model) used by features, evaluation and
prediction: order, padding, groups, errors that carry the file's path, bounded read-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from lib.data.feeder import Feeder
from lib.errors import ImageError

COLOURS = {"blue": 2, "green": 1, "red": 0}  # the tiny dataset's dominant channel per class


def _paths(tiny_dataset):
    return sorted(str(p) for p in tiny_dataset.rglob("*.png"))


def test_batches_keep_order_are_padded_and_decode_every_image(tiny_dataset):
    paths = _paths(tiny_dataset)
    feeder = Feeder(32, batch=16)
    seen = []
    with feeder.batches(paths) as stream:
        for batch in stream:
            assert batch.pixels.shape == (16, 32, 32, 3) and batch.pixels.dtype == np.uint8
            assert not batch.errors and batch.ok.all()
            assert not batch.pixels[batch.count :].any()  # padding is zeros
            for row, i in enumerate(batch.items):
                channel = int(np.argmax(batch.pixels[row].reshape(-1, 3).mean(axis=0)))
                assert channel == COLOURS[paths[i].split("/")[-2]]
            seen += batch.items.tolist()
    assert seen == list(range(len(paths)))


def test_groups_never_share_a_batch(tiny_dataset):
    paths = _paths(tiny_dataset)
    first, second = list(range(0, 90, 3)), [i for i in range(90) if i % 3]
    with Feeder(32, batch=8).batches(paths, groups=[first, second]) as stream:
        batches = [b.items.tolist() for b in stream]
    assert sum(batches, []) == first + second
    assert all(set(b) <= set(first) or set(b) <= set(second) for b in batches)


def test_run_reports_each_bad_file_with_its_path_and_goes_on(tmp_path, tiny_dataset):
    good = _paths(tiny_dataset)[:5]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    sources = [good[0], str(bad), *good[1:], b"not an image at all"]
    out, errors = Feeder(32, batch=4).run(
        sources, lambda px: px.reshape(len(px), -1).mean(axis=1, keepdims=True)
    )
    assert out.shape == (7, 1)
    assert sorted(errors) == [1, 6]
    assert errors[1].path == str(bad) and str(bad) in str(errors[1]) and "Traceback" not in str(errors[1])
    assert np.isnan(out[1]).all() and np.isnan(out[6]).all() and not np.isnan(np.delete(out, [1, 6], 0)).any()


def test_on_error_raise_stops_with_the_file_named(tmp_path, tiny_dataset):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with (
        pytest.raises(ImageError) as err,
        Feeder(32, batch=2).batches([_paths(tiny_dataset)[0], str(bad)], on_error="raise") as s,
    ):
        list(s)
    assert err.value.path == str(bad)


def test_read_ahead_is_bounded_and_a_closed_stream_stops(tiny_dataset):
    paths = _paths(tiny_dataset) * 4
    feeder = Feeder(64, batch=2, ahead_mb=1)  # 1 MB: a few batches of 64 x 64 x 3
    assert feeder.ahead == max(2, 2**20 // (2 * 64 * 64 * 3))
    stream = feeder.batches(paths)
    next(iter(stream))
    stream.close()
    stream._thread.join(timeout=5)
    assert not stream._thread.is_alive()
    assert stream._queue.qsize() <= feeder.ahead
