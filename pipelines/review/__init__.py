"""Reviewing a run: stratified samples of clips, reviews, calibrated per-class thresholds."""
