"""lib.data.sources: safe zip extraction, the bundled sample, the cats-vs-dogs download."""

from __future__ import annotations

import http.server
import io
import os
import socket
import stat
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
from PIL import Image

from lib import files
from lib.data import scan as scanning
from lib.data import sources
from lib.errors import DiskFull, UserError

RED, GREEN, BLUE = (200, 40, 40), (40, 180, 60), (40, 60, 200)


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def _zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def _png(seed: int, colour=RED) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (48, 48, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _nothing_in(folder) -> bool:
    return not folder.exists() or os.listdir(folder) == []


def test_extract_zip_returns_the_top_folder_and_skips_macosx(tmp_path):
    entries = {
        f"photos/{c}/{i}.png": _png(i + 10 * n, col)
        for n, (c, col) in enumerate((("red", RED), ("green", GREEN)))
        for i in range(4)
    }
    entries["__MACOSX/photos/red/._0.png"] = b"\0\5\26\7"
    dest = tmp_path / "uploads" / "abc"
    root = sources.extract_zip(_zip(entries), dest)
    assert root == dest / "photos"
    assert not (dest / "__MACOSX").exists()
    s = scanning.scan(root)
    assert s.classes == ["green", "red"] and "hidden" not in {p.kind for p in s.problems}
    assert os.listdir(dest.parent) == ["abc"]  # no partial folders left
    # A finished extraction is reused as is.
    assert sources.extract_zip(b"not even a zip", dest) == root


def test_extract_zip_from_a_path(tmp_path):
    zpath = tmp_path / "d.zip"
    zpath.write_bytes(_zip({"red/a.png": _png(1), "green/b.png": _png(2, GREEN)}))
    root = sources.extract_zip(zpath, tmp_path / "out")
    assert root == tmp_path / "out" and (root / "red" / "a.png").is_file()


@pytest.mark.parametrize(
    ("entries", "symlinks", "limits", "match"),
    [
        ({"../evil.png": b"x", "a/b.png": b"y"}, None, {}, "leaves its folder"),
        ({"ok/../../evil.png": b"x"}, None, {}, "leaves its folder"),
        ({"/abs/evil.png": b"x"}, None, {}, "absolute"),
        ({"C:/evil.png": b"x"}, None, {}, "absolute"),
        ({"a/b.png": b"x"}, {"a/link.png": "/etc/passwd"}, {}, "symbolic link"),
        ({"a/b.png": b"x", "a/more.zip": b"PK"}, None, {}, "another archive"),
        ({"a/b.png": b"x", "a/more.tar.gz": b"x"}, None, {}, "another archive"),
        ({f"a/{i}.png": b"x" for i in range(6)}, None, {"max_files": 5}, "limit is 5"),
        ({"a/big.png": b"x" * 5000}, None, {"max_bytes": 4000}, "limit"),
        ({}, None, {}, "empty"),
    ],
)
def test_extract_zip_rejects_unsafe_archives(tmp_path, entries, symlinks, limits, match):
    dest = tmp_path / "box" / "dest"
    with pytest.raises(UserError, match=match):
        sources.extract_zip(_zip(entries, symlinks), dest, **limits)
    assert not dest.exists()
    assert _nothing_in(tmp_path / "box")  # nothing written, no partial folder left
    assert sorted(os.listdir(tmp_path)) in ([], ["box"])


def test_folder_entries_count_toward_the_file_limit(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(10):
            z.writestr(zipfile.ZipInfo(f"a/empty{i}/"), b"")  # folders only
        z.writestr("a/b.png", _png(1))
    with pytest.raises(UserError, match="11 files and folders; the limit is 5"):
        sources.extract_zip(buf.getvalue(), tmp_path / "box" / "dest", max_files=5)
    assert _nothing_in(tmp_path / "box")  # refused from the directory's count, before anything is made


def test_a_zip_the_disk_has_no_room_for_is_refused_before_unpacking(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "free_bytes", lambda path: 1000)
    data = _zip({"red/a.png": _png(1), "green/b.png": _png(2, GREEN)})
    with pytest.raises(DiskFull, match="The disk is full: unpacking the zip needs"):
        sources.extract_zip(data, tmp_path / "box" / "dest")
    assert os.listdir(tmp_path / "box") == []  # nothing half-unpacked


def test_a_zip_bigger_than_the_room_left_in_the_workspace_says_so(tmp_path):
    data = _zip({"a/big.png": b"x" * 5000, "b/c.png": b"y"})
    with pytest.raises(UserError, match="more than the 4.0 KB left in your workspace"):
        sources.extract_zip(data, tmp_path / "box" / "dest", room=4000)
    assert os.listdir(tmp_path / "box") == []
    assert sources.extract_zip(data, tmp_path / "box" / "ok", room=10_000) == tmp_path / "box" / "ok"


def test_extract_zip_rejects_non_zips(tmp_path):
    with pytest.raises(UserError, match="not a zip"):
        sources.extract_zip(b"%PDF-1.4 hello", tmp_path / "d")


def test_sample_dataset_is_small_licensed_and_clean():
    root = sources.sample_dataset_dir()
    assert (root / "LICENSE").is_file() and "MIT" in (root / "LICENSE").read_text()
    assert "Makerere" in (root / "PROVENANCE.txt").read_text()
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 5_000_000
    s = scanning.scan(root)
    assert s.layout == "train_test" and s.problems == []
    assert s.classes == ["angular_leaf_spot", "bean_rust", "healthy"]
    counts = scanning.class_counts(s)
    assert (counts["test"] >= 10).all() and (counts["train"] >= 40).all()
    assert s.manifest["width"].min() >= 96


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def zip_server(tmp_path):
    """A loopback HTTP server serving a tiny cats_and_dogs_filtered.zip; yields its URL."""
    served = tmp_path / "served"
    served.mkdir()
    entries = {}
    for split in ("train", "validation"):
        for n, (cls, col) in enumerate((("cats", RED), ("dogs", BLUE))):
            for i in range(3):
                entries[f"cats_and_dogs_filtered/{split}/{cls}/{cls}.{i}.png"] = _png(
                    100 * n + 10 * len(split) + i, col
                )
    entries["cats_and_dogs_filtered/vectorize.py"] = b"print('hi')\n"
    (served / "cats_and_dogs_filtered.zip").write_bytes(_zip(entries))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cats_and_dogs_filtered.zip"
    server.shutdown()
    server.server_close()


def test_download_cats_vs_dogs_from_a_local_server(tmp_path, zip_server):
    cache = tmp_path / "cache"
    root = sources.download_cats_vs_dogs(cache, origin=zip_server)
    assert (root / "train").is_dir() and (root / "validation").is_dir()
    assert cache in root.parents
    s = scanning.scan(root)
    assert s.layout == "train_validation" and s.classes == ["cats", "dogs"]
    # Cached: no network needed the second time.
    closed = f"http://127.0.0.1:{_free_port()}/cats_and_dogs_filtered.zip"
    assert sources.download_cats_vs_dogs(cache, origin=closed) == root


def test_download_without_network_says_so(tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}/cats_and_dogs_filtered.zip"
    with pytest.raises(UserError, match="no network connection"):
        sources.download_cats_vs_dogs(tmp_path / "cache", origin=closed)
