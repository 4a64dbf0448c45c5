"""The one image decoder: scan, training, evaluation and prediction all read pixels through here.

Any supported file (JPEG, PNG, BMP, GIF, WebP; any mode, EXIF-rotated) becomes RGB uint8 pixels, or
an ImageError with a plain-words reason. Files are identified by content, never by name, and only
Pillow's five allowed plugins ever parse an upload (PDF, SVG, TIFF, PSD, ICO, HEIC ... are refused
with their own sentence).

Memory is bounded, because uploads are untrusted (a 95 KB PNG can claim 7000 x 7000 16-bit pixels):
- the cost of a decode is estimated from the header, before any pixel exists, and refused above
  settings.max_decode_mb() (about 216 MB for the largest allowed image);
- the full-size image is decoded once, in its smallest mode (JPEG draft scaling; 16-bit grey PNG
  straight to 8 bits), and everything after that (mode conversion, compositing on white, integer
  reduction, EXIF rotation) works on strips of a few MB or on the small result: no float64 copies,
  no full-size composite or rotated copy;
- a process-wide byte budget (settings.decode_budget_mb()) makes parallel decodes wait their turn,
  so a batch of threads never holds more than that in decoded pixels.
- metadata Pillow reads whole when it opens a file (EXIF, colour profiles, text, comments: a 64 x 48
  PNG with a 300 MB text chunk cost 1 GB) is counted from the file's structure first and refused
  above METADATA_MAX_BYTES, and Pillow's PNG text limits are applied wherever the chunks sit, so the
  scan refuses what the decoder would refuse after the pixels.
Measured (tests/data/test_decode_memory.py, bench/hostile_upload.py): a 16-bit 7000 x 7000 PNG drops from 1.27 GB to 54 MB, a
zip of 16 such images decoded by 4 threads from ~5 GB to ~430 MB.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from lib import settings
from lib.errors import ImageError

Image.MAX_IMAGE_PIXELS = None  # our own checks run on the header, before any allocation

PLUGINS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")  # the only Pillow plugins that parse uploads (MPO: JPEG)
DEFAULT_MAX_PIXELS = 50_000_000
MB = 1_000_000
MIN_SIDE = 32  # smaller images are too small to train on (the scan reports them)
STRIP_BYTES = 4 * 1024 * 1024
REDUCING_GAP = 3.0  # decode(size): reduce by an integer factor while >= 3x the target, then BILINEAR
THUMB_GAP = 2.0  # thumbnail: Pillow's own Image.thumbnail default

# Bytes per pixel of Pillow's in-memory storage (RGB and LA are stored 4 bytes per pixel).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
              "LA": 4, "La": 4, "PA": 4, "RGB": 4, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4,
              "YCbCr": 4, "LAB": 4, "HSV": 4, "I": 4, "F": 4}  # fmt: skip
# WebP through Pillow: libwebp's two canvases (curr + prev-disposed, 4 B/px each) + the bytes copy
# returned by get_next (4 B/px) + the Pillow image (4 B/px): measured ~16 B/px at the peak.
WEBP_BYTES_PER_PX = 16
# ... and before that, Pillow reads the whole file (and copies it once) and libwebp indexes every
# frame of an animation (~100 bytes each, a frame taking 40 bytes of file at the least): measured 2
# bytes of memory per byte of file for a still image, 4.5 for an animation of 1 x 1 frames.
WEBP_FILE_FACTOR = 2
WEBP_ANIMATION_FILE_FACTOR = 5
# JPEG with more than one scan (progressive, or a baseline file whose first scan holds fewer
# components than the image): libjpeg keeps every DCT coefficient of the whole image during the load
# (64 x 2 bytes per 8x8 block of each component, whatever the draft scale): 3 B/px for 4:2:0 YCbCr,
# 6 for 4:4:4, 8 for CMYK. A one-scan baseline file decodes row by row instead.
JPEG_BLOCK_BYTES = 128
JPEG_MARKER_BYTES = 1 << 20  # how far markers are read for the first scan (EXIF, ICC and tables come first)
# Run-length BMP: Pillow's decoder (Python) builds the pixels in a bytearray, then copies them to
# bytes before they reach the image: 2 more bytes per pixel during the load.
BMP_RLE_BYTES_PER_PX = 2
EXTRA_BYTES = 16 * MB  # strips, reduced image, decoder state
# What a PNG, JPEG or GIF may carry besides its pixels (EXIF, colour profile, text, comments): Pillow
# reads all of it into memory when the file is opened (2 to 3.5 times its size), so it is walked and
# counted first. Camera and editor files carry well under 1 MB.
METADATA_MAX_BYTES = 16 * MB

_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # fmt: skip


@dataclass(frozen=True)
class ImageInfo:
    """What a scan records of a readable image (size before EXIF rotation is applied)."""

    width: int
    height: int
    format: str
    mode: str
    frames: int


# ----------------------------------------------------------------------------------------------
# The process-wide byte budget
# ----------------------------------------------------------------------------------------------


class ByteBudget:
    """Bytes of decoded pixels in flight; `reserve(n)` blocks until n more fit under `total`.

    First come, first served (a ticket queue), so a large decode is not starved by small ones.
    A request larger than `total` is refused by the caller before it gets here (max_bytes <= total).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self.waits = 0
        self._cv = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    @contextmanager
    def reserve(self, n: int) -> Iterator[None]:
        n = max(0, min(int(n), self.total))
        with self._cv:
            ticket = self._next_ticket
            self._next_ticket += 1
            waited = False
            while ticket != self._serving or self.used + n > self.total:
                waited = True
                self._cv.wait()
            self._serving += 1
            self.used += n
            self.peak = max(self.peak, self.used)
            self.waits += waited
            self._cv.notify_all()
        try:
            yield
        finally:
            with self._cv:
                self.used -= n
                self._cv.notify_all()


