"""Train: pick a base and settings, press Start, watch the live job (it runs in its own process)."""

from pathlib import Path

import streamlit as st

from lib import cache, charts, jobs, models, runs, safety, settings, training
from lib.errors import UserError
from lib.text import md_escape, plural

st.set_page_config(page_title="Train · Image classifier studio", page_icon="🏋️", layout="wide")
cache.sidebar()
st.title("2 · Train")

RUNS_DIR = cache.runs_dir()
jobs.reconcile(RUNS_DIR)

WEIGHTS = {
    "imagenet": "ImageNet (downloads once)",
    "bundled": "Bundled offline backbone (MobileNetV2, 160 px)",
    "none": "None: train from scratch",
    "file": "A weights file…",
}


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 90 else f"{seconds // 60} min {seconds % 60:02d} s"


# --- the live job ---------------------------------------------------------------------------------
def active_run() -> Path | None:
    """The job this tab started, or else any queued/running job (in local use every tab sees all)."""
    chosen = st.session_state.get("active_run")
    if chosen and Path(chosen).is_dir():
        return Path(chosen)
    for info in runs.list_runs(RUNS_DIR):
        if info.state in jobs.ACTIVE:
            return info.path
    return None


@st.fragment(run_every=1.0)
def live_job() -> None:
    run_dir = active_run()
    if run_dir is None:
        return
    status = runs.read_status(run_dir)
    state = status.get("state", "unknown")
    progress = status.get("progress") or {}
    seen = st.session_state.get("seen_state")
    st.session_state["seen_state"] = (str(run_dir), state)
    if seen and seen[0] == str(run_dir) and seen[1] in jobs.ACTIVE and state not in jobs.ACTIVE:
        st.rerun(scope="app")  # the job just ended: refresh the runs table and the estimate too
    with st.container(border=True):
        st.markdown(f"**Run {md_escape(run_dir.name)}** · {state}")
        if state == "queued":
            pos = status.get("position") or jobs.queue_position(run_dir)
            st.info(f"Waiting for another training job to finish (position {pos} in the queue).")
        elif state == "running":
            phase = progress.get("phase", "starting")
            if phase == "features":
                done, total = int(progress.get("done") or 0), int(progress.get("total") or 1)
                st.progress(
                    min(done / max(total, 1), 1.0),
                    text=f"Reading images through the base: {done:,}/{total:,}",
                )
            elif phase in ("head", "train", "fine-tune"):
                ep, eps = int(progress.get("epoch") or 0), int(progress.get("epochs") or 1)
                label = "Fine-tuning" if phase == "fine-tune" else "Training"
                st.progress(min(ep / max(eps, 1), 1.0), text=f"{label}: epoch {ep} of {eps}")
            else:
                st.progress(0.0, text="Starting (loading TensorFlow and the base model)…")
            eta = progress.get("eta_seconds")
            if eta is not None:
                st.caption(f"About {_fmt_seconds(eta)} left.")
            if st.button("Cancel", key=f"cancel_{run_dir.name}"):
                jobs.cancel(run_dir)
                st.rerun(scope="app")
        elif state == "finished":
            metrics = runs.read_metrics(run_dir)
            acc = metrics.get("val_accuracy")
            st.success(
                f"Finished in {_fmt_seconds(metrics.get('train_seconds'))}"
                + (f": validation accuracy **{acc:.1%}**" if acc is not None else "")
                + (
                    f", test accuracy **{metrics['test_accuracy']:.1%}**"
                    if metrics.get("test_accuracy") is not None
                    else ""
                )
                + "."
            )
            if metrics.get("fine_tuning"):
                st.caption(md_escape(metrics["fine_tuning"]))
            st.page_link("pages/3_Evaluate.py", label="See its mistakes on 3 · Evaluate", icon="🔍")
        elif state in ("failed", "cancelled", "interrupted"):
            st.error(f"{state.capitalize()}: {status.get('reason') or 'no reason recorded'}")
            if state == "interrupted" and st.button("Resume", key=f"resume_{run_dir.name}"):
                jobs.resume(run_dir)
                st.rerun(scope="app")
            if state == "failed" and "bundled" in (status.get("reason") or "").lower():
                if st.button("Train again with the bundled offline backbone", key=f"retry_{run_dir.name}"):
                    cfg = training.TrainConfig.from_dict(runs.read_config(run_dir))
                    cfg.base, cfg.weights, cfg.image_size = "MobileNetV2", "bundled", 160
                    st.session_state["active_run"] = str(jobs.start(cfg, RUNS_DIR))
                    st.rerun(scope="app")
        history = runs.read_history(run_dir)
        if history is not None and len(history):
            st.plotly_chart(charts.training_curves(history), key=f"live_curves_{run_dir.name}")


