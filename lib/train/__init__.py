"""Train: the config (and the options the form and CLI are generated from), the images of a run,
augmentation, the feature cache, the head on features, training on images, fine-tuning, the recipe
that composes them, time estimates and the background jobs."""
