"""The attack catalogue: every hostile file of the hardening issue, generated here, sent through the
entry point a visitor reaches, with the outcome it must get.

Each entry is (name, a generator writing the attack into tmp_path, the entry point, the outcome):
- entry points: the one decoder (`decoder`), a dataset scan (`scan`), the Predict batch path
  (`predict`: lib.serve.inputs + lib.serve.predict with a stand-in model), zip upload for a dataset
  (`upload`: lib.data.sources.open_upload, the settings' limits), and a few direct ones (`labels`,
  `workspace`) for names and tokens;
- outcomes: a plain-words refusal (a phrase matched; the message is one line, with no traceback and
  no server folder in it), or "accepted within memory" (decoded in a fresh process whose peak RSS over
  its baseline, read from VmHWM, stays under the per-image bound from the settings and under what
  the decoder reserved from its shared byte budget), or a check of what the app writes (its CSV
  files, its labels, its escaped text).

Why tests/ and not tests/data/: tests mirror lib/, and the catalogue crosses lib's families (the
decoder and zip extraction in lib/data, the Predict inputs in lib/serve, the CSV writers of
lib/serve, lib/evaluate and lib/data/curation, lib/text's escaping, lib/workspace's tokens), so like
the tests of the shared modules it sits at the top, one file holding the whole list in one place.
Weights bombs and malformed model configs are tests/models/test_safety.py's.

Files are hand-made to be tiny and fast to write (PNG of zero rows from one repeated deflate block,
JPEG with one-symbol Huffman tables, LZW of zero runs, RLE8 BMP, lossless WebP with zero-bit
pixels, zip central directories written byte by byte), so a 49-megapixel image costs kilobytes.
Memory is measured only where the bound itself is the outcome; nothing asserts time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lib import settings, workspace
from lib.data import curation, images, sources
from lib.data import scan as scanning
from lib.errors import ImageError, UserError
from lib.evaluate.metrics import prob_column
from lib.evaluate.predictions import predictions_csv
from lib.serve import predict as pr
from lib.text import md_escape, plot_escape

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
MIB = 1024 * 1024
UNDER = (7000, 7000)  # 49.0 megapixels: just under the 50-megapixel default
OVER = (7072, 7072)  # 50.01 megapixels: just over it
SLACK_MB = 30  # the interpreter, Pillow's and numpy's own state: what a decode may add to its estimate
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ----------------------------------------------------------------------------------------------
# Generators: PNG, JPEG, BMP, GIF, WebP
# ----------------------------------------------------------------------------------------------


def _chunk(cid: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data) & 0xFFFFFFFF)


_BLOCK = 1 << 20
_z = zlib.compressobj(9, zlib.DEFLATED, -15)
_ZERO_BLOCK = _z.compress(bytes(_BLOCK)) + _z.flush(zlib.Z_FULL_FLUSH)  # self-contained: may be repeated


def _raw_deflate_zeros(n: int) -> bytes:
    """A raw deflate stream of n zero bytes in about n/1000 bytes, without compressing n bytes."""
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    return _ZERO_BLOCK * (n // _BLOCK) + tail.compress(bytes(n % _BLOCK)) + tail.flush()


def _zlib_zeros(n: int) -> bytes:
    return b"\x78\xda" + _raw_deflate_zeros(n) + struct.pack(">I", ((n % 65521) << 16) | 1)  # adler32


def _crc_zeros(n: int) -> int:
    crc, block = 0, bytes(16 * _BLOCK)
    for start in range(0, n, len(block)):
        crc = zlib.crc32(memoryview(block)[: min(len(block), n - start)], crc)
    return crc


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png(
    w: int, h: int, bits: int = 8, ctype: int = 2, *, before=(), after=(), idat: bytes | None = None
) -> bytes:
    """A PNG of zero rows (black, or palette index 0), any bit depth and colour type."""
    row = 1 + (w * bits * _PNG_CHANNELS[ctype] + 7) // 8
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, ctype, 0, 0, 0))
    out += b"".join(before)
    if ctype == 3:
        out += _chunk(b"PLTE", bytes([10, 200, 30]))
    out += _chunk(b"IDAT", _zlib_zeros(h * row) if idat is None else idat)
    return out + b"".join(after) + _chunk(b"IEND", b"")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _seg(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg(w: int, h: int, sampling=((1, 1),), *, progressive: bool = False, multiscan: bool = False) -> bytes:
    """A flat JPEG whose every block is coded in 2 bits (1 for a progressive DC scan): one-symbol
    Huffman tables. `sampling` gives each component's (h, v) factors: 1 grey, 3 YCbCr, 4 CMYK."""
    n = len(sampling)
    hmax, vmax = max(s[0] for s in sampling), max(s[1] for s in sampling)
    out = b"\xff\xd8"
    if n == 4:
        out += _seg(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))  # plain CMYK
    out += _seg(0xDB, b"\x00" + b"\x01" * 64)
    sof = b"".join(bytes([i + 1, (hs << 4) | vs, 0]) for i, (hs, vs) in enumerate(sampling))
    out += _seg(0xC2 if progressive else 0xC0, struct.pack(">BHHB", 8, h, w, n) + sof)
    one_code = bytes([1] + [0] * 15) + b"\x00"
    out += _seg(0xC4, b"\x00" + one_code + b"\x10" + one_code)

    def scan(comps: list[int], se: int, bits: int) -> bytes:
        if len(comps) == 1:
            hs, vs = sampling[comps[0]]
            blocks = _ceil(_ceil(w * hs, hmax), 8) * _ceil(_ceil(h * vs, vmax), 8)
        else:
            blocks = _ceil(w, 8 * hmax) * _ceil(h, 8 * vmax) * sum(hs * vs for hs, vs in sampling)
        total = blocks * bits
        data = bytes(total // 8) + (bytes([0xFF >> (total % 8)]) if total % 8 else b"")
        head = bytes([len(comps)]) + b"".join(bytes([c + 1, 0]) for c in comps) + bytes([0, se, 0])
        return _seg(0xDA, head) + data

    if progressive:
        out += scan(list(range(n)), 0, 1)  # the DC scan; no AC scans: every AC coefficient stays 0
    elif multiscan:
        out += b"".join(scan([c], 63, 2) for c in range(n))
    else:
        out += scan(list(range(n)), 63, 2)
    return out + b"\xff\xd9"


def bmp_rle8(w: int, h: int) -> bytes:
    """An 8-bit run-length BMP of palette index 0: two bytes per 255 pixels."""
    line = b"\xff\x00" * (w // 255) + (bytes([w % 255, 0]) if w % 255 else b"") + b"\x00\x00"
    data = line * h + b"\x00\x01"
    palette = bytes(4 * 256)
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + dib + palette + data


class _Bits:
    """Least-significant-bit-first writer (GIF's LZW, WebP's lossless bitstream)."""

    def __init__(self) -> None:
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value: int, width: int) -> None:
        self.acc |= (value & ((1 << width) - 1)) << self.n
        self.n += width
        while self.n >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.n -= 8

    def bytes(self) -> bytes:
        return bytes(self.out) + (bytes([self.acc]) if self.n else b"")


def _lzw_zeros(n: int, min_size: int = 2) -> bytes:
    """GIF LZW for n zero pixels: runs of 1, 2, 3 ... (each code the one being defined), a clear
    code when the table is full: about 8 million pixels per 6 KB."""
    clear, eoi = 1 << min_size, (1 << min_size) + 1
    w, width, left = _Bits(), min_size + 1, n
    while left:
        w.put(clear, width)
        width, nxt = min_size + 1, eoi + 1
        w.put(0, width)
        left, run = left - 1, 1
        while left and nxt < 4096:
            run += 1
            w.put(nxt if run <= left else (0 if left == 1 else eoi + left - 1), width)
            left -= min(run, left)
            nxt += 1
            if nxt == 1 << width and width < 12:
                width += 1
    w.put(eoi, width)
    return w.bytes()


def gif(w: int, h: int, frame: tuple[int, int] | None = None, frames: int = 1) -> bytes:
    """A GIF with a w x h screen and `frames` black frames of `frame` size (default: the screen)."""
    fw, fh = frame or (w, h)
    data = _lzw_zeros(fw * fh)
    blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x81, 0, 0) + bytes(12)  # 4-colour global table
    one = b"\x2c" + struct.pack("<HHHHB", 0, 0, fw, fh, 0) + b"\x02" + blocks + b"\x00"
    return head + one * frames + b"\x3b"


