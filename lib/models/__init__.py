"""Models: the registry of bases, building classifiers, the studio's custom layers, the safety
check of model files from outside, the one loader (with its bounded cache) of saved runs, and the
engine (LiteRT or Keras) that runs bases and runs' models."""