_budget: ByteBudget | None = None
_budget_lock = threading.Lock()


def budget() -> ByteBudget:
    """The process-wide budget of decoded bytes in flight (sized from settings on first use)."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = ByteBudget(settings.decode_budget_mb() * MB)
        return _budget


# ----------------------------------------------------------------------------------------------
# Identify by content
# ----------------------------------------------------------------------------------------------

_ASK = "use JPEG, PNG, BMP, GIF or WebP."


def sniff(head: bytes) -> str | None:
    """A plain-words refusal for a known non-photo or unsupported kind of file; None if it may be one."""
    h = head
    if h.startswith(b"%PDF"):
        return "This is a PDF document, not a photo: export the page as a JPEG or PNG picture."
    text = h.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!doctype svg")) and b"<svg" in text):
        return "This is an SVG drawing, not a photo: export it as a PNG picture."
    if text.startswith((b"<!doctype html", b"<html")):
        return "This is a web page (HTML), not a photo."
    if h.startswith((b"II*\x00", b"MM\x00*")):
        return f"TIFF images (and camera RAW files) are not supported: {_ASK}"
    if h.startswith(b"8BPS"):
        return "This is a Photoshop (PSD) file: save a flattened copy as JPEG or PNG."
    if h.startswith((b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")) and len(h) >= 6 and h[4:6] != b"\0\0":
        return f"This is an icon (ICO) file, not a photo: {_ASK}"
    if h[4:8] == b"ftyp":
        brands = h[8:12] + h[16:40]
        if any(b in brands for b in (b"avif", b"avis")):
            return f"AVIF images are not supported: {_ASK}"
        if any(b in brands for b in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")):
            return (
                "HEIC photos (the iPhone's default) are not supported: export them as JPEG, "
                "or set the camera to 'Most Compatible'."
            )
        return "This is a video, not a photo."
    if h.startswith(b"%!PS") or h.startswith(b"\xc5\xd0\xd3\xc6"):
        return f"PostScript (EPS) files are not supported: {_ASK}"
    if h.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return f"JPEG 2000 images are not supported: {_ASK}"
    if h.startswith((b"\x00\x00\x00\x0cJXL ", b"\xff\x0a")):
        return f"JPEG XL images are not supported: {_ASK}"
    if h.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")):
        return "This is an archive (zip, gz, 7z or rar), not a photo."
    if h.startswith(b"RIFF") and h[8:12] != b"WEBP":
        return "This is a video or sound file, not a photo."
    return None


def _webp_canvas(h: bytes) -> tuple[int, int] | None:
    """The canvas size from a WebP header (libwebp allocates it in Image.open, so check it first)."""
    if not (h.startswith(b"RIFF") and h[8:12] == b"WEBP") or len(h) < 30:
        return None
    c = h[12:16]
    if c == b"VP8 " and h[23:26] == b"\x9d\x01\x2a":
        return struct.unpack("<H", h[26:28])[0] & 0x3FFF, struct.unpack("<H", h[28:30])[0] & 0x3FFF
    if c == b"VP8X":
        return int.from_bytes(h[24:27], "little") + 1, int.from_bytes(h[27:30], "little") + 1
    if c == b"VP8L" and h[20] == 0x2F:
        bits = struct.unpack("<I", h[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _metadata_too_large(n: int, *, walked: bool = True) -> ImageError:
    amount = f"{n / MB:,.0f} MB" if walked else f"more than {METADATA_MAX_BYTES / MB:.0f} MB"
    return ImageError(
        f"The image carries {amount} of metadata (EXIF, colour profile, text or comments) besides "
        f"its pixels; the limit is {METADATA_MAX_BYTES / MB:.0f} MB: save a copy without its metadata."
    )


_TEXT_TOO_LARGE = (
    f"The image's metadata is too large once unpacked (a PNG text block or colour profile over "
    f"{PngImagePlugin.MAX_TEXT_CHUNK / 2**20:.0f} MB, or {PngImagePlugin.MAX_TEXT_MEMORY / 2**20:.0f} MB of "
    "text in all): save a copy without its metadata."
)


def _inflate_text(data: bytes) -> bytes | None:
    """A PNG text block or profile unpacked as Pillow does (None: over its MAX_TEXT_CHUNK)."""
    z = zlib.decompressobj()
    try:
        out = z.decompress(data, PngImagePlugin.MAX_TEXT_CHUNK)
    except zlib.error:
        return b""  # Pillow ignores a block it can't unpack
    return None if z.unconsumed_tail else out


def _png_text_bytes(cid: bytes, data: bytes) -> int:
    """The text Pillow keeps from one tEXt/zTXt/iTXt chunk (bytes; 0 for an iCCP profile), or
    ImageError where Pillow would refuse the chunk."""
    key, _, value = data.partition(b"\0")
    if cid == b"iCCP" or cid == b"zTXt":
        if value[:1] not in (b"", b"\0"):
            raise ImageError(f"The image is corrupt (unknown compression in its PNG {cid.decode()} block).")
        value = _inflate_text(value[1:]) if cid == b"iCCP" or value else b""
        if value is None:
            raise ImageError(_TEXT_TOO_LARGE)
        return 0 if cid == b"iCCP" or not key else len(value)
    if cid == b"iTXt":
        if len(value) < 2:
            return 0
        compressed, method, parts = value[0], value[1], value[2:].split(b"\0", 2)
        if len(parts) < 3:
            return 0
        value = parts[2]
        if compressed:
            if method != 0:
                return 0
            value = _inflate_text(value)
            if value is None:
                raise ImageError(_TEXT_TOO_LARGE)
    return len(value) if key else 0


def _png_metadata(fh: io.BufferedIOBase) -> None:
    """Walk a PNG's chunks (headers only, pixel data skipped): refuse more than METADATA_MAX_BYTES of
    other chunks, then apply Pillow's text limits to the text and profile chunks wherever they are,
    so a file the decoder would refuse after its pixels is refused by the scan too."""
    fh.seek(8)
    total, packed = 0, []
    while True:
        hdr = fh.read(8)
        if len(hdr) < 8:
            break  # a truncated file is the decoder's to report
        length, cid = struct.unpack(">I", hdr[:4])[0], hdr[4:8]
        if cid == b"IEND":
            break
        if cid not in (b"IDAT", b"fdAT", b"fcTL"):  # pixels, and an animation's frames (read one by one)
            total += length
            if cid in (b"tEXt", b"zTXt", b"iTXt", b"iCCP"):
                packed.append((cid, fh.tell(), length))
        fh.seek(length + 4, os.SEEK_CUR)
    if total > METADATA_MAX_BYTES:
        raise _metadata_too_large(total)
    text = 0
    for cid, at, length in packed:
        fh.seek(at)
        text += _png_text_bytes(cid, fh.read(length))
        if text > PngImagePlugin.MAX_TEXT_MEMORY:
            raise ImageError(_TEXT_TOO_LARGE)


def _jpeg_metadata(fh: io.BufferedIOBase) -> None:
    """Walk a JPEG's segments before its first scan (APPn, COM, tables; headers only): Pillow keeps
    every one of them, up to 64 KB each and as many as the file holds."""
    fh.seek(2)
    total = 0
    while total <= METADATA_MAX_BYTES:
        b = fh.read(1)
        if not b:
            return
        if b != b"\xff":
            total += 1  # stray bytes: skipped, but they count
            continue
        marker = fh.read(1)
        if not marker or marker == b"\xff":
            if marker:
                fh.seek(-1, os.SEEK_CUR)  # a fill byte: the marker follows
            continue
        if marker in (b"\xda", b"\xd9"):  # the first scan, or the end
            return
        if marker == b"\x01" or b"\xd0" <= marker <= b"\xd8":
            continue
        size = fh.read(2)
        if len(size) < 2:
            return
        length = struct.unpack(">H", size)[0]
        total += length
        fh.seek(max(0, length - 2), os.SEEK_CUR)
    raise _metadata_too_large(total, walked=False)


def _gif_metadata(fh: io.BufferedIOBase) -> None:
    """Walk a GIF's extension blocks before its first image (sizes only): Pillow joins every comment."""
    head = fh.read(13)
    if len(head) < 13:
        return
    if head[10] & 0x80:
        fh.seek(3 * (2 << (head[10] & 7)), os.SEEK_CUR)
    total = 0
    while total <= METADATA_MAX_BYTES:
        b = fh.read(1)
        if b != b"\x21":  # an image (or the end, or junk): the decoder takes it from here
            return
        fh.read(1)  # the extension's label
        while total <= METADATA_MAX_BYTES:
            ln = fh.read(1)
            if not ln or ln == b"\0":
                break
            total += ln[0]
            fh.seek(ln[0], os.SEEK_CUR)
    raise _metadata_too_large(total, walked=False)


