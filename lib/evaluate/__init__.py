"""Evaluate: metrics from arrays, a run's stored predictions on a split, comparing runs, and the
HTML/Markdown report."""
