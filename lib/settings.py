"""Settings read from the environment (or `.streamlit/secrets.toml` via the app), with safe defaults.

Every setting is documented in the README. Functions, not module constants, so tests can set
environment variables per test.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def hosted() -> bool:
    """Hosted mode: a public demo link (no server folders, limits on uploads and training)."""
    return _flag("STUDIO_HOSTED", False)


def allow_server_folders() -> bool:
    """Whether the Dataset page may read a folder on the server (off by default when hosted)."""
    return _flag("STUDIO_ALLOW_SERVER_FOLDERS", not hosted())


def runs_dir() -> Path:
    return Path(os.environ.get("STUDIO_RUNS_DIR") or ROOT / "models")


def cache_dir() -> Path:
    """Feature caches, extracted uploads, downloaded datasets and read-only runs' predictions."""
    return Path(os.environ.get("STUDIO_CACHE_DIR") or ROOT / ".cache")


def max_pixels() -> int:
    return _int("STUDIO_MAX_PIXELS", 50_000_000)


def max_decode_mb() -> int:
    """Most memory one image may need while it is decoded (estimated from its header, before any
    pixel exists): 220 MB lets every 50-megapixel image through except very large WebPs."""
    return _int("STUDIO_MAX_DECODE_MB", 220)


def decode_budget_mb() -> int:
    """Decoded pixels all threads of the process may hold at once; decodes beyond it wait. Hosted:
    300 (one largest image plus small ones), so a pixel-bomb zip beside a training job keeps the
    whole app under 2 GB (bench/load_test.py)."""
    return max(max_decode_mb(), _int("STUDIO_DECODE_BUDGET_MB", 300 if hosted() else 600))


def max_predict_files() -> int:
    """Most photos judged in one batch on the Predict page or the CLI (the rest are told to wait)."""
    return _int("STUDIO_MAX_PREDICT_FILES", 50 if hosted() else 5000)


def max_predict_mb() -> int:
    """Most megabytes of photos (zip members at their unpacked size) in one batch."""
    return _int("STUDIO_MAX_PREDICT_MB", 50 if hosted() else 5000)


def max_predict_megapixels() -> int:
    """Most megapixels decoded for one batch (about 2 CPU-seconds per 50 megapixels)."""
    return _int("STUDIO_MAX_PREDICT_MEGAPIXELS", 800 if hosted() else 100_000)


def max_upload_mb() -> int:
    return _int("STUDIO_MAX_UPLOAD_MB", 200 if hosted() else 2000)


def sample_dir() -> Path:
    return ROOT / "data" / "sample"


def max_concurrent_jobs() -> int:
    """Training jobs that may run at once; the rest wait in a queue with a visible position."""
    return _int("STUDIO_MAX_JOBS", 1)


# ----------------------------------------------------------------------------------------------
# Hosted-demo caps and workspaces (each has a generous local default and a tighter hosted one)
# ----------------------------------------------------------------------------------------------


def _float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def max_epochs() -> int:
    """Most epochs (head plus fine-tuning) one training run may ask for."""
    return _int("STUDIO_MAX_EPOCHS", 30 if hosted() else 500)


def max_fine_tune_epochs() -> int:
    """Most fine-tuning epochs (the whole top of the base trains: slow on a CPU)."""
    return _int("STUDIO_MAX_FINE_TUNE_EPOCHS", 10 if hosted() else 200)


def max_fine_tune_layers() -> int:
    """Most base layers unfrozen for fine-tuning."""
    return _int("STUDIO_MAX_FINE_TUNE_LAYERS", 100 if hosted() else 500)


def max_augmented_views() -> int:
    """Most augmented views per training image in the feature cache (each costs a feature pass)."""
    return _int("STUDIO_MAX_AUGMENTED_VIEWS", 5 if hosted() else 20)


def max_hidden_units() -> int:
    """Largest hidden layer of the head."""
    return _int("STUDIO_MAX_HIDDEN_UNITS", 1024 if hosted() else 8192)


