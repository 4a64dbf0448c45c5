"""Evaluate: how good is a trained run, and which images does it get wrong? Every number is one
click away from the images behind it."""

import streamlit as st

from lib import cache, charts, evaluation, report, runs, settings
from lib.errors import UserError
from lib.text import md_escape, plural, readable_label

st.set_page_config(page_title="Evaluate · Image classifier studio", page_icon="🔍", layout="wide")
cache.sidebar()
st.title("3 · Evaluate")

finished = cache.finished_runs()
if not finished:
    st.info("No trained model yet. Train one on the **2 · Train** page, then come back here.")
    st.page_link("pages/2_Train.py", label="Go to 2 · Train", icon="🏋️")
    st.stop()

# --- what to evaluate ---------------------------------------------------------------------------
left, right = st.columns([3, 2])
labels = {info.path: cache.run_label(info) for info in finished}
run_dir = left.selectbox("Model", list(labels), format_func=lambda p: labels[p], key="eval_run")
split_options = ["test", "validation", "train"]
if settings.allow_server_folders():
    split_options.append("another folder")
split = right.radio("Images", split_options, horizontal=True, key="eval_split")
data_dir = None
if split == "another folder":
    folder = right.text_input("Folder with one sub-folder per class", key="eval_folder")
    if not folder:
        st.info("Type the path of a folder whose sub-folders are named like the model's classes.")
        st.stop()
    split, data_dir = folder, None

try:
    with st.spinner("Predicting every image (only the first time)…"):
        df = cache.predictions(str(run_dir), data_dir, split)
except UserError as exc:
    st.error(str(exc))
    st.stop()
if df.empty:
    st.warning("There are no images in this split.")
    st.stop()

classes = runs.read_classes(run_dir)
n = len(classes)
metrics = evaluation.metrics_from_predictions(df, classes)

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
    delta=f"{(metrics['accuracy'] - base['accuracy']) * 100:+.1f} points vs always '{readable_label(base['class'])}'",
)
if metrics.get("top_k_accuracy"):
    st.caption(" · ".join(f"top-{k} accuracy {v:.1%}" for k, v in metrics["top_k_accuracy"].items()))
missed = [m for m in metrics["most_missed"] if m["count"] > 0]
if missed:
    st.markdown(
        "**Most missed:** "
        + "; ".join(
            f"{md_escape(readable_label(m['actual']))} predicted as {md_escape(readable_label(m['predicted']))}: {m['count']}"
            for m in missed[:5]
        )
    )

per_class = evaluation.per_class_metrics(
    evaluation.confusion_matrix(df["actual"], df["predicted"], classes), classes
)
per_class.insert(1, "label", [readable_label(c) for c in per_class["class"]])
st.dataframe(
    per_class[["label", "precision", "recall", "f1", "support"]],
    hide_index=True,
    column_config={
        "label": "class",
        "precision": st.column_config.ProgressColumn("precision", format="percent", min_value=0, max_value=1),
        "recall": st.column_config.ProgressColumn("recall", format="percent", min_value=0, max_value=1),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
    },
)


def draw_gallery(rows, classes, key: str) -> None:
    """Images in a grid of four, each with its verdict and probability bars."""
    cols = st.columns(4)
    for i, (_, row) in enumerate(rows.iterrows()):
        with cols[i % 4]:
            st.image(cache.thumbnail(row["path"]), width="stretch")
            mark = "✅" if row["correct"] else "❌"
            st.caption(
                f"{mark} {md_escape(row['path'].rsplit('/', 1)[-1])} · actual "
                f"**{md_escape(readable_label(row['actual']))}**"
            )
            probs = {c: float(row[evaluation.prob_column(c)]) for c in classes}
            st.plotly_chart(
                charts.probability_bars(probs, top=3),
                key=f"{key}_{i}",
                config={"displayModeBar": False, "staticPlot": True},
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
cm = evaluation.confusion_matrix(df["actual"], df["predicted"], classes)
st.caption(
    "Rows: the actual class. Columns: what the model said. **Click a cell** to see exactly those images."
)
with st.container(key="confusion_matrix"):
    event = st.plotly_chart(
        charts.confusion_matrix(cm, classes, normalized=normalized),
        on_select="rerun",
        selection_mode="points",
        key=f"cm_{st.session_state.get('cm_version', 0)}",
        width="content",
        config={"displayModeBar": False},
    )
points = (event.selection or {}).get("points", []) if event else []
if points:
    point = points[0].get("point_number", points[0].get("point_index"))
    cell = charts.cell_of_point(point, n)
    if st.session_state.get("cm_cell") != cell:
        st.session_state["cm_cell"] = cell
        st.session_state["f_actual"] = [classes[cell[0]]]
        st.session_state["f_predicted"] = [classes[cell[1]]]
        st.session_state["f_correct"] = "all"

# --- prediction table -----------------------------------------------------------------------------
st.subheader("Predictions")
f1, f2, f3 = st.columns(3)
actual_sel = f1.multiselect("Actual class", classes, format_func=readable_label, key="f_actual")
pred_sel = f2.multiselect("Predicted class", classes, format_func=readable_label, key="f_predicted")
correct_sel = f3.radio("Verdict", ["all", "correct", "incorrect"], horizontal=True, key="f_correct")
f4, f5, f6 = st.columns([2, 2, 1])
conf_range = f4.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.01, key="f_conf")
text = f5.text_input("File name contains", key="f_text")
f6.button("Show all images", on_click=_show_all, width="stretch")

