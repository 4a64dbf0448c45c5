"""2 · Train (being built)."""

import streamlit as st

st.set_page_config(page_title="2 · Train · Image classifier studio", page_icon="🏋️", layout="wide")
st.title("2 · Train")
st.info("This step is not ready yet.")
