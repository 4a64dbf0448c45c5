"""Serve: what users hand to prediction (inputs), plain-words verdicts and batch results,
Grad-CAM heat maps, and checked exports (.keras, SavedModel, TFLite)."""