view = evaluation.filter_predictions(
    df,
    actual=actual_sel,
    predicted=pred_sel,
    correct={"all": None, "correct": True, "incorrect": False}[correct_sel],
    confidence=conf_range,
    text=text,
)
if st.session_state.get("cm_cell") and actual_sel and pred_sel:
    st.info(
        f"Showing the {plural(len(view), 'image')} whose actual class is "
        f"**{md_escape(readable_label(actual_sel[0]))}** and that the model called "
        f"**{md_escape(readable_label(pred_sel[0]))}**. Press *Show all images* to go back."
    )
else:
    st.caption(f"{plural(len(view), 'image')} of {len(df):,}.")
table = cache.prediction_table(view)
if settings.hosted():
    table = table.drop(columns=["path"])  # no server paths on a public demo
st.dataframe(
    table,
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
    evaluation.predictions_csv(view, classes),
    file_name=f"predictions-{run_dir.name}-{len(view)}.csv",
    mime="text/csv",
)

# --- galleries ------------------------------------------------------------------------------------
st.subheader("Mistakes, most confident first")
mistakes = view[~view["correct"]].sort_values("confidence", ascending=False)
if mistakes.empty:
    st.markdown("No mistakes among these images. 🎉")
else:
    draw_gallery(mistakes.head(12), classes, "mistake")

with st.expander("Random samples with their probabilities"):
    draw_gallery(view.sample(n=min(8, len(view)), random_state=1), classes, "sample")

# --- the run itself -------------------------------------------------------------------------------
st.subheader("Training")
history = runs.read_history(run_dir)
if history is not None and len(history):
    st.plotly_chart(charts.training_curves(history), key="curves")
summary = cache.model_summary(str(run_dir))
st.markdown(
    f"**{md_escape(summary.get('base', ''))}** at {summary.get('input_size')} px · "
    f"{summary.get('parameters', 0):,} parameters ({summary.get('trainable_parameters', 0):,} trained) · "
    f"{summary.get('layers', 0)} layers · {summary.get('size_mb', 0):.1f} MB on disk"
)
with st.expander("Settings of this run"):
    shown = runs.read_config(run_dir)
    if settings.hosted():  # no server paths on a public demo
        shown = {k: v for k, v in shown.items() if k not in ("data_dir", "dataset")}
    st.json(shown)

# --- compare --------------------------------------------------------------------------------------
others = [p for p in labels if p != run_dir]
if others:
    st.subheader("Compare with other runs")
    chosen = st.multiselect("Runs", others, format_func=lambda p: labels[p], key="compare_runs")
    if chosen:
        frames = {run_dir.name: df}
        try:
            for other in chosen:
                frames[other.name] = cache.predictions(str(other), data_dir, split)
        except UserError as exc:
            st.error(str(exc))
        else:
            table_cmp, diff = evaluation.compare_runs(frames)
            st.dataframe(table_cmp, hide_index=True)
            st.caption(f"{plural(len(diff), 'image')} where the verdicts differ:")
            st.dataframe(diff, hide_index=True)

# --- report ---------------------------------------------------------------------------------------
st.subheader("Report")
st.caption(
    "A self-contained file with the summary, matrix, per-class table and mistakes; also saved next to the run."
)
if st.button("Make the report"):
    result = evaluation.EvaluationResult(
        predictions=df, metrics=metrics, classes=classes, run_dir=run_dir, split=split
    )
    try:
        paths = report.write_report(result)
    except UserError as exc:
        st.error(str(exc))
    else:
        st.session_state["report_paths"] = {k: str(v) for k, v in paths.items()}
paths = st.session_state.get("report_paths")
if paths:
    d1, d2 = st.columns(2)
    d1.download_button(
        "⬇️ report.html", open(paths["html"], "rb").read(), file_name=f"report-{run_dir.name}.html"
    )
    d2.download_button(
        "⬇️ report.md", open(paths["markdown"], "rb").read(), file_name=f"report-{run_dir.name}.md"
    )
