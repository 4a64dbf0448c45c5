"""Data: dataset layouts, the scan (problems, splits), where datasets come from, the one image
decoder and the one image feeder (decode -> batch -> model). No TensorFlow is imported here."""
