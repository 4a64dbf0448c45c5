"""The only family that imports Streamlit: the page frame, session state, cached loaders, forms built
from TrainConfig, widgets shared by pages, and the Plotly charts they draw."""

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

# A folder named pages/ beside the entry starts Streamlit in its old multipage mode, in which a
# visitor's first request for a page's address (a bookmarked /Predict?ws=...) runs that page file
# alone, without the frame (no sidebar, no workspace, no start-up clean-up), until st.navigation is
# first called. Every page imports lib.ui, so the first such run leaves that mode and reruns: the
# rerun goes through streamlit_app.py, whose st.navigation then serves the page inside the frame.
if PagesManager.uses_pages_directory:
    PagesManager.uses_pages_directory = False
    st.rerun()