def job_time_limit_minutes() -> float:
    """Wall-clock minutes one training job may take (0: no limit); the best weights so far are kept."""
    return _float("STUDIO_JOB_TIME_LIMIT_MINUTES", 15.0 if hosted() else 0.0)


def max_queued_jobs() -> int:
    """Training jobs waiting or running on the whole server at once; more are refused with a reason."""
    return _int("STUDIO_MAX_QUEUED_JOBS", 5 if hosted() else 50)


def one_job_per_workspace() -> bool:
    """Hosted: a visitor may have one job queued or running at a time."""
    return _flag("STUDIO_ONE_JOB_PER_WORKSPACE", hosted())


def max_image_size() -> int:
    """Largest training image size in pixels (memory and time grow with its square)."""
    return _int("STUDIO_MAX_IMAGE_SIZE", 224 if hosted() else 512)


def max_train_images() -> int:
    """Most images (all splits) a training run may use, so one visitor can't hold the machine for long."""
    return _int("STUDIO_MAX_TRAIN_IMAGES", 2000 if hosted() else 1_000_000)


def max_zip_files() -> int:
    """Most files an uploaded zip may hold (more is refused as a possible zip bomb)."""
    return _int("STUDIO_MAX_ZIP_FILES", 5000 if hosted() else 100_000)


def max_zip_mb() -> int:
    """Most megabytes an uploaded zip may unpack to (counted while unpacking, not trusted from the header)."""
    return _int("STUDIO_MAX_ZIP_MB", 500 if hosted() else 5000)


def workspace_ttl_hours() -> float:
    """Hours a hosted visitor's workspace (uploads, runs) is kept after its last visit."""
    return max(0.01, _float("STUDIO_WORKSPACE_TTL_HOURS", 24.0))


def workspace_quota_mb() -> int:
    """Hosted: most megabytes one visitor's workspace (uploads and runs) may hold; 0 means no limit."""
    return max(0, _int("STUDIO_WORKSPACE_QUOTA_MB", 1000 if hosted() else 0))


def feature_cache_mb() -> int:
    """Most megabytes the shared feature cache may hold (the least recently used entries leave first)."""
    return max(1, _int("STUDIO_FEATURE_CACHE_MB", 2000 if hosted() else 20_000))


def min_free_mb() -> int:
    """Megabytes of disk always left free: a write that would eat into them is refused as "disk full"."""
    return max(0, _int("STUDIO_MIN_FREE_MB", 500 if hosted() else 200))


def allow_model_uploads() -> bool:
    """Whether visitors may upload model or weights files (off by default when hosted)."""
    return _flag("STUDIO_ALLOW_MODEL_UPLOADS", not hosted())


def max_loaded_models() -> int:
    """Models kept loaded in memory at once (shared by every page and visitor; the oldest leaves)."""
    return _int("STUDIO_MAX_LOADED_MODELS", 2 if hosted() else 3)


def max_model_mb() -> int:
    """Largest model (.keras) or weights (.h5) file accepted for loading from outside."""
    return _int("STUDIO_MAX_MODEL_MB", 200)


def check_memory_mb() -> int:
    """Memory (MB, beyond its own start-up) of the short-lived process that first reads a model or
    weights file from outside; a file needing more is refused (see lib.models.safety)."""
    return max(16, _int("STUDIO_CHECK_MEMORY_MB", 1024))


def demo_dir() -> Path:
    """The folder holding the shipped demo run (rebuilt by scripts/make_demo_model.py)."""
    return Path(os.environ.get("STUDIO_DEMO_DIR") or ROOT / "demo")


def demo_run_dir() -> Path | None:
    """The demo run folder (demo/<run-id>/ with a model.keras), or None when there is none."""
    try:
        found = [
            p
            for p in demo_dir().iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "model.keras").is_file()
        ]
    except OSError:
        return None
    return max(found, key=lambda p: p.name) if found else None


def engine() -> str:
    """Which engine runs the models: auto (LiteRT on a CPU, Keras where LiteRT is missing or a GPU
    is visible), litert or keras. See lib.models.engine."""
    return (os.environ.get("STUDIO_ENGINE") or "auto").strip().lower()
