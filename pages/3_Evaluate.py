"""Evaluate: how good is a trained run, and which images does it get wrong? Every number is one
click away from the images behind it."""

from pathlib import Path

import streamlit as st

from lib import settings
from lib.errors import UserError
from lib.evaluate import other_photos
from lib.evaluate import predictions as preds
from lib.evaluate.compare import compare_runs
from lib.evaluate.metrics import (
    calibration,
    calibration_note,
    metrics_from_predictions,
    per_class_table,
    temperature_help,
)
from lib.evaluate.report import write_report
from lib.runs import public_config
from lib.text import md_escape, plural, readable_labels
from lib.ui import cached, charts, widgets
from lib.vocab import SPLITS

st.title("3 · Evaluate")

# --- what to evaluate ---------------------------------------------------------------------------
left, right = st.columns([3, 2])
with left:
    run = widgets.run_picker("eval_run")
split = right.radio(
    "Images", preds.split_choices(settings.allow_server_folders()), horizontal=True, key="eval_split"
)
if split == preds.ANOTHER_FOLDER:
    split = right.text_input("Folder with one sub-folder per class", key="eval_folder")
    if not split:
        widgets.stop_with("Type the path of a folder whose sub-folders are named like the model's classes.")
try:
    with st.spinner("Predicting every image (only the first time)…"):
        df = cached.predictions(run, None, split)
except UserError as exc:
    widgets.error(exc)
    st.stop()
if df.empty:
    widgets.stop_with("There are no images in this split.")
classes = run.classes
names = readable_labels(classes)  # distinct even for "cats"/"Cats"
labels = [names[c] for c in classes]
metrics = metrics_from_predictions(df, classes)
detector = cached.detector(run)
shown = preds.calibrated_predictions(df, classes, detector.temperature if detector else None)
root = preds.data_root(run, None, preds.normalize_split(split))
shown_root = root if settings.hosted() else None  # hosted: paths relative to the dataset

# --- summary --------------------------------------------------------------------------------------
st.subheader("Summary")
base = metrics["majority_baseline"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Images", f"{metrics['n_images']:,}")
c2.metric("Correct", f"{metrics['correct']:,}")
c3.metric("Incorrect", f"{metrics['incorrect']:,}")
c4.metric(
    "Accuracy",
    f"{metrics['accuracy']:.1%}",
    delta=f"{(metrics['accuracy'] - base['accuracy']) * 100:+.1f} points vs always '{names.get(base['class'], base['class'])}'",
)
if metrics["top_k_accuracy"]:
    st.caption(" · ".join(f"top-{k} accuracy {v:.1%}" for k, v in metrics["top_k_accuracy"].items()))
if metrics["most_missed"]:
    st.markdown(
        "**Most missed:** "
        + "; ".join(
            f"{md_escape(names[m['actual']])} predicted as {md_escape(names[m['predicted']])}: {m['count']}"
            for m in metrics["most_missed"][:5]
        )
    )
st.dataframe(
    per_class_table(metrics, labels)[["label", "precision", "recall", "f1", "support"]],
    hide_index=True,
    column_config={
        "label": "class",
        "precision": st.column_config.ProgressColumn("precision", format="percent", min_value=0, max_value=1),
        "recall": st.column_config.ProgressColumn("recall", format="percent", min_value=0, max_value=1),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
    },
)

# --- confusion matrix -----------------------------------------------------------------------------
st.subheader("Confusion matrix")
FILTER_KEYS = ("f_actual", "f_predicted", "f_correct", "f_text", "f_conf")


def _show_all() -> None:
    for key in FILTER_KEYS:
        st.session_state.pop(key, None)
    st.session_state["cm_version"] = st.session_state.get("cm_version", 0) + 1
    st.session_state.pop("cm_cell", None)


normalized = st.toggle("Show shares of each row instead of counts", key="cm_normalized")
st.caption(
    "Rows: the actual class. Columns: what the model said. **Click a cell** to see exactly those images."
)
with st.container(key="confusion_matrix"):
    event = st.plotly_chart(
        charts.confusion_matrix(metrics["confusion_matrix"], classes, normalized=normalized),
        on_select="rerun",
        selection_mode="points",
        key=f"cm_{st.session_state.get('cm_version', 0)}",
        width="content",
        config={"displayModeBar": False},
    )
points = (event.selection or {}).get("points", []) if event else []
if points:
    cell = charts.cell_of_point(points[0].get("point_number", points[0].get("point_index")), len(classes))
    if st.session_state.get("cm_cell") != cell:
        st.session_state["cm_cell"] = cell
        st.session_state["f_actual"] = [classes[cell[0]]]
        st.session_state["f_predicted"] = [classes[cell[1]]]
        st.session_state["f_correct"] = "all"

# --- prediction table -----------------------------------------------------------------------------
st.subheader("Predictions")
f1, f2, f3 = st.columns(3)
actual_sel = f1.multiselect("Actual class", classes, format_func=names.get, key="f_actual")
pred_sel = f2.multiselect("Predicted class", classes, format_func=names.get, key="f_predicted")
correct_sel = f3.radio("Verdict", list(preds.VERDICT_FILTERS), horizontal=True, key="f_correct")
f4, f5, f6 = st.columns([2, 2, 1])
conf_range = f4.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.01, key="f_conf")
text = f5.text_input("File name contains", key="f_text")
f6.button("Show all images", on_click=_show_all, width="stretch")

