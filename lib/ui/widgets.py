"""Pieces several pages draw: messages about errors (plain text: a class or file name in them never
becomes Markdown), preconditions with one friendly line, the run picker, image galleries and the
live training-job panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from lib import runs, settings
from lib.data.scan import Scan
from lib.errors import UserError
from lib.evaluate.metrics import prob_column
from lib.evaluate.predictions import file_names
from lib.models import unknown
from lib.runs import Run
from lib.serve.predict import acceptance_text
from lib.text import md_escape, readable_labels
from lib.train import jobs
from lib.ui import cached, charts, state
from lib.vocab import DONE_STATES


def acceptance_slider(container: Any, detector: unknown.Detector, key: str) -> float:
    """The acceptance level of the unknown-photo verdict (Predict's Options, Evaluate's check)."""
    return container.select_slider(
        "Accept as a known kind",
        options=list(unknown.ACCEPTANCE_CHOICES),
        value=detector.acceptance
        if detector.acceptance in unknown.ACCEPTANCE_CHOICES
        else unknown.DEFAULT_ACCEPTANCE,
        format_func=acceptance_text,
        key=key,
        help=(
            "The share of real photos (like the training ones) the model accepts. Higher: fewer real "
            "photos refused, but more photos of other things slip through with a name."
        ),
    )


def error(problem: BaseException | str) -> None:
    """st.error showing the message as plain text (Streamlit renders Markdown in it, and messages
    name the user's files, folders and classes)."""
    st.error(md_escape(problem))


def warning(problem: BaseException | str) -> None:
    """st.warning showing the message as plain text (see `error`)."""
    st.warning(md_escape(problem))


def stop_with(message: str, page: str | None = None, label: str = "") -> None:
    """One friendly line saying what to do (with a link), then stop the page."""
    st.info(message)
    if page:
        st.page_link(page, label=label or "Go there", icon="➡️")
    st.stop()


def need_dataset() -> tuple[Path, Scan]:
    """The chosen dataset and its scan, or a friendly stop."""
    root = state.current_dataset()
    if root is None:
        stop_with(
            "Choose a dataset first on the **1 · Dataset** page (the bundled sample is one click).",
            "pages/1_Dataset.py",
            "Go to 1 · Dataset",
        )
    try:
        with st.spinner("Checking every image…"):
            return root, cached.scan(root)
    except UserError as exc:
        error(exc)
        st.stop()


def usable_runs() -> list[Run]:
    """This visitor's finished runs (newest first), then the shipped demo model."""
    return runs.usable_runs(state.runs_dir(), demo=settings.demo_run_dir())


def run_picker(key: str, *, preselect: str = "newest") -> Run:
    """Pick one of the visitor's usable runs (or the demo); stops with a friendly line when there
    are none. preselect "best": the visitor's best run, else the newest."""
    found = usable_runs()
    if not found:
        stop_with(
            "There is no trained model yet. Train one on the **2 · Train** page, then come back.",
            "pages/2_Train.py",
            "Go to 2 · Train",
        )
    by_path = {str(r.path): r for r in found}
    index = 0
    if preselect == "best" and (best := runs.best_run(found)) is not None:
        index = list(by_path).index(str(best.path))
    chosen = st.selectbox(
        "Model", list(by_path), index=index, format_func=lambda p: by_path[p].label(), key=key
    )
    return by_path[chosen]


def gallery(rows: pd.DataFrame, classes: list[str], key: str, columns: int = 4) -> None:
    """Images in a grid, each with its verdict and probability bars."""
    cols = st.columns(columns)
    labels = readable_labels(classes)
    for i, (_, row) in enumerate(rows.iterrows()):
        with cols[i % columns]:
            st.image(cached.thumbnail(row["path"]), width="stretch")
            mark = "✅" if row["correct"] else "❌"
            name = file_names(pd.Series([row["path"]])).iloc[0]
            st.caption(
                f"{mark} {md_escape(name)} · actual **{md_escape(labels.get(row['actual'], row['actual']))}**"
            )
            probs = {c: float(row[prob_column(c)]) for c in classes}
            st.plotly_chart(
                charts.probability_bars(probs, top=3),
                key=f"{key}_{i}",
                config={"displayModeBar": False, "staticPlot": True},
            )


# ----------------------------------------------------------------------------------------------
# The live job
# ----------------------------------------------------------------------------------------------

SEEN_KEY = "seen_job_state"


@st.fragment(run_every=1.0)
def live_job(runs_dir: Path) -> None:
    """The job this tab started (or any running one): progress, cancel, resume, retry, curves.
    Redrawn every second; the whole page reruns when the job ends (runs table, estimate)."""
    run = jobs.current_job(runs_dir, state.active_run())
    if run is None:
        return
    seen = st.session_state.get(SEEN_KEY)
    st.session_state[SEEN_KEY] = (run.id, run.state)
    if jobs.just_ended(seen, run):
        st.rerun(scope="app")
    view = jobs.view(run)
    with st.container(border=True):
        st.markdown(f"**Run {md_escape(run.name)}** · {view.state}")
        _job_body(view)
        history = runs.read_history(run.path)
        if len(history):
            st.plotly_chart(charts.training_curves(history), key=f"live_curves_{run.id}")


def _job_body(view: jobs.JobView) -> None:
    run = view.run
    if view.state == "queued":
        st.info(view.message)
    elif view.state == "running":
        st.progress(view.fraction or 0.0, text=view.progress_text)
        if view.eta_text:
            st.caption(view.eta_text)
    elif view.state in DONE_STATES:
        st.success(view.message)
        if view.note:
            st.caption(md_escape(view.note))
        st.page_link("pages/3_Evaluate.py", label="See its mistakes on 3 · Evaluate", icon="🔍")
    else:
        error(view.message)  # the run's reason: may name the user's files and classes
    if view.can_cancel and st.button("Cancel", key=f"cancel_{run.id}"):
        jobs.cancel(run.path)
        st.rerun(scope="app")
    if view.can_resume and st.button("Resume", key=f"resume_{run.id}"):
        _start(lambda: jobs.resume(run.path))
    if view.retry is not None:
        label = f"Train again with the bundled offline backbone ({view.retry.base})"
        if st.button(label, key=f"retry_{run.id}"):
            _start(lambda: jobs.start(view.retry, run.path.parent))


def _start(launch: Any) -> None:
    try:
        state.check_room()
        state.set_active_run(launch())
    except UserError as exc:
        error(exc)
    else:
        st.rerun(scope="app")
