"""Data doctor: suspect labels, near-duplicates, outliers and a map; one click to relabel, exclude
or keep; undo, a CSV of the decisions, and a retrain on the curated dataset."""

import streamlit as st

from lib.data import curation
from lib.errors import UserError
from lib.text import md_escape, plural
from lib.ui import doctor, widgets

st.title("Data doctor")
st.caption(
    "Finds images whose label looks wrong, copies of the same photo (also across train and test) and "
    "images unlike any class, from the features training uses. Your decisions never touch your files."
)
root, scan = widgets.need_dataset()
try:
    with st.spinner("Examining every image (the first time computes the image features)…"):
        found = doctor.with_files(doctor.report(scan.root))
except UserError as exc:
    widgets.error(exc)
    st.stop()
doctor.show_error_once()
decided = curation.decisions(scan.root)
st.success(
    f"**{md_escape(root.name)}**: {plural(found.images, 'image')} examined in {found.seconds:.1f} s · "
    f"{plural(len(found.label_issues), 'suspect label')}, {plural(len(found.near_duplicates), 'near-duplicate pair')}, "
    f"{plural(len(found.outliers), 'outlier')}."
)
for note in found.notes:
    widgets.warning(note)
doctor.decisions_bar(scan.root, found, decided)

tabs = st.tabs(["Suspect labels", "Near-duplicates", "Outliers", "Map"])
for tab, draw in zip(
    tabs, (doctor.suspects, doctor.duplicates, doctor.outliers, doctor.embedding), strict=True
):
    with tab:
        draw(scan.root, found, decided)