def _vp8l(w: int, h: int) -> bytes:
    """A lossless WebP bitstream of a black w x h image: five one-symbol codes, 0 bits per pixel."""
    b = _Bits()
    for value, width in ((0x2F, 8), (w - 1, 14), (h - 1, 14), (0, 1), (0, 3), (0, 1), (0, 1), (0, 1)):
        b.put(value, width)
    for _ in range(5):
        b.put(0b0001, 4)  # a simple code of one 1-bit symbol: 0
    return b.bytes()


def _wchunk(cid: bytes, data: bytes) -> bytes:
    return cid + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"")


def _riff(*chunks: bytes) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp(w: int, h: int) -> bytes:
    return _riff(_wchunk(b"VP8L", _vp8l(w, h)))


def webp_anim(w: int, h: int, frames: int) -> bytes:
    """An animated WebP: a w x h canvas and `frames` 1 x 1 frames (40 bytes each)."""
    canvas = (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    vp8x = _wchunk(b"VP8X", b"\x02\0\0\0" + canvas)
    frame = _wchunk(b"ANMF", bytes(12) + (100).to_bytes(3, "little") + b"\0" + _wchunk(b"VP8L", _vp8l(1, 1)))
    return _riff(vp8x, _wchunk(b"ANIM", bytes(6)), frame * frames)


def small_png(colour=(200, 40, 40), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(sum(colour))
    px = np.clip(np.array(colour) + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(px).save(buf, "PNG")
    return buf.getvalue()


def saved(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Generators: zip files written byte by byte
# ----------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One zip entry: `data` as stored (method 0) or raw deflate (8); size/crc as declared."""

    name: str
    data: bytes = b""
    size: int | None = None
    crc: int | None = None
    method: int = 0
    mode: int = 0o100644
    offset: int | None = None  # point the directory entry at another member's local header


def raw_zip(members: list[Member], *, count: int | None = None) -> bytes:
    """A zip from its records; `count`: what the end record says the directory holds."""
    body, central, offsets = bytearray(), bytearray(), []
    for m in members:
        name = m.name.encode("utf-8")
        size = len(m.data) if m.size is None else m.size
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        if m.offset is None:
            offsets.append(len(body))
            body += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0x800, m.method, 0, 0x21, crc, len(m.data), size,
                                len(name), 0) + name + m.data  # fmt: skip
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 0x314, 20, 0x800, m.method, 0, 0x21, crc, len(m.data),
                               size, len(name), 0, 0, 0, 0, m.mode << 16,
                               offsets[-1] if m.offset is None else offsets[m.offset]) + name  # fmt: skip
    n = len(members) if count is None else count
    end = struct.pack(
        "<4s4H2IH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), len(central), len(body), 0
    )
    return bytes(body + central) + end


def many_entries_zip(n: int, *, declared: int | None = None) -> bytes:
    """A zip listing n empty folders (48 bytes each, all pointing at one local header), its end
    record saying `declared` (zip64 past 65,535): a million entries in 48 MB, in milliseconds."""
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, 2, 0) + b"d/"
    record = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 0x314, 20, 0, 0, 0, 0x21, 0, 0, 0, 2, 0, 0, 0, 0,
                         (stat.S_IFDIR | 0o755) << 16 | 0x10, 0) + b"d/"  # fmt: skip
    central = record * n
    declared = n if declared is None else declared
    if declared <= 0xFFFF:
        end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, declared, declared, len(central), len(local), 0)
        return local + central + end
    z64 = struct.pack(
        "<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, declared, declared, len(central), len(local)
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(local) + len(central), 1)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + central + z64 + locator + end


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zeros_member(name: str, n: int, **kw: Any) -> Member:
    """n zero bytes deflated; the size and CRC declared are the real ones unless given."""
    crc = kw.pop("crc", None)
    return Member(name, _raw_deflate_zeros(n), size=kw.pop("size", n), crc=_crc_zeros(n) if crc is None else crc,
                  method=8, **kw)  # fmt: skip


def dataset_zip(*extra: Member) -> bytes:
    """Two small classes (so a scan of the rest works) plus the attack's members."""
    good = [Member(f"photos/{c}/{i}.png", small_png(col)) for c, col in (("red", (200, 40, 40)),
            ("blue", (40, 60, 200))) for i in range(2)]  # fmt: skip
    return raw_zip([*good, *extra])


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    message: str = ""
    value: Any = None


def _in_dataset(tmp: Path, name: str, data: bytes, cls: str = "attack") -> Path:
    """The attack file in a dataset folder next to a usable class, so the scan itself runs."""
    root = tmp / "data"
    for i in range(2):
        (root / "good").mkdir(parents=True, exist_ok=True)
        (root / "good" / f"{i}.png").write_bytes(small_png((40 + 80 * i, 90, 200)))
    path = root / cls / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def via_decoder(made: Path, tmp: Path) -> Outcome:
    try:
        return Outcome(True, value=images.decode(made, 160))
    except ImageError as exc:
        return Outcome(False, str(exc))


