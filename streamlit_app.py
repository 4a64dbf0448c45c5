"""Home page: what the app does and the four steps. Imports no TensorFlow, so it opens instantly."""

import streamlit as st

from lib import cache, settings

st.set_page_config(page_title="Image classifier studio", page_icon="🖼️", layout="wide")
cache.sidebar()

st.title("Image classifier studio")
st.markdown(
    "Teach a computer to sort your photos into classes. Explore a folder of labelled images, "
    "train a classifier on top of a pretrained network in seconds, see exactly which images it "
    "gets wrong, and try it on new photos."
)

st.subheader("Four steps")
steps = [
    (
        "pages/1_Dataset.py",
        "1 · Dataset",
        "🗂️",
        "Pick the bundled sample, upload a zip or open a folder; check class balance and file health.",
    ),
    (
        "pages/2_Train.py",
        "2 · Train",
        "🏋️",
        "Choose a pretrained base and settings, press Start, watch the curves.",
    ),
    (
        "pages/3_Evaluate.py",
        "3 · Evaluate",
        "🔍",
        "Confusion matrix, per-class scores, every mistake one click away.",
    ),
    (
        "pages/4_Predict.py",
        "4 · Predict",
        "📷",
        "Drop in photos (or take one) and get a verdict in plain words.",
    ),
]
cols = st.columns(4)
for col, (page, label, icon, text) in zip(cols, steps, strict=True):
    with col.container(border=True):
        st.page_link(page, label=label, icon=icon)
        st.caption(text)

st.info("New here? Open **1 · Dataset** and pick the bundled sample of bean-leaf photos: it's one click.")
if settings.hosted():
    st.caption("This is a shared demo: your uploads and models are kept apart from other visitors'.")
