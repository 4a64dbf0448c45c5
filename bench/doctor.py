"""The data doctor's targets, measured on data made here from a labelled dataset (beans by default):

1. Flip 5% of the labels at random (files copied into a wrong class folder): precision and recall of
   the top-k suspects (k = number flipped) against a random ranking; several seeds.
2. A clean set of ~3,000 images (four quadrants of each photo, split 70/15/15 into train/validation/
   test folders) with 20 near-duplicates planted across splits (the original in train, a copy
   resized to half, cropped by 5% and saved as JPEG quality 70 in test): planted pairs found and
   false pairs.
3. Time: the feature pass alone (what training pays), the doctor cold (features not cached) and
   warm (a fresh `python -m lib doctor DIR --json` process with the features cached).

    .venv/bin/python bench/doctor.py [/work/shared/datasets/beans] [--work /tmp/doctor-bench] [--seeds 3]
    .venv/bin/python bench/doctor.py --flips-on digits --seeds 3   # the flips on a second known dataset

`--flips-on digits` measures the label flips on scikit-learn's handwritten digits (1,797 images,
10 classes, shipped inside the package: no download), each 8x8 image rendered at 96 px.

Prints one JSON line at the end. Datasets are built under --work (never committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.doctor import examine as doctor  # noqa: E402
from lib.doctor import features as doctor_features  # noqa: E402
from tests.doctor.conftest import near_copy  # noqa: E402  (the tests' planted copy: one recipe)

WEIGHTS = "bundled"


def originals(source: Path) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"} and path.is_file():
            found.append((path.parent.name, path))
    return found


def build_digits(out: Path) -> Path:
    """scikit-learn's digits as a folder dataset (train/digit_N/NNNN.png, 96 px, RGB)."""
    from sklearn.datasets import load_digits

    shutil.rmtree(out, ignore_errors=True)
    digits = load_digits()
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = out / "train" / f"digit_{y}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (img / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((96, 96), Image.Resampling.BICUBIC).convert("RGB").save(path)
    return out


def build_flipped(source: Path, out: Path, seed: int, fraction: float = 0.05) -> set[str]:
    """Every original in DIR/<class>/ with `fraction` of them put in another class; returns their paths."""
    shutil.rmtree(out, ignore_errors=True)
    items = originals(source)
    classes = sorted({c for c, _ in items})
    rng = np.random.default_rng(seed)
    flip = set(rng.choice(len(items), size=round(fraction * len(items)), replace=False).tolist())
    flipped = set()
    for i, (cls, path) in enumerate(items):
        if i in flip:
            cls = classes[(classes.index(cls) + int(rng.integers(1, len(classes)))) % len(classes)]
        name = f"{path.parent.parent.name}_{path.name}"
        dst = out / cls / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, dst) if path.stat().st_dev == out.stat().st_dev else shutil.copy(path, dst)
        if i in flip:
            flipped.add(f"{cls}/{name}")
    return flipped