def via_scan(made: Path, tmp: Path) -> Outcome:
    """A file (its row: usable, or the reason in plain words) or a folder (the whole scan)."""
    root = made if made.is_dir() else made.parents[1]
    try:
        found = scanning.scan(root)
    except UserError as exc:
        return Outcome(False, str(exc))
    if made.is_dir():
        return Outcome(True, value=found)
    row = found.manifest.set_index("relpath").loc[made.relative_to(root).as_posix()]
    return Outcome(bool(row["usable"]), str(row["detail"]), value=found)


class StandIn:
    """A model for the Predict path (the inputs and the verdicts are tested, not a network): the
    first class at 70%, the rest sharing the remainder."""

    size = 32

    def __init__(self, classes=("red", "blue")) -> None:
        self.classes = list(classes)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        k = len(self.classes)
        row = np.full(k, 0.3 / (k - 1), np.float32)
        row[0] = 0.7
        return np.tile(row, (len(pixels), 1))


def via_predict(made: Any, tmp: Path) -> Outcome:
    """(name, bytes or path) items, optionally with the model's classes: {"items": [...], "classes": [...]}."""
    spec = made if isinstance(made, dict) else {"items": made if isinstance(made, list) else [made]}
    model = StandIn(spec.get("classes", ("red", "blue")))
    results = pr.predict_images(model, spec["items"], keep_images=False)
    first_error = next((r for r in results if not r.ok), None)
    return Outcome(first_error is None, first_error.error if first_error else "", value=(results, model))


def via_upload(made: Any, tmp: Path) -> Outcome:
    """An uploaded zip unpacked with this server's limits (lib.data.sources.open_upload)."""
    data = made.read_bytes() if isinstance(made, Path) else made
    dest = tmp / "box" / "upload"
    try:
        return Outcome(True, value=sources.open_upload(data, dest))
    except UserError as exc:
        leftovers = list((tmp / "box").iterdir()) if (tmp / "box").exists() else []
        assert leftovers == [], f"a refused zip left {leftovers}"
        return Outcome(False, str(exc))


def via_direct(made: Any, tmp: Path) -> Outcome:
    return made if isinstance(made, Outcome) else Outcome(True, value=made)


def unparsed(runner: Callable[[Any, Path], Outcome]) -> Callable[[Any, Path], Outcome]:
    """The runner, failing if zipfile built even one entry object: the limit came before parsing."""

    def run(made: Any, tmp: Path) -> Outcome:
        built = [0]
        original = zipfile.ZipInfo

        class Counted(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                built[0] += 1
                super().__init__(*args, **kwargs)

        zipfile.ZipInfo = Counted  # type: ignore[misc]
        try:
            outcome = runner(made, tmp)
        finally:
            zipfile.ZipInfo = original  # type: ignore[misc]
        assert built[0] == 0, f"zipfile parsed {built[0]:,} entries before the limit was checked"
        return outcome

    return run


RUNNERS: dict[str, Callable[[Any, Path], Outcome]] = {
    "decoder": via_decoder,
    "scan": via_scan,
    "predict": via_predict,
    "predict-unparsed": unparsed(via_predict),
    "upload": via_upload,
    "upload-unparsed": unparsed(via_upload),
    "labels": via_direct,
    "workspace": via_direct,
}


# ----------------------------------------------------------------------------------------------
# The memory probe: one decode in a fresh process, its peak RSS over its baseline
# ----------------------------------------------------------------------------------------------

PROBE = r"""
import json, sys
sys.path.insert(0, {root!r})
from lib.data import images
from lib.errors import ImageError
images.tune_malloc()  # what the app does at start-up
def status(key):  # kB lines of /proc/self/status: VmRSS now, VmHWM the peak of this address space
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))
base = status("VmRSS")
try:
    shape, error = list(images.decode(sys.argv[1], 160).shape), None
except ImageError as exc:
    shape, error = None, str(exc)
peak = status("VmHWM")
reserved = images.budget().peak  # what the decode reserved from the process-wide byte budget
print(json.dumps({{"shape": shape, "error": error, "peak_mb": (peak - base) / 1e6, "reserved_mb": reserved / 1e6}}))
"""


def measure(path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}  # the default settings
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(ROOT)), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_image_bound_mb() -> float:
    """What one decode may cost: the settings' per-image limit (estimated from the header before any
    pixel exists) plus the interpreter's own working memory."""
    return settings.max_decode_mb() + SLACK_MB


# ----------------------------------------------------------------------------------------------
# The catalogue
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """One hostile input: how it is made, where it goes in, and what must come out."""

    name: str
    make: Callable[[Path], Any]  # writes the attack under tmp_path; returns what the entry point takes
    via: str  # a key of RUNNERS
    refusal: str | None = None  # a regular expression the plain-words refusal matches
    memory: bool = False  # accepted, and one decode stays under per_image_bound_mb() (own process)
    check: Callable[[Outcome, Path], None] | None = None  # anything else the outcome must show
    env: dict[str, str] = field(default_factory=dict)  # settings for this entry (e.g. hosted limits)


HOSTED = {"STUDIO_HOSTED": "1"}
# Refusals several entries share.
CORRUPT_HEADER = r"The image is corrupt or truncated: it starts like a {} file but its header can't be read\."
TEXT_TOO_LARGE = re.escape(
    "The image's metadata is too large once unpacked (a PNG text block or colour profile over 1 MB, or 64 MB of "
    "text in all): save a copy without its metadata."
)
METADATA_TOO_LARGE = (
    r"The image carries {} MB of metadata \(EXIF, colour profile, text or comments\) besides its pixels; "
    r"the limit is 16 MB: save a copy without its metadata\."
)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def file(name: str, data: Callable[[], bytes]) -> Callable[[Path], Path]:
    return lambda tmp: _write(tmp, name, data())


def in_dataset(name: str, data: Callable[[], bytes]) -> Callable[[Path], Path]:
    return lambda tmp: _in_dataset(tmp, name, data())


def photo(name: str, data: Callable[[], bytes]) -> Callable[[Path], tuple[str, bytes]]:
    return lambda tmp: (name, data())


def upload(data: Callable[[], bytes]) -> Callable[[Path], bytes]:
    return lambda tmp: data()


def accepted(outcome: Outcome, tmp: Path) -> None:
    assert outcome.ok, outcome.message


def decoded(outcome: Outcome, tmp: Path) -> None:
    accepted(outcome, tmp)
    if isinstance(outcome.value, np.ndarray):
        assert outcome.value.shape == (160, 160, 3) and outcome.value.dtype == np.uint8


