"""Home: what the app does and the four steps. Imports no TensorFlow, so it opens instantly."""

import streamlit as st

from lib.ui import frame

st.title("Image classifier studio")
st.markdown(
    "Teach a computer to sort your photos into classes. Explore a folder of labelled images, "
    "train a classifier on top of a pretrained network in seconds, see exactly which images it "
    "gets wrong, and try it on new photos."
)

st.subheader("Four steps")
for col, step in zip(st.columns(len(frame.STEPS)), frame.STEPS, strict=True):
    with col.container(border=True):
        st.page_link(step.path, label=step.title, icon=step.icon)
        st.caption(step.blurb)

st.info("New here? Open **1 · Dataset** and pick the bundled sample of bean-leaf photos: it's one click.")
frame.hosted_note()