# --- preconditions --------------------------------------------------------------------------------
root = cache.current_dataset()
if root is None:
    live_job()
    st.info("Choose a dataset first on the **1 · Dataset** page (the bundled sample is one click).")
    st.page_link("pages/1_Dataset.py", label="Go to 1 · Dataset", icon="🗂️")
    st.stop()

try:
    scan = cache.scan(root)
except UserError as exc:
    st.error(str(exc))
    st.stop()
usable = scan.manifest[scan.manifest["usable"]]
counts = usable["split"].value_counts().to_dict()
st.markdown(
    f"Dataset **{md_escape(root.name)}**: {plural(len(scan.classes), 'class', 'classes')}, "
    f"{counts.get('train', 0):,} training and {counts.get('validation', 0):,} validation images."
)
if len(usable) > settings.max_train_images():
    st.error(
        f"This dataset has {len(usable):,} images; training here is limited to {settings.max_train_images():,}. "
        "Use a smaller dataset (or run the app on your own computer)."
    )
    st.stop()
if len(scan.classes) < 2:
    st.error(
        "Training needs at least two classes (two sub-folders with images). Add another class on the Dataset page."
    )
    st.stop()

live_job()

# --- settings -------------------------------------------------------------------------------------
st.subheader("New run")
names = list(models.BASES)
c1, c2, c3 = st.columns(3)
base = c1.selectbox(
    "Base model",
    names,
    index=names.index(models.DEFAULT_BASE),
    help="The pretrained network whose knowledge of images is reused.",
    key="t_base",
)
spec = models.get_base(base)
c1.caption(md_escape(spec.summary))
weights_choice = c2.selectbox(
    "Weights",
    list(WEIGHTS),
    format_func=WEIGHTS.get,
    key="t_weights",
    help="Where the base's knowledge comes from.",
)
weights = weights_choice
if weights_choice == "file":
    if not settings.allow_model_uploads():
        c2.warning("Weights files can't be used on this shared demo.")
        weights = "none"
    else:
        upload = c2.file_uploader("A .h5 / .weights.h5 file for this base", type=["h5"], key="t_weights_file")
        if settings.allow_server_folders():
            weights = c2.text_input("…or its path on the server", key="t_weights_path")
        if upload is not None:
            try:
                weights = str(cache.saved_upload(upload.name, upload.getvalue()))
                safety.check_weights_file(weights)
            except UserError as exc:
                c2.error(str(exc))
                weights = "none"
sizes = [s for s in spec.sizes if s <= settings.max_image_size()] or [min(spec.sizes)]
size = c3.selectbox(
    "Image size (px)",
    sizes,
    index=sizes.index(spec.default_size) if spec.default_size in sizes else 0,
    key="t_size",
    help="Images are resized to this square before the base sees them. Larger: slower, sometimes more accurate.",
)
if weights == "bundled" and (base != "MobileNetV2" or size != 160):
    st.warning(
        "The bundled backbone is MobileNetV2 at 160 px: pick that base and size, or another weights option."
    )

