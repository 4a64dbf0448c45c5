"""Train: pick a base and settings, press Start, watch the live job (it runs in its own process)."""

import streamlit as st

from lib import runs, settings
from lib.errors import UserError
from lib.text import duration, md_escape, plural, size_text
from lib.train import estimate, features, jobs
from lib.train.items import check_trainable
from lib.ui import forms, state, widgets

st.title("2 · Train")

RUNS_DIR = state.runs_dir()
jobs.reconcile(RUNS_DIR)

if state.current_dataset() is None:
    widgets.live_job(RUNS_DIR)
root, scan = widgets.need_dataset()
counts = scan.usable["split"].value_counts().to_dict()
st.markdown(
    f"Dataset **{md_escape(root.name)}**: {plural(len(scan.classes), 'class', 'classes')}, "
    f"{counts.get('train', 0):,} training and {counts.get('validation', 0):,} validation images."
)
try:
    check_trainable(scan)
except UserError as exc:
    widgets.error(exc)
    st.stop()

widgets.live_job(RUNS_DIR)

st.subheader("New run")
config = forms.train_form(root, scan)
try:
    cached = features.cached_features_ready(config, scan)
    seconds = estimate.estimate_seconds(config, counts, cached=cached)
except UserError as exc:
    widgets.warning(exc)
else:
    st.markdown(
        f"Estimated time: **about {duration(seconds)}**"
        + (" (image features already cached)" if cached else "")
        + (" · another job is running, this one will wait in the queue" if jobs.active_jobs(RUNS_DIR) else "")
    )
if note := jobs.limits_note():
    st.caption(note)
if st.button("Start training", type="primary", key="t_start"):
    try:
        state.check_room()
        state.set_active_run(jobs.start(config, RUNS_DIR))
    except UserError as exc:
        widgets.error(exc)
    else:
        st.rerun()

st.subheader("Runs")
found = runs.list_runs(RUNS_DIR)
if not found:
    st.caption("No runs yet.")
else:
    st.dataframe(
        runs.runs_table(found),
        hide_index=True,
        column_order=("run", "base", "state", "val accuracy", "test accuracy", "created", "note"),
        column_config={
            "val accuracy": st.column_config.NumberColumn(format="percent"),
            "test accuracy": st.column_config.NumberColumn(format="percent"),
        },
    )
    with st.expander("Rename, describe or delete a run"):
        by_path = {str(r.path): r for r in found}
        chosen = st.selectbox("Run", list(by_path), format_func=lambda p: by_path[p].name, key="m_run")
        run = by_path[chosen]
        new_name = st.text_input("Name", value=run.name, key=f"m_name_{run.id}")
        note = st.text_area("Note", value=run.note, key=f"m_note_{run.id}")
        m1, m2 = st.columns(2)
        if m1.button("Save name and note", key="m_save"):
            try:
                runs.rename_run(run.path, new_name)
                runs.set_note(run.path, note)
            except UserError as exc:
                widgets.error(exc)
            else:
                st.success("Saved.")
        if jobs.view(run).can_resume and m1.button(
            "Resume this run", key="m_resume", help="Continue from its last checkpoint."
        ):
            try:
                state.check_room()
            except UserError as exc:
                widgets.error(exc)
            else:
                state.set_active_run(jobs.resume(run.path))
                st.rerun()
        confirm = m2.checkbox("Yes, delete this run and its model for good", key=f"m_confirm_{run.id}")
        if m2.button("Delete run", disabled=not confirm, key="m_delete"):
            try:
                jobs.delete(run.path)
            except UserError as exc:
                widgets.error(exc)
            else:
                if state.active_run() == str(run.path):
                    state.set_active_run(None)
                st.rerun()

st.subheader("Storage")
cache_bytes = features.feature_cache_bytes()
st.caption(
    f"Cached image features: {size_text(cache_bytes)} (at most {size_text(features.cache_limit())}; the "
    "least recently used go first). They let a second run on the same images start in seconds and "
    "are rebuilt when needed."
)
if "t_cleared" in st.session_state:
    st.success(f"Cleared the cached features: {size_text(st.session_state.pop('t_cleared'))} freed.")
if settings.hosted():
    st.caption("On this shared demo the feature cache serves every visitor, so it is cleared by the host.")
elif st.button("Clear cached features", key="t_clear_cache", disabled=cache_bytes == 0):
    st.session_state["t_cleared"] = features.clear_feature_cache()
    st.rerun()