PIXEL_BOMBS: dict[str, tuple[str, Callable[[int, int], bytes]]] = {
    "png-grey-8bit": ("bomb.png", lambda w, h: png(w, h, 8, 0)),
    "png-rgb-8bit": ("bomb.png", lambda w, h: png(w, h, 8, 2)),
    "png-rgba-8bit": ("bomb.png", lambda w, h: png(w, h, 8, 6)),
    "png-palette": ("bomb.png", lambda w, h: png(w, h, 8, 3)),
    "png-grey-16bit": ("bomb.png", lambda w, h: png(w, h, 16, 0)),
    "png-rgba-16bit": ("bomb.png", lambda w, h: png(w, h, 16, 6)),
    "jpeg-cmyk": ("bomb.jpg", lambda w, h: jpeg(w, h, ((1, 1),) * 4)),
    "jpeg-progressive-420": ("bomb.jpg", lambda w, h: jpeg(w, h, ((2, 2), (1, 1), (1, 1)), progressive=True)),
    "bmp-rle8": ("bomb.bmp", bmp_rle8),
    "gif": ("bomb.gif", lambda w, h: gif(w, h)),
    "webp-lossless": ("bomb.webp", webp),
}

PIXEL_CATALOGUE = [
    *(
        Attack(f"pixels-over-limit-{kind}", file(name, lambda make=make: make(*OVER)), "decoder",
               refusal=r"The image is too large: 7072x7072 is 50 megapixels, the limit is 50\.")
        for kind, (name, make) in PIXEL_BOMBS.items()
    ),
    *(
        Attack(f"pixels-under-limit-{kind}", file(name, lambda make=make: make(*UNDER)), "decoder", memory=True)
        for kind, (name, make) in PIXEL_BOMBS.items()
        if kind != "webp-lossless"
    ),
    # libwebp holds two canvases and a frame copy (16 bytes a pixel): refused from the header
    Attack("pixels-under-limit-webp-lossless", file("bomb.webp", lambda: webp(*UNDER)), "decoder",
           refusal=r"too large to decode safely: a 7000x7000 WEBP image needs about 800 MB of memory, "
                   r"the limit is 220 MB"),
    Attack("pixels-webp-at-the-decode-limit", file("edge.webp", lambda: webp(3500, 3600)), "decoder", memory=True),
    # libjpeg holds every coefficient of a multi-scan JPEG (2 bytes a pixel per full-size component)
    Attack("pixels-jpeg-progressive-444", file("bomb.jpg", lambda: jpeg(*UNDER, ((1, 1),) * 3, progressive=True)),
           "decoder", refusal=r"too large to decode safely: a 7000x7000 JPEG image in colour needs about 313 MB"),
    Attack("pixels-jpeg-progressive-cmyk", file("bomb.jpg", lambda: jpeg(*UNDER, ((1, 1),) * 4, progressive=True)),
           "decoder", refusal=r"too large to decode safely: a 7000x7000 JPEG image in CMYK needs about 411 MB"),
    Attack("pixels-jpeg-multi-scan-444", file("bomb.jpg", lambda: jpeg(*UNDER, ((1, 1),) * 3, multiscan=True)),
           "decoder", refusal=r"a 7000x7000 JPEG image in colour needs about 313 MB of memory, the limit is 220 MB "
                              r"\(about 34 megapixels for this kind of image\)"),
    Attack("pixels-jpeg-multi-scan-420", file("bomb.jpg", lambda: jpeg(*UNDER, ((2, 2), (1, 1), (1, 1)),
                                                                        multiscan=True)), "decoder", memory=True),
    Attack("pixels-jpeg-progressive-grey", file("bomb.jpg", lambda: jpeg(*UNDER, progressive=True)), "decoder",
           memory=True),
    Attack("pixels-jpeg-progressive-444-at-the-decode-limit", file("edge.jpg", lambda: jpeg(
               5600, 5600, ((1, 1),) * 3, progressive=True)), "decoder", memory=True),
    Attack("pixels-over-limit-through-predict", photo("bomb.png", lambda: png(*OVER, 8, 0)), "predict",
           refusal=r"too large: 7072x7072 is 50 megapixels"),
]  # fmt: skip

FRAME_CATALOGUE = [
    Attack("frames-gif-a-million-frames", file("many.gif", lambda: gif(64, 48, (1, 1), 1_000_000)), "decoder",
           memory=True),
    Attack("frames-gif-a-million-frames-scanned", in_dataset("many.gif", lambda: gif(64, 48, (1, 1), 1_000_000)),
           "scan", check=lambda o, tmp: (decoded(o, tmp), _frames_capped(tmp / "data" / "attack" / "many.gif"))),
    Attack("frames-gif-screen-65535-square", file("screen.gif", lambda: gif(65535, 65535, (1, 1))), "decoder",
           refusal=r"too large: 65535x65535 is 4295 megapixels"),
    Attack("frames-gif-frame-larger-than-its-screen", file("frame.gif", lambda: gif(64, 48, (8000, 8000))),
           "decoder", refusal=r"too large: 8000x8000 is 64 megapixels"),
    Attack("frames-apng-two-billion-frames", file("many.png", lambda: png(64, 48, before=[
               _chunk(b"acTL", struct.pack(">II", 0x7FFFFFFF, 0)),
               _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 64, 48, 0, 0, 1, 10, 0, 0))])),
           "decoder", check=decoded),
    Attack("frames-apng-700k-frames", file("many.png", lambda: _apng(700_000)), "decoder", check=decoded),
    Attack("frames-apng-frame-larger-than-its-canvas", file("frame.png", lambda: png(64, 48, before=[
               _chunk(b"acTL", struct.pack(">II", 2, 0)),
               _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 60000, 60000, 0, 0, 1, 10, 0, 0))])),
           "decoder", refusal=CORRUPT_HEADER.format("PNG")),
    Attack("frames-webp-animated-100k-frames", file("many.webp", lambda: webp_anim(64, 48, 100_000)), "decoder",
           memory=True),
    Attack("frames-webp-animated-1.2-million-frames", file("many.webp", lambda: webp_anim(64, 48, 1_200_000)),
           "decoder", refusal=r"too large to decode safely: a 64x48 WEBP image of 48 MB needs about 256 MB of "
                              r"memory, the limit is 220 MB\."),
    Attack("frames-webp-animated-canvas-16384", file("canvas.webp", lambda: webp_anim(16384, 16384, 1)),
           "decoder", refusal=r"too large: 16384x16384 is 268 megapixels"),
]  # fmt: skip