c1, c2, c3, c4 = st.columns(4)
epochs = c1.number_input(
    "Epochs",
    1,
    settings.max_epochs(),
    min(40, settings.max_epochs()),
    key="t_epochs",
    help="Passes over the training images (early stopping may end sooner).",
)
batch = c2.selectbox(
    "Batch size", [8, 16, 32, 64, 128], index=2, key="t_batch", help="Images per training step."
)
lr = c3.select_slider(
    "Learning rate",
    [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    value=1e-3,
    key="t_lr",
    help="Step size of learning.",
)
optimizer = c4.selectbox("Optimizer", ["adam", "rmsprop", "sgd"], key="t_opt", help="Adam is a safe default.")

augment = st.toggle(
    "Augment training images (random flips, turns, zooms)",
    key="t_augment",
    help="Helps with few images; slower first run.",
)
with st.expander("More settings"):
    a1, a2, a3 = st.columns(3)
    pooling = a1.selectbox(
        "Head pooling", ["avg", "flatten"], key="t_pool", help="avg = GlobalAveragePooling (small, robust)."
    )
    hidden = a2.number_input("Hidden layer units (0 = none)", 0, 4096, 0, 64, key="t_hidden")
    dropout = a3.slider("Dropout", 0.0, 0.8, 0.2, 0.05, key="t_dropout")
    a1, a2, a3 = st.columns(3)
    smoothing = a1.slider("Label smoothing", 0.0, 0.3, 0.1, 0.05, key="t_smooth")
    class_weights = a2.toggle("Balance classes (class weights)", True, key="t_cw")
    patience = a3.number_input("Early stopping patience (0 = off)", 0, 100, 8, key="t_patience")
    a1, a2, a3 = st.columns(3)
    target = a1.slider("Stop at validation accuracy (0 = off)", 0.0, 1.0, 0.0, 0.01, key="t_target")
    seed = a2.number_input("Seed", 0, 2**31 - 1, 42, key="t_seed")
    views = a3.number_input("Augmented views per image", 1, 10, 3, key="t_views", disabled=not augment)
    cut = None
    if spec.cut_layers:
        cut = st.selectbox("Cut the base at", ["(full base)", *spec.cut_layers], key="t_cut")
        cut = None if cut == "(full base)" else cut
    st.markdown("**Fine-tuning** (after the head is trained: unfreeze the top of the base)")
    b1, b2, b3 = st.columns(3)
    ft_layers = b1.number_input("Layers to unfreeze", 0, 500, 0, key="t_ft_layers")
    ft_epochs = b2.number_input("Fine-tuning epochs", 0, 200, 0, key="t_ft_epochs")
    ft_lr = b3.select_slider(
        "Fine-tuning learning rate", [1e-6, 3e-6, 1e-5, 3e-5, 1e-4], value=1e-5, key="t_ft_lr"
    )
    st.caption(
        "Measured on our test sets, fine-tuning rarely adds accuracy and costs much more time: off by default."
    )

config = training.TrainConfig(
    data_dir=str(root),
    base=base,
    weights=weights or "none",
    image_size=int(size),
    cut_layer=cut,
    pooling=pooling,
    hidden_units=int(hidden),
    dropout=float(dropout),
    augment=bool(augment),
    augmented_views=int(views),
    optimizer=optimizer,
    lr=float(lr),
    epochs=int(epochs),
    batch_size=int(batch),
    label_smoothing=float(smoothing),
    class_weights=bool(class_weights),
    early_stopping=int(patience),
    target_val_accuracy=float(target),
    fine_tune_layers=int(ft_layers),
    fine_tune_epochs=int(ft_epochs),
    fine_tune_lr=float(ft_lr),
    seed=int(seed),
    val_fraction=scan.val_fraction,
    test_fraction=scan.test_fraction,
)
cached = training.cached_features_ready(config, scan)
estimate = training.estimate_seconds(config, counts, cached=cached)
busy = active_run() is not None and runs.read_status(active_run()).get("state") in jobs.ACTIVE
st.markdown(
    f"Estimated time: **about {_fmt_seconds(estimate)}**"
    + (" (image features already cached)" if cached else "")
    + (" · another job is running, this one will wait in the queue" if busy else "")
)
if st.button("Start training", type="primary", key="t_start"):
    try:
        config.check()
        st.session_state["active_run"] = str(jobs.start(config, RUNS_DIR))
    except UserError as exc:
        st.error(str(exc))
    else:
        st.rerun()

# --- runs -----------------------------------------------------------------------------------------
st.subheader("Runs")
infos = runs.list_runs(RUNS_DIR)
if not infos:
    st.caption("No runs yet.")
    st.stop()
st.dataframe(
    [
        {
            "run": i.name,
            "base": i.base,
            "state": i.damaged and f"damaged: {i.damaged}" or i.state,
            "val accuracy": i.val_accuracy,
            "test accuracy": i.test_accuracy,
            "created": (i.created or "")[:19].replace("T", " "),
            "note": i.note,
        }
        for i in infos
    ],
    hide_index=True,
    column_config={
        "val accuracy": st.column_config.NumberColumn(format="percent"),
        "test accuracy": st.column_config.NumberColumn(format="percent"),
    },
)
with st.expander("Rename, describe or delete a run"):
    by_path = {i.path: i for i in infos}
    target_run = st.selectbox("Run", list(by_path), format_func=lambda p: by_path[p].name, key="m_run")
    info = by_path[target_run]
    new_name = st.text_input("Name", value=info.name, key=f"m_name_{info.run_id}")
    note = st.text_area("Note", value=info.note, key=f"m_note_{info.run_id}")
    m1, m2 = st.columns(2)
    if m1.button("Save name and note", key="m_save"):
        try:
            runs.rename_run(target_run, new_name)
            runs.set_note(target_run, note)
        except UserError as exc:
            st.error(str(exc))
        else:
            st.success("Saved.")
    if info.state in ("interrupted", "failed", "cancelled") and not info.has_model:
        if m1.button("Resume this run", key="m_resume", help="Continue from its last checkpoint."):
            st.session_state["active_run"] = str(jobs.resume(target_run))
            st.rerun()
    confirm = m2.checkbox("Yes, delete this run and its model for good", key=f"m_confirm_{info.run_id}")
    if m2.button("Delete run", disabled=not confirm, key="m_delete"):
        if info.state in jobs.ACTIVE:
            jobs.cancel(target_run)
        runs.delete_run(target_run)
        if st.session_state.get("active_run") == str(target_run):
            st.session_state.pop("active_run")
        st.rerun()
