"""Predict: drop in photos (or take one) and get a verdict in plain words, with where the model looked."""

import streamlit as st

from lib import settings
from lib.errors import UserError
from lib.serve import export
from lib.serve import predict as prediction
from lib.text import md_escape, plural
from lib.ui import cached, charts, widgets

SHOWN, HEAT_MAPS = 24, 12

st.title("4 · Predict")

run = widgets.run_picker("p_run", preselect="best")
try:
    with st.spinner("Loading the model…"):
        model = cached.model(run)
except UserError as exc:
    widgets.error(exc)
    st.stop()
detector = model.detector
st.markdown(
    f"**{md_escape(prediction.knows_line(model.classes))}.** {prediction.other_photos_line(detector)}"
)

with st.expander("Options"):
    o1, o2 = st.columns(2)
    acceptance = prediction.DEFAULT_ACCEPTANCE
    if detector is not None:
        acceptance = widgets.acceptance_slider(o1, detector, "p_accept")
    threshold = o1.slider(
        "Say 'not sure' below this confidence",
        0.0,
        1.0,
        prediction.DEFAULT_UNSURE_THRESHOLD,
        0.05,
        key="p_thr",
    )
    show_heat = o2.toggle("Show where the model looked (heat map)", True, key="p_heat")

files = st.file_uploader(
    "Drop photos here (or a zip of photos)",
    accept_multiple_files=True,
    key="p_files",
    max_upload_size=settings.max_predict_mb(),
    help=(
        f"JPEG, PNG, BMP, GIF or WebP, up to {settings.max_pixels() / 1e6:.0f} megapixels each; "
        f"up to {settings.max_predict_files():,} photos and {settings.max_predict_mb():,} MB per batch."
    ),
)
photo = (
    st.camera_input("…or take a photo", key="p_camera")
    if st.toggle("Use the camera", key="p_cam_on")
    else None
)
items = [(f.name, f.getvalue()) for f in files or []]
if photo is not None:
    items.append(("camera photo", photo.getvalue()))

if not items:
    st.info("Add one or more photos above to see what the model thinks.")
else:
    with st.spinner(f"Looking at {plural(len(items), 'file')}…"):
        results = prediction.predict_images(model, items, unsure_threshold=threshold, acceptance=acceptance)
    good = [r for r in results if r.ok]
    if len(results) > 1:
        failed = len(results) - len(good)
        st.markdown(
            f"{plural(len(good), 'photo')} judged"
            + (f", {plural(failed, 'file')} could not be used" if failed else "")
            + "."
        )
        st.dataframe(prediction.results_frame(results, model.classes), hide_index=True)
        st.download_button(
            "⬇️ Download the results (CSV)",
            prediction.results_csv(results, model.classes),
            file_name="predictions.csv",
            mime="text/csv",
        )
    heat_slots = []  # every verdict is drawn before any heat map: those need TensorFlow (loaded on first use)
    for n, r in enumerate(results[:SHOWN]):
        with st.container(border=True):
            if not r.ok:
                st.error(f"**{md_escape(r.name)}**: {md_escape(r.error)}")
                continue
            left, right = st.columns([1, 1])
            with right:
                st.caption(md_escape(r.name))
                if r.known is False:  # the photo is still shown; no bars of kinds it isn't
                    st.info(md_escape(r.verdict))
                    st.caption(prediction.unusual_text(r.unknown_score or 1.0))
                else:
                    (st.warning if r.unsure else st.success)(md_escape(r.verdict))
                    st.plotly_chart(
                        charts.probability_bars(r.probabilities, top=3),
                        key=f"pbars_{n}",
                        config={"displayModeBar": False, "staticPlot": True},
                    )
            slot = left.empty()
            slot.image(r.image, width="stretch")
            if show_heat and len(heat_slots) < HEAT_MAPS:
                heat_slots.append((slot, r))
    for slot, r in heat_slots:
        slot.image(cached.heat_map(model, r), caption="Red: where the model looked most", width="stretch")
    if len(results) > SHOWN:
        st.caption(f"The first {SHOWN} are shown; the table and the CSV hold all {len(results)}.")

with st.expander("Download this model (for a phone, a server or another app)"):
    st.caption(
        "Each download is checked first: its predictions on validation images are compared with the app's."
    )
    fmt = st.selectbox("Format", list(export.FORMATS), format_func=export.FORMATS.get, key="p_fmt")
    if st.button("Prepare the download", key="p_export"):
        try:
            with st.spinner("Exporting and checking…"):
                st.session_state["p_export_result"] = export.export_run(run.path, fmt)
        except UserError as exc:
            widgets.error(exc)
    result = st.session_state.get("p_export_result")
    if result is not None and result.path.exists() and result.format == fmt:
        check = result.parity
        st.markdown(
            f"Agrees with the app on **{check.get('agreed')} of {check.get('images')}** images "
            f"(largest probability difference {check.get('max_abs_diff', 0):.1e})"
            + (
                f'; same "known" / "doesn\'t look like these" answer on {check["known_agreed"]}'
                if "known_agreed" in check
                else ""
            )
            + f". {result.size_bytes / 1e6:.1f} MB."
        )
        st.download_button(
            f"⬇️ {result.file_name}",
            result.path.read_bytes(),
            file_name=result.file_name,
            mime="application/zip",
        )
