"""The only family that imports Streamlit: the page frame, session state, cached loaders, forms built
from TrainConfig, widgets shared by pages, and the Plotly charts they draw."""