def _apng(frames: int) -> bytes:
    """An APNG of 1 x 1 frames (64 bytes each): 18 MB of frame control, none of it metadata."""
    fctl = [_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 2 * i - 1, 1, 1, 0, 0, 1, 10, 0, 0)) +
            _chunk(b"fdAT", struct.pack(">I", 2 * i) + _zlib_zeros(4)) for i in range(1, 3)]  # fmt: skip
    head = [_chunk(b"acTL", struct.pack(">II", frames, 0)), _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 64, 48, 0,
            0, 1, 10, 0, 0))]  # fmt: skip
    return png(64, 48, before=head, after=[fctl[0] * (frames // 2), fctl[1] * (frames - 1 - frames // 2)])


def _frames_capped(path: Path) -> None:
    info = images.inspect(path)
    assert info.frames == images.GIF_FRAME_CAP  # counted up to the cap, never walked to the end


def _bad_crc(data: bytes, cid: bytes) -> bytes:
    at = data.index(cid)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    out = bytearray(data)
    out[at + 4 + length] ^= 0xFF
    return bytes(out)


def _ztxt(size: int, key: bytes = b"Comment") -> bytes:
    return _chunk(b"zTXt", key + b"\0\0" + _zlib_zeros(size))


FORMAT_CATALOGUE = [
    Attack("format-tiff-named-jpg", file("photo.jpg", lambda: saved(Image.new("RGB", (40, 40)), "TIFF")),
           "decoder", refusal=r"TIFF images \(and camera RAW files\) are not supported"),
    Attack("format-pdf-named-jpg", file("photo.jpg", lambda: b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
           "decoder", refusal=r"This is a PDF document, not a photo"),
    Attack("format-svg-named-png", file("photo.png", lambda: b"<?xml version='1.0'?>\n<svg xmlns="
                                        b"'http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"),
           "decoder", refusal=r"This is an SVG drawing, not a photo"),
    Attack("format-psd-named-jpg", file("photo.jpg", lambda: b"8BPS\x00\x01" + bytes(20) + b"\x00\x03"),
           "decoder", refusal=r"This is a Photoshop \(PSD\) file"),
    Attack("format-ico-named-png", file("photo.png", lambda: saved(Image.new("RGB", (32, 32)), "ICO")),
           "decoder", refusal=r"This is an icon \(ICO\) file, not a photo"),
    Attack("format-html-named-jpg", file("photo.jpg", lambda: b"<!DOCTYPE html><html><body onload=alert(1)>"),
           "decoder", refusal=r"This is a web page \(HTML\), not a photo"),
    Attack("format-zip-named-png", file("photo.png", lambda: zip_of({"a.png": small_png()})), "decoder",
           refusal=r"This is an archive \(zip, gz, 7z or rar\), not a photo"),
    Attack("format-pdf-named-jpg-through-predict", photo("photo.jpg", lambda: b"%PDF-1.4\n%%EOF\n"), "predict",
           refusal=r"This is a PDF document, not a photo"),
    Attack("format-empty-file", file("empty.png", lambda: b""), "decoder", refusal=r"The file is empty \(0 bytes\)"),
    Attack("format-empty-file-scanned", in_dataset("empty.png", lambda: b""), "scan",
           refusal=r"The file is empty \(0 bytes\)"),
    Attack("format-truncated-png", file("cut.png", lambda: (lambda d: d[: len(d) // 2])(png(640, 480, 8, 2))),
           "decoder", refusal=r"The image is corrupt or truncated"),
    Attack("format-truncated-png-scanned", in_dataset("cut.png", lambda: (lambda d: d[: len(d) // 2])(
               png(640, 480, 8, 2))), "scan", refusal=r"The image is corrupt or truncated"),
    Attack("format-truncated-jpeg", file("cut.jpg", lambda: (lambda d: d[: len(d) // 2])(
               jpeg(640, 480, ((1, 1),) * 3))), "decoder", refusal=r"The image is corrupt or truncated"),
    Attack("format-png-bad-crc-in-header", file("crc.png", lambda: _bad_crc(png(640, 480), b"IHDR")), "decoder",
           refusal=CORRUPT_HEADER.format("PNG")),
    Attack("format-png-cut-inside-its-header", file("cut.png", lambda: png(640, 480)[:20]), "decoder",
           refusal=r"The image is corrupt or truncated \(Truncated File Read\)\."),
    Attack("format-gif-cut-inside-its-header", file("cut.gif", lambda: gif(64, 48)[:9]), "decoder",
           refusal=CORRUPT_HEADER.format("GIF")),
    # PNG text and profiles: Pillow unpacks each to 1 MB at most and holds 64 MB of text in all
    Attack("format-png-ztxt-bomb-before-the-pixels", file("text.png", lambda: png(64, 48, before=[
               _ztxt(50 * MB)])), "decoder", refusal=TEXT_TOO_LARGE),
    Attack("format-png-ztxt-bomb-after-the-pixels-scanned", in_dataset("text.png", lambda: png(64, 48, after=[
               _ztxt(50 * MB)])), "scan", refusal=TEXT_TOO_LARGE),
    Attack("format-png-ztxt-bomb-after-the-pixels-through-predict", photo("text.png", lambda: png(64, 48, after=[
               _ztxt(50 * MB)])), "predict", refusal=TEXT_TOO_LARGE),
    Attack("format-png-65-text-chunks-of-1mb-after-the-pixels", in_dataset("text.png", lambda: png(64, 48, after=[
               _ztxt(MIB, b"k%d" % i) for i in range(65)])), "scan", refusal=TEXT_TOO_LARGE),
    Attack("format-png-iccp-bomb", file("icc.png", lambda: png(64, 48, before=[_chunk(b"iCCP", b"icc\0\0" + _zlib_zeros(
               50 * MB))])), "decoder", refusal=TEXT_TOO_LARGE),
    # metadata Pillow reads whole on opening: refused from the file's structure, before it does
    Attack("metadata-png-20mb-text-chunk", file("meta.png", lambda: png(64, 48, before=[_chunk(
               b"tEXt", b"Comment\0" + bytes(20 * MB))])), "decoder", refusal=METADATA_TOO_LARGE.format("20")),
    Attack("metadata-png-20mb-private-chunk-after-the-pixels-scanned", in_dataset("meta.png", lambda: png(
               64, 48, after=[_chunk(b"prVt", bytes(20 * MB))])), "scan", refusal=METADATA_TOO_LARGE.format("20")),
    Attack("metadata-jpeg-320-app-segments", file("meta.jpg", lambda: (lambda j: j[:2] + (
               b"\xff\xef" + struct.pack(">H", 65535) + bytes(65533)) * 320 + j[2:])(jpeg(64, 48, ((1, 1),) * 3))),
           "decoder", refusal=METADATA_TOO_LARGE.format("more than 16")),
    Attack("metadata-gif-20mb-comment", file("meta.gif", lambda: (lambda g: g[:25] + b"\x21\xfe" + (
               b"\xff" + bytes(255)) * 80_000 + b"\x00" + g[25:])(gif(64, 48))), "decoder",
           refusal=METADATA_TOO_LARGE.format("more than 16")),
    Attack("format-png-bad-crc-in-pixel-data", in_dataset("crc.png", lambda: _bad_crc(png(640, 480), b"IDAT")),
           "scan", refusal=r"corrupt or truncated \(bad checksum in PNG chunk IDAT\)"),
]  # fmt: skip


def _shares_one_kernel(n: int, size: int, *, one_name: bool = False) -> bytes:
    """A Fifield-style zip: n directory entries pointing at one deflated kernel of `size` zeros
    (named k1.png, k2.png ... or all k.png)."""
    kernel = zeros_member("photos/red/k.png", size)
    return raw_zip([kernel, *(Member("photos/red/k.png" if one_name else f"photos/red/k{i}.png", kernel.data,
                                     size=size, crc=kernel.crc, method=8, offset=0) for i in range(1, n))])  # fmt: skip


def _scan_refuses_the_folder(name: str) -> Callable[[Outcome, Path], None]:
    def check(outcome: Outcome, tmp: Path) -> None:
        assert outcome.ok, outcome.message
        with pytest.raises(UserError) as err:
            scanning.scan(outcome.value)
        message = str(err.value)
        assert f"class folder {name!r}" in message and "control characters or line breaks" in message
        assert_plain(message, tmp)

    return check


def _unpacked(outcome: Outcome, tmp: Path) -> None:
    assert outcome.ok, outcome.message
    assert sorted(p.name for p in outcome.value.iterdir()) == ["blue", "red"]


def _predict_refuses_inner(outcome: Outcome, tmp: Path) -> None:
    results, _ = outcome.value
    by_name = {r.name: r for r in results}
    assert by_name["photos.zip/a.png"].ok
    inner = by_name["photos.zip/inner.png"]
    assert not inner.ok and "nested archives are not opened" in inner.error


ZIP_CATALOGUE = [
    Attack("zip-declared-small-real-600mib", upload(lambda: dataset_zip(
               zeros_member("photos/red/bomb.png", 600 * MIB, size=1000, crc=0))), "upload", env=HOSTED,
           refusal=r"The zip could not be unpacked \(Bad CRC-32 for file 'photos/red/bomb\.png'\)"),
    Attack("zip-declared-small-real-600mib-through-predict", photo("photos.zip", lambda: raw_zip(
               [zeros_member("bomb.png", 600 * MIB, size=1000, crc=0)])), "predict",
           refusal=r"The file is damaged inside the zip \(Bad CRC-32 for file 'bomb\.png'\)"),
    Attack("zip-ratio-1000-to-1-honest-sizes", upload(lambda: dataset_zip(
               zeros_member("photos/red/bomb.png", 600 * MIB))), "upload", env=HOSTED,
           refusal=r"The zip unpacks to 629\.\d MB; the limit is 524 MB\."),
    Attack("zip-many-entries-share-one-kernel", upload(lambda: _shares_one_kernel(100, 10 * MIB)), "upload",
           env=HOSTED, refusal=r"The zip unpacks to 1\.0 GB; the limit is 524 MB\."),
    Attack("zip-nested-zip", upload(lambda: dataset_zip(Member("photos/red/more.zip", zip_of({"a.png": b"x"})))),
           "upload", env=HOSTED, refusal=r"The zip contains another archive \(photos/red/more\.zip\)"),
    Attack("zip-nested-zip-named-png-through-predict", photo("photos.zip", lambda: zip_of(
               {"a.png": small_png(), "inner.png": zip_of({"b.png": small_png()})})), "predict",
           check=_predict_refuses_inner),
    Attack("zip-a-million-folders", upload(lambda: many_entries_zip(1_000_000)), "upload-unparsed", env=HOSTED,
           refusal=r"The zip holds 1,000,000 files and folders; the limit is 5,000\."),
    Attack("zip-a-million-folders-end-record-says-one", upload(lambda: many_entries_zip(1_000_000, declared=1)),
           "upload-unparsed", env=HOSTED, refusal=r"The zip holds more than 5,000 files and folders; the limit is 5,000\."),
    Attack("zip-a-million-folders-through-predict", photo("photos.zip", lambda: many_entries_zip(1_000_000)),
           "predict-unparsed", refusal=r"The zip file lists 1,000,000 files and folders; the limit is 20,000\."),
    Attack("zip-a-million-folders-end-record-says-one-through-predict", photo("photos.zip", lambda: many_entries_zip(
               1_000_000, declared=1)), "predict-unparsed", refusal=r"lists more than 20,000 files and folders"),
    Attack("zip-traversal-dotdot", upload(lambda: dataset_zip(Member("../evil.png", b"x"))), "upload", env=HOSTED,
           refusal=r"The zip has a path that leaves its folder \(\.\./evil\.png\)"),
    Attack("zip-traversal-inside-a-folder", upload(lambda: dataset_zip(Member("photos/red/../../../evil.png", b"x"))),
           "upload", env=HOSTED, refusal=r"path that leaves its folder \(photos/red/\.\./\.\./\.\./evil\.png\)"),
    Attack("zip-traversal-backslashes", upload(lambda: dataset_zip(Member("..\\..\\evil.png", b"x"))), "upload",
           env=HOSTED, refusal=r"path that leaves its folder \(\.\.\\\.\.\\evil\.png\)"),
    Attack("zip-absolute-path", upload(lambda: dataset_zip(Member("/etc/cron.d/evil", b"x"))), "upload", env=HOSTED,
           refusal=r"The zip has an absolute path \(/etc/cron\.d/evil\)"),
    Attack("zip-drive-letter", upload(lambda: dataset_zip(Member("C:/Windows/evil.png", b"x"))), "upload",
           env=HOSTED, refusal=r"absolute path \(C:/Windows/evil\.png\)"),
    Attack("zip-drive-letter-backslashes", upload(lambda: dataset_zip(Member("C:\\Windows\\evil.png", b"x"))),
           "upload", env=HOSTED, refusal=r"absolute path \(C:\\Windows\\evil\.png\)"),
    Attack("zip-unc-path", upload(lambda: dataset_zip(Member("\\\\server\\share\\evil.png", b"x"))), "upload",
           env=HOSTED, refusal=r"absolute path \(\\\\server\\share\\evil\.png\)"),
    Attack("zip-traversal-through-predict", photo("photos.zip", lambda: zip_of({"../../evil.png": small_png()})),
           "predict", refusal=r"it contains a path that leaves the archive \(\.\./\.\./evil\.png\)"),
    Attack("zip-drive-letter-through-predict", photo("photos.zip", lambda: raw_zip(
               [Member("C:\\evil.png", small_png())])), "predict", refusal=r"it contains an absolute path"),
    Attack("zip-symlink-member", upload(lambda: dataset_zip(Member("photos/red/link.png", b"/etc/passwd",
                                                                   mode=stat.S_IFLNK | 0o777))),
           "upload", env=HOSTED, refusal=r"The zip contains a symbolic link \(photos/red/link\.png\)"),
    Attack("zip-symlink-folder", upload(lambda: dataset_zip(Member("photos/etc", b"/etc", mode=stat.S_IFLNK | 0o777),
                                                            Member("photos/etc/passwd", b"x"))),
           "upload", env=HOSTED, refusal=r"symbolic link \(photos/etc\)"),
    Attack("zip-symlink-through-predict", photo("photos.zip", lambda: raw_zip(
               [Member("a.png", small_png()), Member("link.png", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)])),
           "predict", refusal=r"it contains a link \(link\.png\), which is not allowed"),
    Attack("zip-duplicate-names", upload(lambda: dataset_zip(Member("photos/red/0.png", small_png((0, 0, 255))))),
           "upload", env=HOSTED, refusal=r"The zip holds two entries named photos/red/0\.png: it is not safe to unpack\."),
    Attack("zip-duplicate-names-after-dots-and-slashes", upload(lambda: dataset_zip(
               Member("photos/red/./0.png", small_png()), Member("photos//red/0.png", small_png()))),
           "upload", env=HOSTED, refusal=r"two entries named photos/red/0\.png"),
    Attack("zip-duplicate-names-share-one-kernel", upload(lambda: _shares_one_kernel(40, 10 * MIB, one_name=True)),
           "upload", env=HOSTED, refusal=r"two entries named photos/red/k\.png"),
    Attack("zip-file-and-folder-with-one-name", upload(lambda: dataset_zip(Member("photos/red/a", b"x"),
                                                                           Member("photos/red/a/b.png", small_png()))),
           "upload", env=HOSTED, refusal=r"The zip has a file and a folder both named photos/red/a: it is not safe"),
    Attack("zip-name-too-long-for-the-disk", upload(lambda: dataset_zip(Member("photos/red/" + "a" * 300 + ".png",
                                                                               small_png()))),
           "upload", env=HOSTED, refusal=r"could not be unpacked: photos/red/a+\.\.\. can't be written here "
                                         r"\(File name too long\)"),
    Attack("zip-control-characters-in-a-class-folder", upload(lambda: dataset_zip(
               Member("photos/ca\nts/a.png", small_png()))), "upload", env=HOSTED,
           check=_scan_refuses_the_folder("ca\nts")),
]  # fmt: skip


# Names a spreadsheet would run as formulas (OWASP's list: = + - @ tab CR), in folders and files.
FORMULA_CLASSES = ["=cmd|'-C calc'!A0", "+SUM(1+1)", "-2+3", "@SUM(1+1)"]
FORMULA_FILES = ['=HYPERLINK("http://evil.example","x").png', "+1.png", "-1.png", "@SUM(1).png", "\t=1.png",
                 "\r=1.png"]  # fmt: skip
MARKUP_CLASSES = [
    "<a href=javascript:alert(1)>x",
    "<span style=color:red>y</span",
    "<img src=x onerror=alert(1)>",
]


def assert_no_formula(data: bytes) -> list[list[str]]:
    """Every cell of a CSV the app writes: none starts like a formula (numbers aside)."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    for row in rows:
        for cell in row:
            try:
                float(cell)
                continue
            except ValueError:
                pass
            assert not cell.startswith(FORMULA_START), f"{cell!r} would run as a formula"
    return rows


def _formula_dataset(tmp: Path) -> Path:
    root = tmp / "data"
    for n, cls in enumerate(FORMULA_CLASSES):
        for i, name in enumerate(FORMULA_FILES[:3] if n == 0 else [f"{i}.png" for i in range(2)]):
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(small_png((30 + 50 * n, 90 + i, 200 - 40 * n)))
    return root


def _evaluate_and_curation_csv(outcome: Outcome, tmp: Path) -> None:
    assert outcome.ok, outcome.message
    found = outcome.value
    assert sorted(found.classes) == sorted(FORMULA_CLASSES)
    usable = found.usable
    df = usable.assign(actual=usable["class"], predicted=found.classes[0], confidence=0.7,
                       correct=usable["class"] == found.classes[0])  # fmt: skip
    for c in found.classes:
        df[prob_column(c)] = 0.25
    rows = assert_no_formula(predictions_csv(df, found.classes, root=found.root))
    assert {r[0].lstrip("'") for r in rows[1:]} == set(usable["relpath"])  # neutralised, not dropped
    decisions = {p: curation.Decision(p, "relabel", FORMULA_CLASSES[3]) for p in usable["relpath"]}
    rows = assert_no_formula(curation.to_csv(decisions))
    assert {r[2] for r in rows[1:]} == {"'" + FORMULA_CLASSES[3]}


def _results_csv(outcome: Outcome, tmp: Path) -> None:
    results, model = outcome.value
    assert [r.ok for r in results] == [True] * len(FORMULA_FILES)
    rows = assert_no_formula(pr.results_csv(results, model.classes))
    assert [r[0] for r in rows[1:]] == ["'" + n for n in FORMULA_FILES]  # each file still named
    assert len(set(rows[0])) == len(rows[0])  # the class columns stay distinct


def _markup_escaped(outcome: Outcome, tmp: Path) -> None:
    assert outcome.ok, outcome.message
    labels = scanning.health_report(outcome.value)["labels"]
    assert len(labels) == len(MARKUP_CLASSES)
    for label in labels:
        assert "<" not in plot_escape(label) and ">" not in plot_escape(label)
        assert not re.search(r"(?<!\\)[<>\[\]()]", md_escape(label)), md_escape(label)


def _distinct_labels(*expected: str) -> Callable[[Outcome, Path], None]:
    def check(outcome: Outcome, tmp: Path) -> None:
        assert outcome.ok, outcome.message
        report = scanning.health_report(outcome.value)
        assert report["labels"] == list(expected)
        results = pr.predict_images(
            StandIn(outcome.value.classes), [("x.png", small_png())], keep_images=False
        )
        header = next(
            csv.reader(io.StringIO(pr.results_csv(results, outcome.value.classes).decode("utf-8-sig")))
        )
        assert len(set(header)) == len(header) and set(expected) <= set(header)

    return check


def _classes(tmp: Path, names: list[str]) -> Path:
    root = tmp / "data"
    for n, cls in enumerate(names):
        for i in range(2):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(small_png((20 + 45 * n, 100 + i, 220 - 45 * n)))
    return root


NAME_CATALOGUE = [
    Attack("names-formula-folders-and-files-in-the-evaluate-and-doctor-csv", _formula_dataset, "scan",
           check=_evaluate_and_curation_csv),
    Attack("names-formula-files-and-classes-in-the-predict-csv", lambda tmp: {
               "items": [(n, small_png()) for n in FORMULA_FILES], "classes": FORMULA_CLASSES}, "predict",
           check=_results_csv),
    Attack("names-markup-class-folders", lambda tmp: _classes(tmp, MARKUP_CLASSES), "scan", check=_markup_escaped),
    Attack("names-markup-file-name-through-predict", photo("<img src=x onerror=alert(1)>.png", small_png),
           "predict", check=lambda o, tmp: _markup_name(o)),
    Attack("names-colliding-cats-and-Cats", lambda tmp: _classes(tmp, ["cats", "Cats"]), "scan",
           check=_distinct_labels("Cats (Cats)", "Cats (cats)")),
    Attack("names-colliding-bean_rust-and-bean-rust", lambda tmp: _classes(tmp, ["bean_rust", "bean-rust"]), "scan",
           check=_distinct_labels("Bean rust (bean-rust)", "Bean rust (bean_rust)")),
    *(
        Attack(f"names-{what}-in-a-class-folder", lambda tmp, n=name: _classes(tmp, [n, "good"]), "scan",
               refusal=re.escape(f"The class folder {name!r} has control characters or line breaks in its name"))
        for what, name in (("newline", "bad\nname"), ("carriage-return", "=1\r+2"), ("tab", "\t=cmd"),
                           ("escape-sequence", "esc\x1b[31mred"), ("bidi-override", "rtl\u202egpj.exe"))
    ),
]  # fmt: skip


def _markup_name(outcome: Outcome) -> None:
    (result,), _ = outcome.value
    assert result.ok and result.name == "<img src=x onerror=alert(1)>.png"
    assert "<" not in plot_escape(result.name) and not re.search(r"(?<!\\)[<>()]", md_escape(result.name))


def _forged_token(tmp: Path) -> Outcome:
    issued = workspace.issue()
    forged = issued[:-4] + ("AAAA" if not issued.endswith("AAAA") else "BBBB")  # well-formed, never issued
    assert workspace.valid_token(forged) and not workspace.exists(forged)
    assert sorted(p.name for p in workspace.workspaces_root().iterdir()) == [issued]  # nothing made for it
    return Outcome(True, value=issued)


def _traversal_token(tmp: Path) -> Outcome:
    try:
        workspace.workspace_dir("../../../etc")
    except UserError as exc:
        assert not (settings.cache_dir() / "etc").exists()
        return Outcome(False, str(exc))
    return Outcome(True)


def _run_outside(tmp: Path) -> Outcome:
    mine, theirs = workspace.issue(), workspace.issue()
    their_run = workspace.runs_dir(theirs) / "run1"
    their_run.mkdir()
    sneaky = workspace.runs_dir(mine) / ".." / ".." / theirs / "models" / "run1"
    assert sneaky.resolve() == their_run.resolve()
    return Outcome(not workspace.owns(mine, sneaky), value=workspace.owns(theirs, their_run))


WORKSPACE_CATALOGUE = [
    Attack("workspace-forged-token", _forged_token, "workspace", env=HOSTED, check=accepted),
    Attack("workspace-traversal-token", _traversal_token, "workspace", env=HOSTED,
           refusal=r"This workspace link is not valid"),
    Attack("workspace-path-into-another-visitors-runs", _run_outside, "workspace", env=HOSTED,
           check=lambda o, tmp: (accepted(o, tmp), _is(o.value, True))),
]  # fmt: skip


def _is(value: object, expected: object) -> None:
    assert value is expected


def _count_refused(outcome: Outcome, tmp: Path) -> None:
    results, _ = outcome.value
    refused = [r for r in results if not r.ok]
    assert sum(r.ok for r in results) == 50 and len(refused) == 10
    assert all("Only 50 photos are judged per batch here" in r.error for r in refused)


PREDICT_CATALOGUE = [
    Attack("predict-more-photos-than-a-batch", photo("photos.zip", lambda: zip_of(
               {f"{i}.png": small_png((i * 4, 100, 100)) for i in range(60)})), "predict", env=HOSTED,
           check=_count_refused),
    Attack("predict-more-bytes-than-a-batch", photo("photos.zip", lambda: raw_zip(
               [zeros_member("big.png", 60 * MIB)])), "predict", env=HOSTED,
           refusal=r"This batch is over the 52\.4 MB limit here"),
    Attack("predict-more-megapixels-than-a-batch", photo("big.png", lambda: png(*UNDER, 8, 0)), "predict",
           env={"STUDIO_MAX_PREDICT_MEGAPIXELS": "40"},
           refusal=r"This batch holds too many megapixels to judge at once here"),
]  # fmt: skip

CATALOGUE: list[Attack] = [
    *PIXEL_CATALOGUE,
    *FRAME_CATALOGUE,
    *FORMAT_CATALOGUE,
    *ZIP_CATALOGUE,
    *NAME_CATALOGUE,
    *WORKSPACE_CATALOGUE,
    *PREDICT_CATALOGUE,
]


# ----------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------


def assert_plain(message: str, tmp: Path) -> None:
    """One line of words for a person: no traceback, no control characters, no server folder."""
    assert message.strip(), "no message"
    assert not any(ord(ch) < 32 for ch in message), repr(message)
    assert "Traceback" not in message and str(tmp) not in message and "/tmp/" not in message, message


@pytest.fixture(autouse=True)
def default_settings(tmp_path, monkeypatch):
    """Every entry starts from the default settings (local mode), with a cache of its own."""
    for key in [k for k in os.environ if k.startswith("STUDIO_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


def test_the_catalogue_has_an_outcome_for_every_entry():
    names = [a.name for a in CATALOGUE]
    assert len(names) == len(set(names)) and len(names) >= 30
    for a in CATALOGUE:
        assert a.via in RUNNERS and (a.refusal or a.memory or a.check), a.name


@pytest.mark.parametrize("attack", CATALOGUE, ids=lambda a: a.name)
def test_attack(attack: Attack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in attack.env.items():
        monkeypatch.setenv(key, value)
    made = attack.make(tmp_path)
    if attack.memory:
        found = measure(made)
        assert found["error"] is None and found["shape"] == [160, 160, 3], found
        assert found["peak_mb"] <= per_image_bound_mb(), found
        # and the decoder's estimate is honest: what it reserved covers what it used, so threads
        # decoding in parallel stay under the budget (settings.decode_budget_mb) too
        assert found["peak_mb"] <= found["reserved_mb"] + SLACK_MB, found
        return
    outcome = RUNNERS[attack.via](made, tmp_path)
    if attack.refusal:
        assert not outcome.ok, f"accepted: {attack.name}"
        assert re.search(attack.refusal, outcome.message), outcome.message
        assert_plain(outcome.message, tmp_path)
    if attack.check:
        attack.check(outcome, tmp_path)
