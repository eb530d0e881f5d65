"""Machine learning with PyTorch (``opensoundscape.ml``): CNNs, datasets, losses, samplers, CAMs.

Importing these modules needs torch: ``pip install 'opso[ml]'``.
"""