def build_clean(source: Path, out: Path, target: int = 3000) -> list[str]:
    """~target distinct images: the four quadrants of each photo, in train/validation/test folders."""
    shutil.rmtree(out, ignore_errors=True)
    items = originals(source)
    rng = np.random.default_rng(0)
    made = []
    for k, (cls, path) in enumerate(items):
        if len(made) >= target:
            break
        img = Image.open(path).convert("RGB")
        w, h = img.size
        for q, box in enumerate(
            [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
        ):
            u = rng.random()
            split = "train" if u < 0.7 else ("validation" if u < 0.85 else "test")
            rel = f"{split}/{cls}/{k:05d}_{q}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            img.crop(box).save(out / rel, quality=92)
            made.append(rel)
    return made[:target]


def plant_copies(root: Path, made: list[str], n: int = 20) -> set[frozenset[str]]:
    rng = np.random.default_rng(1)
    train = [r for r in made if r.startswith("train/")]
    pairs = set()
    for rel in rng.choice(train, size=n, replace=False):
        cls, name = rel.split("/")[1], rel.split("/")[2]
        copy = f"test/{cls}/copy_{Path(name).stem}.jpg"
        (root / copy).parent.mkdir(parents=True, exist_ok=True)
        (root / copy).write_bytes(near_copy(Image.open(root / rel)))
        pairs.add(frozenset((rel, copy)))
    return pairs


def fresh_cache() -> str:
    path = tempfile.mkdtemp(prefix="doctor-bench-cache-")
    os.environ["STUDIO_CACHE_DIR"] = path
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", nargs="?", default="/work/shared/datasets/beans")
    ap.add_argument("--work", default="/tmp/doctor-bench")
    ap.add_argument("--seeds", type=int, default=3, help="label-flip trials (0: skip them)")
    ap.add_argument("--flips-on", default="", help="'digits': measure the flips on scikit-learn's digits")
    ap.add_argument("--flips-only", action="store_true", help="skip the duplicate and time parts")
    args = ap.parse_args()
    source, work = Path(args.source), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    flip_source = build_digits(work / "digits") if args.flips_on == "digits" else source
    out: dict = {}

    # 1. label flips
    precisions, recalls, baselines, found_all = [], [], [], []
    for seed in range(args.seeds):
        fresh_cache()
        data = work / f"flipped-{seed}"
        flipped = build_flipped(flip_source, data, seed)
        report = doctor.examine(data, weights=WEIGHTS)
        k = len(flipped)
        ranked = [r["path"] for r in report.label_issues]
        top = set(ranked[:k])
        precisions.append(len(top & flipped) / k)
        recalls.append(len(top & flipped) / k)
        found_all.append(len(set(ranked) & flipped) / k)
        rng = np.random.default_rng(100 + seed)
        random_top = set(rng.permutation(sorted(r for r in _relpaths(data)))[:k].tolist())
        baselines.append(len(random_top & flipped) / k)
        print(f"flips seed {seed}: k={k} P@k={precisions[-1]:.3f} R@k={recalls[-1]:.3f} "
              f"(listed {len(ranked)}, recall of the whole list {found_all[-1]:.3f}) random P@k={baselines[-1]:.3f}", flush=True)  # fmt: skip
    out["flips"] = (
        {}
        if not args.seeds
        else {
            "dataset": "digits" if args.flips_on == "digits" else flip_source.name,
            "images": len(_relpaths(work / "flipped-0")),
            "k": k,
            "precision_at_k": round(float(np.mean(precisions)), 3),
            "recall_at_k": round(float(np.mean(recalls)), 3),
            "per_seed": [round(p, 3) for p in precisions],
            "recall_of_whole_list": round(float(np.mean(found_all)), 3),
            "random_precision_at_k": round(float(np.mean(baselines)), 3),
        }
    )

    if args.flips_only:
        print(json.dumps(out), flush=True)
        return 0

    # 2. near-duplicates on ~3,000 clean images
    clean = work / "clean3000"
    made = build_clean(source, clean)
    fresh_cache()
    clean_report = doctor.examine(clean, weights=WEIGHTS)
    planted_root = work / "planted3000"
    shutil.rmtree(planted_root, ignore_errors=True)
    shutil.copytree(clean, planted_root)
    pairs = plant_copies(planted_root, made)
    cache_planted = fresh_cache()
    t0 = time.perf_counter()
    feats = doctor_features.compute(doctor.load_scan(planted_root, curated=False), weights=WEIGHTS)
    feature_pass = time.perf_counter() - t0  # the pass training pays (TensorFlow warm, base built)
    del feats
    fresh_cache()
    t0 = time.perf_counter()
    report = doctor.examine(planted_root, weights=WEIGHTS)
    cold = time.perf_counter() - t0
    found = {frozenset((r["a"], r["b"])) for r in report.near_duplicates}
    hits = len(found & pairs)
    false_pairs = len(found - pairs)
    sims = sorted(r["similarity"] for r in report.near_duplicates if frozenset((r["a"], r["b"])) in pairs)
    print(f"duplicates: {hits}/20 planted found, {false_pairs} false pairs on {len(made) + 20} images "
          f"(clean set alone: {len(clean_report.near_duplicates)} pairs); planted similarities {sims[:3]}…", flush=True)  # fmt: skip
    out["duplicates"] = {
        "images": len(made) + 20,
        "planted_found": hits,
        "false_pairs": false_pairs,
        "pairs_on_clean_set": len(clean_report.near_duplicates),
        "kinds": sorted({r["kind"] for r in report.near_duplicates if frozenset((r["a"], r["b"])) in pairs}),
        "lowest_planted_similarity": sims[0] if sims else None,
    }

    # 3. time: warm = a fresh CLI process with the features cached (no TensorFlow needed)
    env = dict(os.environ, STUDIO_CACHE_DIR=cache_planted)
    warm = []
    for _ in range(2):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lib", "doctor", str(planted_root), "--json", "--weights", WEIGHTS],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        warm.append(time.perf_counter() - t0)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.splitlines()[-1])["features"]["cache"] == "hit"
    out["time"] = {
        "images": len(made) + 20,
        "feature_pass_seconds": round(feature_pass, 1),
        "cold_seconds": round(cold, 1),
        "cold_over_feature_pass": round(cold / feature_pass, 2),
        "warm_first_result_seconds": round(float(np.median(warm)), 1),
        "warm_runs": [round(w, 1) for w in warm],
    }
    print(f"time: feature pass {feature_pass:.1f} s, doctor cold {cold:.1f} s ({cold / feature_pass:.2f}x), "
          f"warm (whole CLI process) {np.median(warm):.1f} s", flush=True)  # fmt: skip
    targets = {
        "precision_at_k>=0.8": out["flips"].get("precision_at_k", 0) >= 0.8,
        "recall_at_k>=0.8": out["flips"].get("recall_at_k", 0) >= 0.8,
        "planted_found>=19": hits >= 19,
        "false_pairs<=5": false_pairs <= 5,
        "warm<=15s": out["time"]["warm_first_result_seconds"] <= 15,
        "cold<=1.2x": out["time"]["cold_over_feature_pass"] <= 1.2,
    }
    out["targets_met"] = targets
    print(json.dumps(out))
    return 0


def _relpaths(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]


if __name__ == "__main__":
    raise SystemExit(main())
