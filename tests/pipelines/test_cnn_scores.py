"""How the CNN stage sizes its work on a worker."""

import os

import torch

from pipelines.stages.cnn import MAX_DEFAULT_PREPARE_THREADS, prepare_threads


def test_prepare_threads_defaults():
    assert prepare_threads(None, torch.device("cpu")) == 1
    assert prepare_threads(3, torch.device("cpu")) == 3
    cores = len(os.sched_getaffinity(0))
    assert prepare_threads(None, torch.device("cuda")) == max(1, min(MAX_DEFAULT_PREPARE_THREADS, cores - 1))
    assert prepare_threads(None, "cuda:1") == prepare_threads(None, torch.device("cuda:1"))