view = preds.filter_predictions(
    shown,
    actual=actual_sel,
    predicted=pred_sel,
    correct=preds.VERDICT_FILTERS[correct_sel],
    confidence=conf_range,
    text=text,
)
if st.session_state.get("cm_cell") and actual_sel and pred_sel:
    st.info(
        f"Showing the {plural(len(view), 'image')} whose actual class is "
        f"**{md_escape(names[actual_sel[0]])}** and that the model called "
        f"**{md_escape(names[pred_sel[0]])}**. Press *Show all images* to go back."
    )
else:
    st.caption(f"{plural(len(view), 'image')} of {len(df):,}.")
st.dataframe(
    cached.prediction_table(view, shown_root, classes),
    hide_index=True,
    key="pred_table",
    column_config={
        "thumbnail": st.column_config.ImageColumn("image", width="small"),
        "confidence": st.column_config.ProgressColumn(
            "confidence", format="percent", min_value=0, max_value=1
        ),
        "correct": st.column_config.CheckboxColumn("correct"),
    },
)
st.download_button(
    "⬇️ Download these rows (CSV)",
    preds.predictions_csv(view, classes, root=shown_root),
    file_name=f"predictions-{run.id}-{len(view)}.csv",
    mime="text/csv",
)

# --- galleries ------------------------------------------------------------------------------------
st.subheader("Mistakes, most confident first")
mistakes = preds.confident_mistakes(view, limit=12)
if mistakes.empty:
    st.markdown("No mistakes among these images. 🎉")
else:
    widgets.gallery(mistakes, classes, "mistake")
with st.expander("Random samples with their probabilities"):
    widgets.gallery(view.sample(n=min(8, len(view)), random_state=1), classes, "sample")

# --- calibration ----------------------------------------------------------------------------------
st.subheader("Are its percentages honest?")
if detector is None:
    st.caption(
        "This run was trained before the studio calibrated its percentages: train it again to see this."
    )
else:
    cal = calibration(df, classes, detector.temperature)
    if cal:
        k1, k2, k3 = st.columns(3)
        k1.metric("Calibration error, the model's own", f"{cal['ece_before']:.1%}")
        k2.metric(
            "Calibration error, calibrated",
            f"{cal['ece_after']:.1%}",
            delta=f"{(cal['ece_after'] - cal['ece_before']) * 100:+.1f} points"
            if cal["temperature"] != 1
            else None,
            delta_color="inverse",
        )
        k3.metric("Temperature", f"{cal['temperature']:.2f}", help=temperature_help(detector.info))
        same = cal["temperature"] == 1
        st.caption(
            calibration_note(cal, detector.info)
            + ("" if same else " Predict and the table above show the calibrated percentages.")
        )
        st.plotly_chart(
            charts.reliability_diagram(cal["bins_before"], None if same else cal["bins_after"]),
            key="reliability",
            config={"displayModeBar": False},
        )

# --- other photos ---------------------------------------------------------------------------------
st.subheader("How does it handle other photos?")
if detector is None:
    st.caption(
        "This run was trained before the studio could recognise photos of other things: train it again "
        "to see how many it catches."
    )
