"""Preprocessing pipelines for machine learning (``opensoundscape.preprocess``): actions,
preprocessors, tensor and image augmentations. Needs torch (``pip install 'opso[ml]'``)."""