def _check_metadata(fh: io.BufferedIOBase, head: bytes) -> None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        _png_metadata(fh)
    elif head.startswith(b"\xff\xd8"):
        _jpeg_metadata(fh)
    elif head.startswith((b"GIF87a", b"GIF89a")):
        _gif_metadata(fh)


def _plain(exc: BaseException, lead: str) -> str:
    """Pillow's error in words: its text limits get their own sentence."""
    return _TEXT_TOO_LARGE if "MAX_TEXT" in str(exc) else f"{lead} ({exc})."


def _signature(h: bytes) -> str | None:
    """Which of the five formats a file's first bytes announce (None: none of them)."""
    for magic, kind in ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
                        (b"GIF89a", "GIF"), (b"BM", "BMP")):  # fmt: skip
        if h.startswith(magic):
            return kind
    return "WebP" if h.startswith(b"RIFF") and h[8:12] == b"WEBP" else None


def _webp_animated(h: bytes) -> bool:
    return h.startswith(b"RIFF") and h[8:16] == b"WEBPVP8X" and len(h) > 20 and bool(h[20] & 0x02)


def _too_large(w: int, h: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"The image is too large: {w}x{h} is {w * h / 1e6:.0f} megapixels, the limit is {max_pixels / 1e6:.0f}."
    )


