"""Rebuild data/sample/ from the bean-leaf dataset: a small, downsized, deterministic subset.

    python scripts/make_sample.py [--source DIR] [--dest data/sample]

Picks per class the files with the lowest content hash (sha1), so the choice is stable and not
biased by file names, resizes them to SIZE x SIZE and re-encodes as JPEG.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PER_SPLIT = {"train": 60, "test": 15}  # images per class
SIZE = 160  # the bundled MobileNetV2's input size: no upscaling at training time
QUALITY = 85

PROVENANCE = """\
Sample dataset: bean leaf diseases (3 classes: angular_leaf_spot, bean_rust, healthy).

A small, downsized subset of the iBean dataset: field photos taken in Uganda by the Makerere AI Lab,
labelled by experts of the National Crops Resources Research Institute (NaCRRI).
https://github.com/AI-Lab-Makerere/ibean/ (MIT License, see LICENSE in this folder).

What was changed: {per_split} images per class were picked from the original train/ and test/
folders (the ones with the lowest SHA-1 of their bytes, so the pick is reproducible), resized from
500x500 to {size}x{size} pixels (Lanczos) and saved as JPEG quality {quality}. File names are the
originals. The app carves a validation split out of train/.

Rebuild with: python scripts/make_sample.py --source /path/to/beans
"""


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _jpeg(path: Path) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def build(source: Path, dest: Path) -> int:
    """Write the sample into dest (replacing its data folders); returns the total bytes written."""
    tmp = Path(tempfile.mkdtemp(prefix=".sample-", dir=dest.parent))
    total = 0
    try:
        for split, n in PER_SPLIT.items():
            for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
                files = sorted((p for p in class_dir.iterdir() if p.suffix.lower() == ".jpg"), key=_sha1)
                out_dir = tmp / split / class_dir.name
                out_dir.mkdir(parents=True)
                for f in sorted(files[:n]):
                    data = _jpeg(f)
                    (out_dir / f.name).write_bytes(data)
                    total += len(data)
        shutil.copyfile(source / "LICENSE", tmp / "LICENSE")
        per_split = " train + ".join(str(n) for n in PER_SPLIT.values()) + " test"
        (tmp / "PROVENANCE.txt").write_text(
            PROVENANCE.format(per_split=per_split, size=SIZE, quality=QUALITY)
        )
        dest.mkdir(parents=True, exist_ok=True)
        for name in [*PER_SPLIT, "LICENSE", "PROVENANCE.txt"]:
            old = dest / name
            if old.is_dir():
                shutil.rmtree(old)
            os.replace(tmp / name, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "beans")
    parser.add_argument("--dest", type=Path, default=ROOT / "data" / "sample")
    args = parser.parse_args()
    total = build(args.source, args.dest)
    print(f"Wrote {args.dest} ({total / 1e6:.2f} MB of images)")


if __name__ == "__main__":
    main()