else:
    st.caption(
        'Photos that are none of the classes should get "This doesn\'t look like any of these". Check a few, '
        f"next to how many real {'test' if split not in SPLITS else split} images the same level refuses."
    )
    o1, o2 = st.columns([3, 2])
    source = o1.radio(
        "Other photos",
        other_photos.source_choices(settings.allow_server_folders()),
        format_func=other_photos.SOURCES.get,
        key="other_source",
    )
    level = widgets.acceptance_slider(o2, detector, "other_accept")
    items: list = []
    if source == "examples":
        items = other_photos.example_items()
    elif source == "upload":
        uploads = o1.file_uploader(
            "Photos or a zip of photos that are none of the classes",
            accept_multiple_files=True,
            key="other_files",
            max_upload_size=settings.max_predict_mb(),
        )
        items = [(f.name, f.getvalue()) for f in uploads or []]
    else:
        folder = o1.text_input("Folder of other photos (or a zip)", key="other_folder")
        if folder:
            items = [(folder, Path(folder).expanduser())]
    real_split = split if split in SPLITS else "test"
    if st.button("Check these photos", key="other_check", disabled=not items):
        try:
            with st.spinner("Judging the photos…"):
                check = other_photos.check_other_photos(run, items, acceptance=level, split=real_split)
            st.session_state["other_result"] = (str(run.path), check)
        except UserError as exc:
            widgets.error(exc)
    stored = st.session_state.get("other_result")
    if stored and stored[0] == str(run.path):
        check = stored[1]
        summary = check.summary()
        m1, m2, m3 = st.columns(3)
        m1.metric("Other photos caught", f"{summary['caught']} of {summary['other_photos']}")
        if summary["real_images"]:
            m2.metric(
                f"Real {real_split} images wrongly refused",
                f"{summary['wrongly_refused']} of {summary['real_images']}",
            )
        if summary["auroc"] is not None:
            m3.metric(
                "Separation (AUROC)",
                f"{summary['auroc']:.3f}",
                help="1.0: every other photo looks stranger than every real one; 0.5: no better than chance",
            )
        st.markdown(md_escape(check.sentence()))
        st.dataframe(check.photos, hide_index=True, key="other_table")

# --- the run itself -------------------------------------------------------------------------------
st.subheader("Training")
history = cached.history(run)
if len(history):
    st.plotly_chart(charts.training_curves(history), key="curves")
summary = cached.model_summary(run)
st.markdown(
    f"**{md_escape(summary['base'])}** at {summary['input_size']} px · "
    f"{summary['parameters']:,} parameters ({summary['trainable_parameters']:,} trained) · "
    f"{summary['layers']} layers · {summary['size_mb']:.1f} MB on disk"
)
with st.expander("Settings of this run"):
    st.json(public_config(run, hosted=settings.hosted()))

# --- compare --------------------------------------------------------------------------------------
others = [r for r in widgets.usable_runs() if r.path != run.path]
if others:
    st.subheader("Compare with other runs")
    by_path = {str(r.path): r for r in others}
    chosen = st.multiselect(
        "Runs", list(by_path), format_func=lambda p: by_path[p].label(), key="compare_runs"
    )
    if chosen:
        frames = {run.id: df}
        try:
            for path in chosen:
                frames[by_path[path].id] = cached.predictions(by_path[path], None, split)
        except UserError as exc:
            widgets.error(exc)
        else:
            table, diff = compare_runs(frames)
            st.dataframe(table, hide_index=True)
            st.caption(f"{plural(len(diff), 'image')} where the verdicts differ:")
            st.dataframe(diff, hide_index=True)

# --- report ---------------------------------------------------------------------------------------
st.subheader("Report")
st.caption(
    "A self-contained file with the summary, matrix, per-class table and mistakes; also saved next to the run."
)
if st.button("Make the report"):
    result = preds.EvaluationResult(
        predictions=shown, metrics=metrics, classes=classes, run=run, split=split, data_dir=root
    )
    try:
        st.session_state["report_paths"] = {k: str(v) for k, v in write_report(result).items()}
    except UserError as exc:
        widgets.error(exc)
paths = st.session_state.get("report_paths")
if paths:
    d1, d2 = st.columns(2)
    d1.download_button("⬇️ report.html", open(paths["html"], "rb").read(), file_name=f"report-{run.id}.html")
    d2.download_button("⬇️ report.md", open(paths["markdown"], "rb").read(), file_name=f"report-{run.id}.md")
