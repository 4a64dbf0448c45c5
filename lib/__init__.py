"""Image-classifier studio: the app's logic, grouped by family (one folder each):

    data/      dataset layouts, the scan, splits, sources, the one decoder and the one feeder
    models/    the registry of bases, building classifiers, custom layers, safety checks, the loader,
               the engine (LiteRT or Keras)
    train/     the config, features, the head, fine-tuning, the recipe, estimates, background jobs
    evaluate/  metrics, stored predictions, comparing runs, the report
    serve/     inputs, plain-words predictions, Grad-CAM, export
    doctor/    the data doctor: suspect labels (cleanlab), near-duplicates, outliers, the 2-D map
    ui/        the only Streamlit importer: frame, state, cached loaders, forms, widgets, charts

and a few small shared modules: errors, settings, text, vocab (every fixed name), files (the one
atomic writer), runs (the run store and the one Run record), workspace (hosted visitors), storage
(what the caches hold, cleaning up after killed processes), cli.
Nothing here imports TensorFlow at import time: functions that need it import it themselves.
"""
