"""Embeddings of a run: search by example, approximate indexes and linear classifiers over them."""