def _open(source: str | Path | bytes, max_pixels: int, max_bytes: int | None = None) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        nbytes = len(source)
        if nbytes == 0:
            raise ImageError("The file is empty (0 bytes).")
        fp: object = io.BytesIO(source)
        head = bytes(source[:64])
    else:
        path = Path(source)
        try:
            nbytes = path.stat().st_size
            if nbytes == 0:
                raise ImageError("The file is empty (0 bytes).")
            with open(path, "rb") as fh:
                head = fh.read(64)
        except OSError as exc:
            raise ImageError(f"The file cannot be read ({exc.strerror or exc}).") from exc
        fp = path
    reason = sniff(head)
    if reason:
        raise ImageError(reason)
    try:  # metadata Pillow would read whole: counted from the file's structure first
        if isinstance(fp, io.BytesIO):
            _check_metadata(fp, head)
            fp.seek(0)
        else:
            with open(fp, "rb") as fh:  # type: ignore[call-overload]
                _check_metadata(fh, head)
    except OSError as exc:
        raise ImageError(f"The file cannot be read ({exc.strerror or exc}).") from exc
    canvas = _webp_canvas(head)
    if canvas and canvas[0] * canvas[1] > max_pixels:
        raise _too_large(*canvas, max_pixels)
    limit = _max_bytes(max_bytes)
    file_need = nbytes * (WEBP_ANIMATION_FILE_FACTOR if _webp_animated(head) else WEBP_FILE_FACTOR)
    if canvas and canvas[0] * canvas[1] * WEBP_BYTES_PER_PX + file_need + EXTRA_BYTES > limit:
        # libwebp allocates the whole canvas and its index of the frames when the file is opened:
        # refuse from the header
        w, h = canvas
        need = w * h * WEBP_BYTES_PER_PX + file_need + EXTRA_BYTES
        of = f" of {nbytes / MB:,.0f} MB" if file_need * 4 >= need else ""
        mp = (limit - EXTRA_BYTES - file_need) / WEBP_BYTES_PER_PX / 1e6
        hint = f" (about {mp:.0f} megapixels for this kind of image)" if mp >= 1 else ""
        raise ImageError(
            f"The image is too large to decode safely: a {w}x{h} WEBP image{of} needs about "
            f"{need / MB:.0f} MB of memory, the limit is {limit / MB:.0f} MB{hint}."
        )
    try:
        im = Image.open(fp, formats=PLUGINS)  # type: ignore[arg-type]
    except UnidentifiedImageError as exc:
        kind = _signature(head)
        if kind:  # one of ours by its first bytes, but Pillow can't read its header
            raise ImageError(
                f"The image is corrupt or truncated: it starts like a {kind} file but its header can't be read."
            ) from exc
        raise ImageError(f"This is not an image file (or its format is not supported): {_ASK}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        lead = "The image is corrupt or truncated" if _signature(head) else "The file cannot be read"
        raise ImageError(_plain(exc, lead)) from exc
    im._file_need = file_need if im.format == "WEBP" else 0  # type: ignore[attr-defined]
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise _too_large(w, h, max_pixels)
    if w == 0 or h == 0:
        im.close()
        raise ImageError("The image is empty (0 pixels wide or high).")
    return im


def tune_malloc() -> bool:
    """Make glibc return freed image buffers to the system at once (mmap above 8 MB), so the
    process's memory follows the decode budget instead of keeping freed blocks in per-thread heaps
    (measured: ~430 MB instead of 685-835 MB for 16 large PNGs). Same as MALLOC_MMAP_THRESHOLD_ in
    the Dockerfile; a no-op away from glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 8 * 1024 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def header_pixels(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Width x height from the header only (the file is identified and size-checked, not decoded)."""
    im = _open(source, max_pixels)
    try:
        return im.size[0] * im.size[1]
    finally:
        im.close()


# ----------------------------------------------------------------------------------------------
# Decoding plan: smallest decode mode, size estimate, budget check
# ----------------------------------------------------------------------------------------------


def _png16_to_l(im: Image.Image) -> bool:
    """Make a 16-bit grey PNG decode straight into 8-bit L (high byte), 1 B/px instead of 2."""
    if im.format != "PNG" or im.mode != "I;16" or len(im.tile) != 1 or im.tile[0][3] != "I;16B":
        return False
    t = im.tile[0]
    im.tile = [ImageFile._Tile(t[0], t[1], t[2], "L;16B")]
    im._mode = "L"  # noqa: SLF001 - Pillow has no public "decode as" for PNG
    return True


def _jpeg_layout(fp: io.BufferedIOBase) -> tuple[list[tuple[int, int]], bool] | None:
    """Each component's (h, v) sampling factors and whether libjpeg buffers the whole image's
    coefficients (progressive, or a first scan with fewer components than the frame), read from the
    markers before the first scan; None when they are not found there."""
    data = fp.read(JPEG_MARKER_BYTES)
    if not data.startswith(b"\xff\xd8"):
        return None
    sampling: list[tuple[int, int]] | None = None
    progressive = False
    i = 2
    try:
        while i + 4 <= len(data):
            if data[i] != 0xFF or data[i + 1] == 0xFF:  # stray or fill bytes: libjpeg skips them too
                i += 1
                continue
            marker = data[i + 1]
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                i += 2
                continue
            if marker == 0xD9:  # the end, before any scan
                return None
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            seg = data[i + 4 : i + 2 + length]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
                sampling = [(seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(seg[5])]
                progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
            elif marker == 0xDA:  # the first scan
                return (sampling, progressive or seg[0] < len(sampling)) if sampling else None
            i += 2 + length
    except (IndexError, struct.error):
        return None
    return None


def _jpeg_coefficient_bytes(w: int, h: int, sampling: list[tuple[int, int]]) -> int:
    """libjpeg's whole-image coefficient buffer (jdcoefct.c): each component's blocks, rounded up to
    its sampling factors, 128 bytes each."""
    hmax = max(1, *(hs for hs, _ in sampling))
    vmax = max(1, *(vs for _, vs in sampling))
    total = 0
    for hs, vs in sampling:
        hs, vs = max(1, hs), max(1, vs)
        bw = math.ceil(math.ceil(w * hs / (hmax * 8)) / hs) * hs  # blocks across, whole MCUs
        bh = math.ceil(math.ceil(h * vs / (vmax * 8)) / vs) * vs
        total += bw * bh * JPEG_BLOCK_BYTES
    return total


def _jpeg_buffered_bytes(im: Image.Image) -> int:
    """Bytes libjpeg holds for coefficients while the file loads (0 for a one-scan baseline file)."""
    fw, fh = getattr(im, "_jpeg_full_size", im.size)
    layout = None
    try:
        pos = im.fp.tell()  # type: ignore[union-attr]
        im.fp.seek(0)  # type: ignore[union-attr]
        layout = _jpeg_layout(im.fp)  # type: ignore[arg-type]
        im.fp.seek(pos)  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        pass
    if layout is None:  # markers not where expected: assume the worst, every component at full size
        progressive = bool(im.info.get("progressive") or im.info.get("progression"))
        layout = ([(1, 1)] * len(im.getbands()), progressive)
    sampling, buffered = layout
    return _jpeg_coefficient_bytes(fw, fh, sampling) if buffered else 0


def _estimate(im: Image.Image, *, full_output: bool) -> int:
    """Peak bytes of one decode: max(what the load needs, what is held afterwards) + strips."""
    w, h = im.size
    px = w * h
    held = px * MODE_BYTES.get(im.mode, 4)
    load = held
    if im.format == "WEBP":
        load = px * WEBP_BYTES_PER_PX + getattr(im, "_file_need", 0)
        held = px * 8  # the Pillow image + libwebp's frame copy once the canvases are freed
    elif im.format in ("JPEG", "MPO"):
        load += _jpeg_buffered_bytes(im)  # freed when the load ends
    elif im.format == "BMP" and im.tile and im.tile[0][0] == "bmp_rle":
        load += px * BMP_RLE_BYTES_PER_PX
    if full_output:
        held += px * 3  # the HxWx3 result
    return max(load, held) + EXTRA_BYTES


_KIND = {
    "RGBA": " with transparency",
    "LA": " with transparency",
    "PA": " with transparency",
    "RGB": " in colour",
    "L": " in greyscale",
    "P": " with a palette",
    "CMYK": " in CMYK",
}


def _check_bytes(im: Image.Image, need: int, max_bytes: int) -> None:
    if need <= max_bytes:
        return
    w, h = getattr(im, "_jpeg_full_size", im.size)  # a JPEG's size before draft scaling
    per_px = max(1.0, (need - EXTRA_BYTES) / (w * h))
    mp = max(0.0, max_bytes - EXTRA_BYTES) / per_px / 1e6
    kind = f"{im.format} image{_KIND.get(im.mode, '') if im.format != 'WEBP' else ''}"
    raise ImageError(
        f"The image is too large to decode safely: a {w}x{h} {kind} needs about {need / MB:.0f} MB "
        f"of memory, the limit is {max_bytes / MB:.0f} MB (about {mp:.{0 if mp >= 10 else 1}f} megapixels "
        f"for this kind of image)."
    )


def _orientation(im: Image.Image) -> int:
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is not a reason to refuse the photo
        return 1
    return o if o in _TRANSPOSE else 1


# ----------------------------------------------------------------------------------------------
# Strip processing: everything after the load touches a few MB at a time
# ----------------------------------------------------------------------------------------------


def _white_composite(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _strip_rgb(strip: Image.Image, scale16: tuple[str, float] | None) -> Image.Image:
    mode = strip.mode
    if mode == "RGB":
        return strip
    if mode == "P":
        if "transparency" in strip.info:
            return _white_composite(strip.convert("RGBA"))
        return strip.convert("RGB")
    if mode in ("RGBA", "LA", "La", "PA", "RGBa"):
        return _white_composite(strip if mode == "RGBA" else strip.convert("RGBA"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(strip)
        kind, top = scale16 or ("none", 255.0)
        if kind == "i16":
            g = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        elif kind == "f":
            f = arr.astype(np.float32) * (255.0 / top if top > 1.0 else 255.0)
            g = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        else:
            g = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    return strip.convert("RGB")  # L, 1, CMYK, YCbCr


def _scale16(im: Image.Image) -> tuple[str, float] | None:
    if im.mode.startswith("I;16"):
        return ("i16", 257.0)
    if im.mode in ("I", "F"):
        lo, hi = im.getextrema()  # one pass in C, no copy
        if im.mode == "F":
            return ("f", float(hi))
        return ("i16", 257.0) if hi > 255 else ("none", 255.0)
    return None


def _strips(im: Image.Image, step: int) -> Iterator[tuple[int, int, Image.Image]]:
    w, h = im.size
    rows = max(step, (STRIP_BYTES // max(1, w * 4)) // step * step)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        yield y0, y1, im.crop((0, y0, w, y1))


def _reduced_rgb(im: Image.Image, factor: tuple[int, int]) -> Image.Image:
    """RGB (composited on white, 8-bit) reduced by an integer factor, built strip by strip."""
    fx, fy = factor
    w, h = im.size
    out = Image.new("RGB", (-(-w // fx), -(-h // fy)))
    s16 = _scale16(im)
    # Box-averaging commutes with these per-pixel steps (for RGBA/LA Pillow's reduce averages the
    # premultiplied colours, which is what compositing on white then averaging gives), so reduce the
    # strip first: the composite and the conversion then run on 1/(fx*fy) of the pixels.
    reduce_first = im.mode in ("RGBA", "LA", "RGB", "L") and (fx > 1 or fy > 1)
    for y0, _y1, strip in _strips(im, fy):
        if reduce_first:
            rgb = _strip_rgb(strip.reduce((fx, fy)), s16)
        else:
            rgb = _strip_rgb(strip, s16)
            if fx > 1 or fy > 1:
                rgb = rgb.reduce((fx, fy))
        out.paste(rgb, (0, y0 // fy))
    return out


def _full_rgb(im: Image.Image, orientation: int) -> np.ndarray:
    """The full-size HxWx3 array, written strip by strip (EXIF orientation applied per strip)."""
    w, h = im.size
    method = _TRANSPOSE.get(orientation)
    swap = orientation in (5, 6, 7, 8)
    out = np.empty((w, h, 3) if swap else (h, w, 3), np.uint8)
    s16 = _scale16(im)
    for y0, y1, strip in _strips(im, 1):
        rgb = _strip_rgb(strip, s16)
        if method is not None:
            rgb = rgb.transpose(method)
        a = np.asarray(rgb)
        if orientation in (1, 2):
            out[y0:y1] = a
        elif orientation in (3, 4):
            out[h - y1 : h - y0] = a
        elif orientation in (5, 8):
            out[:, y0:y1] = a
        else:  # 6, 7
            out[:, h - y1 : h - y0] = a
    return out


def _factor(src: tuple[int, int], dst: tuple[int, int], gap: float) -> tuple[int, int]:
    return (max(1, int(src[0] / dst[0] / gap)), max(1, int(src[1] / dst[1] / gap)))


def _thumb_size(w: int, h: int, side: int) -> tuple[int, int] | None:
    """The size Image.thumbnail((side, side)) would give (None: already small enough)."""
    x = y = side
    if x >= w and y >= h:
        return None
    aspect = w / h
    if x / y >= aspect:
        x = max(min(math.floor(y * aspect), math.ceil(y * aspect), key=lambda n: abs(aspect - n / y)), 1)
    else:
        y = max(
            min(
                math.floor(x / aspect),
                math.ceil(x / aspect),
                key=lambda n: 0 if n == 0 else abs(aspect - x / n),
            ),
            1,
        )
    return x, y


# ----------------------------------------------------------------------------------------------
# The public functions
# ----------------------------------------------------------------------------------------------

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _run(
    source: str | Path | bytes,
    target: str,
    arg: int | None,
    max_pixels: int,
    max_bytes: int,
    pool: ByteBudget,
) -> np.ndarray:
    im = _open(source, max_pixels, max_bytes)
    try:
        w0, h0 = im.size
        # JPEG: DCT-scaled decode when it still gives at least what is needed
        if im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L", "CMYK") and target != "full":
            want = (arg, arg) if target == "square" else None
            if target == "thumb":
                o = _orientation(im)
                t = _thumb_size(*((h0, w0) if o in (5, 6, 7, 8) else (w0, h0)), arg)  # type: ignore[arg-type]
                if t:
                    t = (t[1], t[0]) if o in (5, 6, 7, 8) else t
                    want = (int(t[0] * THUMB_GAP), int(t[1] * THUMB_GAP))
            if want:
                im._jpeg_full_size = im.size  # type: ignore[attr-defined]
                im.draft("RGB" if im.mode != "L" else "L", want)
        _png16_to_l(im)
        need = _estimate(im, full_output=target == "full")
        # a full-size result may also hold its own HxWx3 array (the product, not working memory)
        out_bytes = im.size[0] * im.size[1] * 3 if target == "full" else 0
        _check_bytes(im, need, max_bytes + out_bytes)
        with pool.reserve(need):  # released only once the full-size image is closed
            im.load()
            if im.format == "WEBP":  # free libwebp's two canvases and its frame copy now
                im._decoder = None  # type: ignore[attr-defined]
                if isinstance(im.fp, io.BytesIO):
                    im.fp.close()
            orientation = _orientation(im)
            swap = orientation in (5, 6, 7, 8)
            if target == "full":
                full = _full_rgb(im, orientation)
                im.close()
                return full
            w, h = im.size
            if target == "square":
                final = (arg, arg)
                gap = REDUCING_GAP
            else:
                ow, oh = (h0, w0) if swap else (w0, h0)
                t = _thumb_size(ow, oh, arg)  # type: ignore[arg-type]
                t = t or (ow, oh)
                final = (t[1], t[0]) if swap else t  # in the file's (unrotated) orientation
                gap = THUMB_GAP
            fx, fy = _factor((w, h), final, gap)
            small = _reduced_rgb(im, (fx, fy))
            box = (0.0, 0.0, w / fx, h / fy)  # the reduced image's last row/column may be a partial box
            im.close()
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError("The image is too large to open with the memory available.") from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(_plain(exc, "The image is corrupt or truncated")) from exc
    finally:
        im.close()
    if small.size != final or box != (0.0, 0.0, *final):
        small = small.resize(final, Image.Resampling.BILINEAR, box=box)
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
    return np.asarray(small, dtype=np.uint8)


def decode(
    source: str | Path | bytes,
    size: int | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    pool: ByteBudget | None = None,
) -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array; with `size`, squash-resized (antialiased) to size x size.

    The first frame of an animation is used and EXIF orientation is applied.
    """
    target = "full" if size is None else "square"
    return _run(source, target, size, max_pixels, _max_bytes(max_bytes), pool or budget())


def thumbnail(
    path: str | Path,
    side: int = 256,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    pool: ByteBudget | None = None,
) -> np.ndarray:
    """A small RGB preview that keeps the aspect ratio (for galleries and tables)."""
    return _run(path, "thumb", side, max_pixels, _max_bytes(max_bytes), pool or budget())


def _max_bytes(value: int | None) -> int:
    return settings.max_decode_mb() * MB if value is None else int(value)


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Antialiased squash-resize of an RGB array to size x size."""
    out = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# inspect: header facts + a full integrity check without holding the image
# ----------------------------------------------------------------------------------------------

GIF_FRAME_CAP = 10_000  # frames are counted up to here (ImageInfo.frames is informative only)


def _gif_frames(fh: io.BufferedIOBase, cap: int) -> int:
    """Count GIF frames by walking the block structure (no LZW decoding, no whole-file read), up to `cap`."""
    head = fh.read(13)
    if len(head) < 13:
        return 1
    flags = head[10]
    if flags & 0x80:
        fh.seek(3 * (2 << (flags & 7)), 1)
    n = 0
    while n < cap:
        b = fh.read(1)
        if not b or b == b"\x3b":
            break
        if b == b"\x21":
            fh.read(1)
        elif b == b"\x2c":
            d = fh.read(9)
            if len(d) < 9:
                break
            if d[8] & 0x80:
                fh.seek(3 * (2 << (d[8] & 7)), 1)
            fh.read(1)  # LZW minimum code size
            n += 1
        else:
            break
        while True:  # data sub-blocks
            ln = fh.read(1)
            if not ln or ln == b"\0":
                break
            fh.seek(ln[0], 1)
    return max(1, n)


def _png_rows_bytes(w: int, h: int, bits: int, ch: int, interlace: bool) -> int:
    def rowbytes(width: int) -> int:
        return 1 + (width * bits * ch + 7) // 8 if width else 0

    if not interlace:
        return h * rowbytes(w)
    total = 0
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        pw, ph = (w - x0 + dx - 1) // dx, (h - y0 + dy - 1) // dy
        if pw and ph:
            total += ph * rowbytes(pw)
    return total


def _png_check(fh: io.BufferedIOBase) -> None:
    """Inflate the first image's IDAT stream, discarding the output: catches truncation and corruption
    (chunk CRCs, zlib checksum, exact length) without allocating the image or reading the whole file."""
    head = fh.read(33)
    if head[12:16] != b"IHDR":
        raise ImageError("The image is corrupt or truncated (no PNG header).")
    w, h, bits, ctype, _c, _f, inter = struct.unpack(">IIBBBBB", head[16:29])
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if ch is None:
        raise ImageError("The image is corrupt or truncated (unknown PNG colour type).")
    expected = _png_rows_bytes(w, h, bits, ch, bool(inter))
    z = zlib.decompressobj()
    got = 0
    seen_idat = False
    fh.seek(8)
    ends_early = ImageError("The image is corrupt or truncated (the PNG file ends early).")
    while True:
        hdr = fh.read(8)
        if len(hdr) < 8:
            raise ends_early
        length, cid = struct.unpack(">I", hdr[:4])[0], hdr[4:8]
        if cid == b"IDAT":
            seen_idat = True
        elif seen_idat or cid == b"IEND":
            break
        crc = zlib.crc32(cid)
        left = length
        while left:
            piece = fh.read(min(left, 1 << 20))
            if not piece:
                raise ends_early
            left -= len(piece)
            crc = zlib.crc32(piece, crc)
            if cid == b"IDAT":
                buf = piece
                while buf:
                    try:
                        out = z.decompress(buf, 1 << 20)
                    except zlib.error as exc:
                        raise ImageError(f"The image is corrupt or truncated ({exc}).") from exc
                    got += len(out)
                    buf = z.unconsumed_tail
                    if got > expected:
                        raise ImageError("The image is corrupt (more pixel data than its size).")
        stored = fh.read(4)
        if len(stored) < 4:
            raise ends_early
        if struct.unpack(">I", stored)[0] != crc & 0xFFFFFFFF:
            raise ImageError(
                f"The image is corrupt or truncated (bad checksum in PNG chunk {cid.decode('latin-1')})."
            )
    if got != expected or not z.eof:
        raise ImageError(
            f"The image is corrupt or truncated (pixel data for {got * 100 // max(1, expected)}% of the image)."
        )


def inspect(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    pool: ByteBudget | None = None,
) -> ImageInfo:
    """Header facts, then a full integrity check: PNG by streaming its data, JPEG at 1/8 scale, the
    rest by a budgeted load. The frame count never walks more than GIF_FRAME_CAP frames."""
    pool = pool or budget()
    max_bytes = _max_bytes(max_bytes)
    im = _open(path, max_pixels)
    try:
        fmt = str(im.format)
        mode = im.mode
        w, h = im.size
        if fmt == "GIF":
            with open(path, "rb") as fh:
                frames = _gif_frames(fh, GIF_FRAME_CAP)
        else:
            frames = int(getattr(im, "n_frames", 1))  # PNG acTL, WebP, MPO: read from the header
        if fmt in ("JPEG", "MPO") and mode in ("RGB", "L", "CMYK"):
            im._jpeg_full_size = im.size  # type: ignore[attr-defined]
            im.draft(mode, (max(1, w // 8), max(1, h // 8)))
        _png16_to_l(im)
        need = _estimate(im, full_output=False)
        _check_bytes(im, need, max_bytes)  # a file the decoder would refuse is refused at scan
        if fmt == "PNG" and frames == 1:
            with open(path, "rb") as fh:
                _png_check(fh)
        else:
            with pool.reserve(need):
                im.load()
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageError(_plain(exc, "The image is corrupt or truncated")) from exc
    finally:
        im.close()
    return ImageInfo(width=w, height=h, format=fmt, mode=mode, frames=frames)
