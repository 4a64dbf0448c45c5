"""Image-classifier studio: datasets, training, evaluation, prediction and export.

Nothing here imports TensorFlow at import time; functions that need it import it themselves,
so the home page and `python -m lib --help` start fast.
"""
