"""The app's vocabulary: every fixed name and choice list, defined once.

Split names, run states, augmentation flips, optimizers, poolings, weight choices, image and archive
extensions, junk-file names and a run folder's file names. Pages, the CLI, the config check and the
scan all read them from here, so a choice offered in one place is always understood in another.
"""

from __future__ import annotations

from pathlib import PurePosixPath

# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = (*SPLITS, "all")  # what evaluation accepts besides a folder of images
# Folder names a dataset may use for its splits (lower-cased), and the split each one means.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}
SPLIT_ALIASES = {**SPLIT_FOLDERS, "eval": "validation", "all": "all"}


def split_name(text: object) -> str | None:
    """The canonical split for a name a user typed ("val" -> "validation"), or None."""
    return SPLIT_ALIASES.get(str(text).strip().lower())


# ----------------------------------------------------------------------------------------------
# Runs and jobs
# ----------------------------------------------------------------------------------------------

RUN_STATES = ("queued", "running", "finished", "stopped", "failed", "cancelled", "interrupted")
# Ended with a model: "stopped" ran into this server's time limit and kept its best weights.
DONE_STATES = ("finished", "stopped")
ACTIVE_STATES = ("queued", "running")
RESUMABLE_STATES = ("interrupted", "failed", "cancelled")
RUN_FILES = {
    "config": "config.json",
    "classes": "classes.txt",
    "history": "history.csv",
    "model": "model.keras",
    "metrics": "metrics.json",
    "status": "status.json",
    "log": "log.txt",
    "notes": "notes.md",
    "unknown": "unknown.npz",  # the unknown-photo detector and the temperature (lib.models.unknown)
    "head": "head.npz",  # the head as numpy, for scoring cached features (lib.models.head)
    "checkpoint": "checkpoint.npz",
    "cancel": "cancel.request",
    "worker_log": "worker.log",
}
HISTORY_COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
# Training phases as progress reports name them (the first three are epochs of a fit).
EPOCH_PHASES = ("head", "train", "fine-tune")

# ----------------------------------------------------------------------------------------------
# Training choices (value -> words shown to people)
# ----------------------------------------------------------------------------------------------

WEIGHTS = {
    "auto": "Automatic: ImageNet if it can be downloaded, else the bundled offline backbone",
    "imagenet": "ImageNet (downloads once)",
    "bundled": "Bundled offline backbone (MobileNetV2)",
    "none": "None: train from scratch",
}
FLIPS = {
    "horizontal": "Left-right",
    "vertical": "Up-down",
    "horizontal_and_vertical": "Both",
    "none": "No flips",
}
OPTIMIZERS = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD with momentum"}
POOLINGS = {"avg": "Global average pooling", "flatten": "Flatten (keeps where things are)"}

# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO")  # Pillow format names we decode
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_EXTENSIONS = (
    ".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".tbz2", ".txz", ".jar", ".apk",
)  # fmt: skip
# System files that are never photos (compared lower-case); names starting with "." are junk too.
JUNK_NAMES = frozenset(
    {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "__macosx", "icon\r", "@eadir"}
)


def is_junk_name(name: str) -> bool:
    """A hidden or system file or folder name (.DS_Store, Thumbs.db, __MACOSX, ._photo.jpg ...)."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def is_junk_path(path: str) -> bool:
    """A path (zip member, relative path) with a junk name anywhere in it."""
    return any(is_junk_name(part) for part in PurePosixPath(path.replace("\\", "/")).parts)


def looks_like_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_EXTENSIONS)
