"""The decoder's memory is bounded: a tiny file claiming 7000 x 7000 16-bit pixels costs at most
~250 MB over the process baseline, and a batch of them decoded in parallel stays under the budget.

Each case runs in a fresh process that samples its own RSS (psutil, every 5 ms) while decoding.
Memory, not time, is asserted (the machine's speed varies; its memory accounting does not).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SIDE = 7000  # 49 megapixels: under the 50-megapixel limit
MB = 1024 * 1024


def _chunk(cid: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data) & 0xFFFFFFFF)


def png16_rgba(path: Path, side: int = SIDE) -> Path:
    """A 16-bit RGBA PNG (Pillow can't write one): a smooth gradient with a fading alpha, tiny on disk."""
    x = np.linspace(0, 65535, side).astype(">u2")
    px = np.stack([x, x[::-1], x, x[::-1]], axis=1)
    first = b"\x00" + px.tobytes()
    up = b"\x02" + bytes(side * 8)  # "Up" filter, no change: compresses to almost nothing
    comp = zlib.compressobj(9)
    data = comp.compress(first) + b"".join(comp.compress(up * 64) for _ in range((side - 1) // 64))
    data += comp.compress(up * ((side - 1) % 64)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )
    return path


def png16_grey(path: Path, side: int = SIDE) -> Path:
    grad = np.broadcast_to(np.linspace(0, 65535, side).astype(np.uint16), (side, side))
    Image.fromarray(np.ascontiguousarray(grad)).save(path)  # mode I;16
    return path


PROBE = r"""
import json, sys, threading, time
import psutil
sys.path.insert(0, {root!r})
from lib.data import images
images.tune_malloc()  # what the app does at start-up
proc = psutil.Process()
import numpy
from lib.serve import predict
base = proc.memory_info().rss
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
{body}
done.set()
time.sleep(0.02)
print(json.dumps({{"peak_mb": (max(peak[0], proc.memory_info().rss) - base) / 2**20, "out": out}}))
"""


def _measure(body: str, env: dict | None = None) -> dict:
    code = PROBE.format(root=str(ROOT), body=body)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("huge")
    return {"grey16": png16_grey(folder / "grey16.png"), "rgba16": png16_rgba(folder / "rgba16.png")}


@pytest.mark.parametrize("kind", ["grey16", "rgba16"])
def test_one_large_16_bit_png_costs_at_most_250_mb(huge, kind):
    path = huge[kind]
    assert path.stat().st_size < 2 * MB  # a small upload ...
    found = _measure(f"out = list(images.decode({str(path)!r}, 160).shape)")
    assert found["out"] == [160, 160, 3]
    assert found["peak_mb"] <= 250, found  # ... that used to cost 1.1-1.3 GB
    thumb = _measure(f"out = list(images.thumbnail({str(path)!r}, 256).shape)")
    assert thumb["peak_mb"] <= 250, thumb


def test_a_zip_of_large_pngs_decoded_in_parallel_stays_under_the_budget(huge):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"grey{i}.png", huge["grey16"].read_bytes())
            zf.writestr(f"rgba{i}.png", huge["rgba16"].read_bytes())
    zpath = huge["grey16"].with_name("batch.zip")
    zpath.write_bytes(buf.getvalue())
    body = f"""
class Flat:  # a stand-in model: this measures decoding, not the network
    classes, size = ["a", "b"], 160
    def predict(self, pixels):
        return numpy.full((len(pixels), 2), 0.5, numpy.float32)
results = predict.predict_images(Flat(), [("batch.zip", open({str(zpath)!r}, "rb").read())], keep_images=False)
out = [r.ok for r in results]
"""
    found = _measure(body, env={"STUDIO_DECODE_BUDGET_MB": "400"})
    assert found["out"] == [True] * 8
    assert found["peak_mb"] <= 400 + 100, found  # budget + decoder state; was ~5 GB for 16 such files
