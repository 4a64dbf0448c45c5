"""The one frame around every page: page config, navigation over pages/, the sidebar, the hosted
workspace (its expiry, disk use and privacy note), no error details for visitors when hosted, and,
once per process, removing the temporary files killed processes left. streamlit_app.py calls
`run()`; page files only render."""

from __future__ import annotations

import gc
import logging
import sys
import time
from dataclasses import dataclass

import streamlit as st
from streamlit.errors import FragmentHandledException

from lib import settings, storage, workspace
from lib.data import images
from lib.models import loader
from lib.ui import state


@dataclass(frozen=True)
class PageInfo:
    path: str
    title: str
    icon: str
    url: str  # the page's address: /Dataset, /Train ... ("" for the home page)
    blurb: str = ""
    step: bool = True  # one of the four steps the home page shows


PAGES = (
    PageInfo("pages/0_Home.py", "Home", "🏠", ""),
    PageInfo(
        "pages/1_Dataset.py",
        "1 · Dataset",
        "🗂️",
        "Dataset",
        "Pick the bundled sample, upload a zip or open a folder; check class balance and file health.",
    ),
    PageInfo(
        "pages/5_Doctor.py",
        "Data doctor",
        "🩺",
        "Doctor",
        "Suspect labels, near-duplicates and outliers, fixed with one click (your files untouched).",
        step=False,
    ),
    PageInfo(
        "pages/2_Train.py",
        "2 · Train",
        "🏋️",
        "Train",
        "Choose a pretrained base and settings, press Start, watch the curves.",
    ),
    PageInfo(
        "pages/3_Evaluate.py",
        "3 · Evaluate",
        "🔍",
        "Evaluate",
        "Confusion matrix, per-class scores, every mistake one click away.",
    ),
    PageInfo(
        "pages/4_Predict.py",
        "4 · Predict",
        "📷",
        "Predict",
        "Drop in photos (or take one) and get a verdict in plain words.",
    ),
)
STEPS = tuple(p for p in PAGES[1:] if p.step)


def page(path: str) -> PageInfo:
    return next(p for p in PAGES if p.path == path)


LOG = logging.getLogger(__name__)
_STARTED = {"done": False}  # once per server process (this module is imported once)


def clean_on_start() -> None:
    """Process-wide set-up the first time any visitor opens a page: remove the temporary files of
    processes killed earlier (a crashed app, a killed worker), tune malloc for decoding, and make
    the demo's LiteRT model in the background when it isn't made yet."""
    if not _STARTED["done"]:
        _STARTED["done"] = True
        storage.clean_temp_files()
        images.tune_malloc()
        loader.prepare_in_background(settings.demo_run_dir())  # the demo's LiteRT model, if missing


ERROR_DETAILS = "client.showErrorDetails"
_configured_details: dict[str, object] = {}  # the value from config.toml, before hosted mode changes it


def error_details() -> None:
    """Hosted: an unexpected error shows visitors Streamlit's generic message only (no traceback,
    type or message: they can name server files); it is still logged in full on the server
    (Streamlit's logger, "Uncaught app execution"). Locally, the configured details (full)."""
    if "value" not in _configured_details:
        _configured_details["value"] = st.get_option(ERROR_DETAILS)
    wanted = "none" if settings.hosted() else _configured_details["value"]
    if st.get_option(ERROR_DETAILS) != wanted:
        st.set_option(ERROR_DETAILS, wanted)


def run() -> None:
    """Draw the frame and run the page the visitor is on. Hosted, an unexpected error is logged
    here (Python logging, logger lib.ui.frame) before Streamlit shows its generic message."""
    error_details()  # first, so even a failing set-up shows no traceback to a visitor
    try:
        _run()
    except FragmentHandledException:
        raise  # a fragment's error: Streamlit has shown and logged it already
    except Exception:
        if settings.hosted():
            LOG.exception("Uncaught error on a page (the visitor saw only a generic message)")
        raise
    finally:
        freeze_old_objects()


REFREEZE_SECONDS = 600.0
_frozen_at: list[float] = []


def freeze_old_objects(now: float | None = None) -> bool:
    """Once TensorFlow is loaded in this server (Grad-CAM, the Keras engine, an augmentation
    preview), move the objects alive now out of the garbage collector's sight (gc.freeze).
    Streamlit collects garbage after every script run and, with Keras imported, calls
    keras.backend.clear_session(), which collects again: with TensorFlow's ~330,000 objects that is
    ~0.4 s of CPU after every click; frozen, ~0 ms. Every REFREEZE_SECONDS everything is unfrozen
    and collected once, so what died meanwhile (an evicted model's cycles) is still freed.
    Returns whether it froze now."""
    if "tensorflow" not in sys.modules:
        return False
    now = time.monotonic() if now is None else now
    if _frozen_at and now - _frozen_at[-1] < REFREEZE_SECONDS:
        return False
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _frozen_at[:] = [now]
    return True


def _run() -> None:
    clean_on_start()
    st.set_page_config(page_title="Image classifier studio", page_icon="🖼️", layout="wide")
    pages = [
        st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url or None, default=(i == 0))
        for i, p in enumerate(PAGES)
    ]
    current = st.navigation(pages, position="hidden")
    sidebar()
    current.run()


def sidebar() -> None:
    """The page links (Home and the four steps) and, when hosted, when the workspace expires, a
    download of its runs, and the privacy note."""
    with st.sidebar:
        for p in PAGES:
            st.page_link(p.path, label=p.title, icon=p.icon)
    token = state.workspace_token()
    if token is None:
        return
    workspace.cleanup_if_due()
    with st.sidebar:
        expires = workspace.expires_at(token)
        st.caption(
            f"Your workspace is private to this link (bookmark it). It is deleted "
            f"{expires:%Y-%m-%d %H:%M} UTC unless you come back before then. " + workspace.usage_text(token)
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


def hosted_note() -> None:
    if settings.hosted():
        st.caption("This is a shared demo: your uploads and models are kept apart from other visitors'.")
