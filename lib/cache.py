"""The one place that knows Streamlit: cached wrappers around lib and the state shared between pages.

Cache keys are plain values (paths, fingerprints of files), never TensorFlow objects.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from lib import datasets, settings, workspace

DATASET_KEY = "dataset_dir"
TOKEN_KEY = "ws"


def workspace_token() -> str | None:
    """Hosted mode: this visitor's workspace token, kept in the URL (?ws=...) so a refresh or a
    bookmark finds the same workspace. Streamlit drops query parameters when the sidebar switches
    pages, so the session remembers it and puts it back. Local use: None (one shared runs folder)."""
    if not settings.hosted():
        return None
    token = st.session_state.get(TOKEN_KEY) or st.query_params.get(TOKEN_KEY)
    if not workspace.valid_token(token):
        token = workspace.new_token()
    st.session_state[TOKEN_KEY] = token
    if st.query_params.get(TOKEN_KEY) != token:
        st.query_params[TOKEN_KEY] = token
    return token


def runs_dir() -> Path:
    """Where this visitor's runs live (the shared models/ folder in local use)."""
    return workspace.runs_dir_for(workspace_token())


NAV = [
    ("streamlit_app.py", "Home", "🏠"),
    ("pages/1_Dataset.py", "1 · Dataset", "🗂️"),
    ("pages/2_Train.py", "2 · Train", "🏋️"),
    ("pages/3_Evaluate.py", "3 · Evaluate", "🔍"),
    ("pages/4_Predict.py", "4 · Predict", "📷"),
]


def sidebar() -> None:
    """The page links (Home and the four steps) and, when hosted, when the workspace expires, a
    download of its runs, and the privacy note."""
    with st.sidebar:
        for page, label, icon in NAV:
            st.page_link(page, label=label, icon=icon)
    token = workspace_token()
    if token is None:
        return
    workspace.cleanup_if_due()
    with st.sidebar:
        expires = workspace.expires_at(token)
        st.caption(
            f"Your workspace is private to this link (bookmark it). It is deleted "
            f"{expires:%Y-%m-%d %H:%M} UTC unless you come back before then."
        )
        if workspace.finished_runs(token):
            st.download_button(
                "Download my models (zip)",
                data=lambda: workspace.runs_zip(token),
                file_name="my-models.zip",
                mime="application/zip",
            )
        st.caption(
            "Privacy: photos you upload are used only to answer you. Predicted photos are not stored; "
            "uploaded datasets and your models stay in your workspace until it expires."
        )


@st.cache_data(show_spinner=False, max_entries=8)
def _scan(root: str, fingerprint: str) -> datasets.Scan:
    return datasets.scan(Path(root), max_pixels=settings.max_pixels())


def scan(root: str | Path) -> datasets.Scan:
    """Scan a dataset folder; cached until any file under it is added, removed or changed."""
    root = Path(root)
    return _scan(str(root.resolve()), datasets.scan_key(root))


def current_dataset() -> Path | None:
    """The dataset chosen on the Dataset page (carried across pages in the session and the URL)."""
    value = st.session_state.get(DATASET_KEY)
    if value and Path(value).is_dir():
        return Path(value)
    return None


def set_dataset(path: str | Path | None) -> None:
    if path is None:
        st.session_state.pop(DATASET_KEY, None)
    else:
        st.session_state[DATASET_KEY] = str(Path(path).resolve())


@st.cache_data(show_spinner=False, max_entries=2000)
def _thumbnail(path: str, mtime_ns: int, side: int):
    from lib import images

    return images.thumbnail(path, side)


def thumbnail(path: str | Path, side: int = 256):
    """A small preview of an image file, cached until the file changes."""
    p = Path(path)
    return _thumbnail(str(p), p.stat().st_mtime_ns, side)


def upload_dir(name: str, data: bytes) -> Path:
    """Where an uploaded zip is unpacked: keyed by its content, so the same zip is unpacked once."""
    import hashlib

    digest = hashlib.sha1(data).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(name).stem)[:40] or "upload"
    return workspace.uploads_dir_for(workspace_token()) / f"{stem}-{digest}"


def finished_runs() -> list:
    """This visitor's runs that have a model, newest first, then the shipped demo model (read-only)."""
    from lib import runs

    infos = runs.list_runs(runs_dir())
    done = [i for i in infos if i.state == "finished" and i.has_model and not i.damaged]
    done.sort(key=lambda i: i.created or i.run_id, reverse=True)
    demo = settings.demo_run_dir()
    if demo is not None:
        info = runs.read_run_info(demo)
        if info.has_model and not info.damaged:
            info.name = "Demo: bean leaves"
            done.append(info)
    return done


def run_label(info) -> str:
    """How a run appears in pickers: name · base · date · validation accuracy."""
    acc = f" · val {info.val_accuracy:.1%}" if info.val_accuracy is not None else ""
    when = (info.created or "")[:16].replace("T", " ")
    return f"{info.name} · {info.base} · {when}{acc}"


