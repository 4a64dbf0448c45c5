"""4 · Predict (being built)."""

import streamlit as st

st.set_page_config(page_title="4 · Predict · Image classifier studio", page_icon="📷", layout="wide")
st.title("4 · Predict")
st.info("This step is not ready yet.")
