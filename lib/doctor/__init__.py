"""The data doctor: what is wrong with a dataset's labels and images, found from the frozen base's
cached features (the same cache training uses): suspect labels (out-of-sample probabilities by
K-fold logistic regression, ranked by cleanlab), near-duplicates (same class, conflicting labels,
across splits), outliers and a 2-D map. Decisions about what it finds are kept by lib.data.curation.
"""
