"""The one image decoder: scan, training, evaluation and prediction all read pixels through here.

It turns any supported file (JPEG, PNG, BMP, GIF, WebP; any mode, EXIF-rotated) into RGB uint8
pixels, or raises ImageError with a plain-words reason. Files are identified by content, not name.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lib.errors import ImageError

SUPPORTED_FORMATS = {"JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp"}
DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 32

# We enforce our own pixel limit with a friendly message; Pillow's own guard would raise first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageInfo:
    """What a scan records of a readable image (size before EXIF rotation is applied)."""

    width: int
    height: int
    format: str
    mode: str
    frames: int


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageError("The file is empty (0 bytes).")
        fp: object = io.BytesIO(source)
    else:
        path = Path(source)
        try:
            if path.stat().st_size == 0:
                raise ImageError("The file is empty (0 bytes).")
        except OSError as exc:
            raise ImageError(f"The file cannot be read ({exc.strerror or exc}).") from exc
        fp = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)  # type: ignore[arg-type]
    except UnidentifiedImageError as exc:
        raise ImageError("This is not an image file (or its format is not supported).") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("The image is too large to open safely.") from exc
    except OSError as exc:
        raise ImageError(f"The file cannot be read ({exc}).") from exc
    if im.format not in SUPPORTED_FORMATS:
        fmt = im.format or "unknown"
        im.close()
        raise ImageError(f"{fmt} images are not supported: use JPEG, PNG, BMP, GIF or WebP.")
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageError(
            f"The image is too large: {w}x{h} is {w * h / 1e6:.0f} megapixels, "
            f"the limit is {max_pixels / 1e6:.0f}."
        )
    return im


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to RGB uint8; transparency is composited on white, 16-bit scaled down."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif mode == "F":
            top = arr.max(initial=0)
            arr = arr * (255.0 / top) if top > 1.0 else arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode(
    source: str | Path | bytes,
    size: int | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array; with `size`, resized (antialiased) to size x size.

    The first frame of an animation is used and EXIF orientation is applied. JPEGs are decoded at
    a reduced scale when that is still at least `size` (Pillow's draft mode), which is ~2x faster.
    """
    im = _open(source, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if size is not None and im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L", "CMYK"):
                # Draft keeps the image at least size x size (in both sides) before the real resize.
                im.draft("RGB" if im.mode != "L" else "L", (size, size))
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb_array(im)
    except ImageError:
        raise
    except Image.DecompressionBombWarning as exc:
        raise ImageError("The image is too large to open safely.") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The image is corrupt or truncated ({exc}).") from exc
    finally:
        im.close()
    if size is not None and rgb.shape[:2] != (size, size):
        rgb = resize(rgb, size)
    return rgb


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Antialiased squash-resize to size x size (what the classic recipe's loader does, minus aliasing)."""
    out = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(out, dtype=np.uint8)


def inspect(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode a file (to catch truncation) and report its size, format and mode."""
    im = _open(path, max_pixels)
    try:
        info = ImageInfo(
            width=im.size[0],
            height=im.size[1],
            format=str(im.format),
            mode=im.mode,
            frames=int(getattr(im, "n_frames", 1)),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L", "CMYK"):
                im.draft(im.mode, (max(1, info.width // 8), max(1, info.height // 8)))
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"The image is corrupt or truncated ({exc}).") from exc
    finally:
        im.close()
    return info


def thumbnail(path: str | Path, side: int = 256) -> np.ndarray:
    """A small RGB preview that keeps the aspect ratio (for galleries and tables)."""
    rgb = decode(path)
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)
