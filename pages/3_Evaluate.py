"""3 · Evaluate (being built)."""

import streamlit as st

st.set_page_config(page_title="3 · Evaluate · Image classifier studio", page_icon="🔍", layout="wide")
st.title("3 · Evaluate")
st.info("This step is not ready yet.")