@st.cache_data(show_spinner=False, max_entries=32, ttl=3600)
def _predictions(run_dir: str, data_dir: str | None, split: str, model_mtime: int, data_key: str):
    from lib import evaluation

    return evaluation.predict_split(run_dir, data_dir, split)


def predictions(run_dir: str, data_dir: str | None, split: str):
    """A run's predictions on a split (stored on disk by lib.evaluation, and in memory here)."""
    from lib import runs

    model = Path(run_dir) / "model.keras"
    mtime = model.stat().st_mtime_ns if model.exists() else 0
    try:
        root = Path(data_dir) if data_dir else Path(split) if Path(split).is_dir() else None
        if root is None:
            cfg = runs.read_config(run_dir)
            root = Path(runs.resolve_data_dir(cfg.get("data_dir")) or "")
        data_key = datasets.scan_key(root) if root.is_dir() else ""
    except Exception:  # the lib call below gives the user the precise message
        data_key = ""
    return _predictions(run_dir, data_dir, split, mtime, data_key)


@st.cache_data(show_spinner=False, max_entries=4000)
def _thumb_url(path: str, mtime_ns: int) -> str:
    import base64
    import io

    from PIL import Image

    from lib import images

    try:
        im = Image.fromarray(images.thumbnail(path, 96))
    except Exception:
        return ""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


THUMBNAIL_ROWS = 300


def prediction_table(view):
    """The prediction table for display; thumbnails for the first THUMBNAIL_ROWS rows keep 10,000 rows fast."""
    import pandas as pd

    from lib.text import readable_label

    head = view.head(THUMBNAIL_ROWS)
    thumbs = []
    for p in head["path"]:
        try:
            thumbs.append(_thumb_url(p, Path(p).stat().st_mtime_ns))
        except OSError:
            thumbs.append("")
    thumbs += [None] * (len(view) - len(head))
    return pd.DataFrame(
        {
            "thumbnail": thumbs,
            "file": view["path"].str.rsplit("/", n=1).str[-1].to_numpy(),
            "actual": [readable_label(c) for c in view["actual"]],
            "predicted": [readable_label(c) for c in view["predicted"]],
            "confidence": view["confidence"].to_numpy(),
            "correct": view["correct"].to_numpy(),
            "path": view["path"].to_numpy(),
        }
    )


@st.cache_data(show_spinner=False, max_entries=32)
def _model_summary(run_dir: str, mtime_ns: int) -> dict:
    from lib import evaluation

    return evaluation.model_summary(run_dir)


def model_summary(run_dir: str) -> dict:
    model = Path(run_dir) / "model.keras"
    return _model_summary(run_dir, model.stat().st_mtime_ns if model.exists() else 0)


@st.cache_data(show_spinner=False, max_entries=16)
def augmentation_preview(path: str, settings_items: tuple, seed: int, n: int = 9, size: int = 224) -> list:
    """n random augmentations of one image, made by the same Keras layers training uses."""
    import numpy as np

    from lib import images, training

    options = dict(settings_items)
    config = training.TrainConfig(augment=True, seed=int(seed) % 100_000, **options)
    rgb = images.decode(path, size)
    layer = training.augmenter(config, seed=config.seed)
    if layer is None:
        return [rgb] * n
    batch = np.repeat(rgb[None].astype("float32"), n, axis=0)
    out = np.asarray(layer(batch, training=True))
    return [np.clip(x, 0, 255).astype("uint8") for x in out]


@st.cache_resource(show_spinner=False, max_entries=3, ttl=3600)
def _predictor(run_dir: str, mtime_ns: int):
    from lib import prediction

    return prediction.load_predictor(run_dir)


def predictor(run_dir: str | Path):
    """A loaded model (bounded: at most 3 in memory, dropped after an hour unused)."""
    model = Path(run_dir) / "model.keras"
    return _predictor(str(run_dir), model.stat().st_mtime_ns if model.exists() else 0)


def best_run_index(infos: list) -> int:
    """The visitor's newest best run (highest validation accuracy, newest wins ties); the demo
    model only when there is nothing else."""
    demo = settings.demo_run_dir()
    own = [n for n, i in enumerate(infos) if demo is None or i.path != demo]
    if not own:
        return 0  # only the demo
    scored = [
        (infos[n].val_accuracy if infos[n].val_accuracy is not None else -1.0, infos[n].created or "", n)
        for n in own
    ]
    return max(scored)[2]


def saved_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded file (a weights file) in this visitor's uploads, named by its content."""
    from lib import runs

    suffix = ".weights.h5" if name.lower().endswith(".weights.h5") else Path(name).suffix.lower()[:12]
    folder = upload_dir(name, data)
    target = folder.with_name(folder.name + (suffix or ".bin"))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        runs.write_atomic(target, data)
    return target
