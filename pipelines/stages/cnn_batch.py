"""One batch of the CNN stage on the worker's device: clips in, the network's outputs out.

On a CPU device a batch arrives as dB spectrograms (computed by the prepare threads); on a CUDA
device as audio in pinned memory, and its spectrograms, network input and network all run on the GPU.
There a full batch (``batch_size`` clips that all loaded) runs as one **CUDA graph**: the kernels of
:func:`~opso_core.ml.spectrogram_tensors.spectrograms_on_device`,
:func:`~opso_core.ml.spectrogram_tensors.spectrograms_to_tensor` and the network, recorded once per
worker process and replayed for each batch, so the CPU issues one launch instead of a few hundred
(per-kernel launches, not the GPU, limited the eager loop: ``benchmarks/README.md``). The graph is
checked against the eager computation on the batch it was recorded with and dropped (eager from then
on, logged) if they differ or recording fails. Batches with failed clips, a task's last partial
batch, embeddings (the classifier's input is taken by a Python hook, which a replay does not run) and
colormaps run eagerly.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch

from opso_core.ml.spectrogram_tensors import spectrograms_on_device, spectrograms_to_tensor
from opso_core.ml.utils import inference_input, precision_context

__all__ = ["BatchScorer", "GRAPH_TOLERANCE", "forget_graphs"]

logger = logging.getLogger(__name__)

#: largest |logit difference| between a graph's replay and the eager computation of the same batch
#: for the graph to be used (the same kernels run, so they normally agree exactly)
GRAPH_TOLERANCE = 1e-4

_GRAPHS: dict = {}  # (model, device, batch shape, precision, TF32 settings) -> _Graph or None (not usable)
_GRAPHS_LOCK = threading.Lock()
_STATE = {"off": False}  # a capture failed in this process: no more are tried (a failed capture can leave
#                          the CUDA allocator in a state where another one is not safe)


class _Graph:
    """A recorded batch: its static input and output tensors, what its kernels read (the network), and
    a lock: a replay and the copy of its output are enqueued together, in order, on the default stream
    that every thread of the worker uses."""

    def __init__(self, graph, static_in, static_out, keep):
        self.graph, self.static_in, self.static_out, self.keep = graph, static_in, static_out, keep
        self.lock = threading.Lock()

    def run(self, samples):
        with self.lock:
            self.static_in.copy_(samples, non_blocking=True)
            self.graph.replay()
            return self.static_out.clone()


def forget_graphs() -> None:
    """Drop this process's recorded graphs (their memory is freed once no batch uses them) and allow
    recording again after a failed capture."""
    with _GRAPHS_LOCK:
        _GRAPHS.clear()
        _STATE["off"] = False


def _numerics_key():
    """The settings that choose the kernels a graph records (TF32 for convolutions and matrix products)."""
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.get_float32_matmul_precision())


class BatchScorer:
    """The network's outputs for batches of one detector's clips on ``device``, nothing copied back.

    Parameters
    ----------
    network : torch.nn.Module
        The detector's network in its inference form, on ``device``.
    detector : pipelines.stages.cnn.CnnDetector
    device : torch.device
    cuda_graphs : bool
        Record and replay full batches as CUDA graphs (CUDA devices only; see the module docstring).
    keep_embeddings : bool
        The caller reads the classifier's input after each batch (forces the eager computation).
    """

    def __init__(self, network, detector, device, *, cuda_graphs: bool = True, keep_embeddings: bool = False):
        self.network, self.detector, self.device = network, detector, device
        self.frequencies = detector.params.frequencies(detector.sample_rate_hz)
        self.graphs = (cuda_graphs and device.type == "cuda" and not keep_embeddings
                       and getattr(detector.tensor_settings, "colormap", None) is None)
        self.graph = None
        self.replays = 0  # batches run as a graph replay

    def prepare(self, n_samples: int) -> None:
        """Record (or find) the graph for full batches of ``n_samples``-long float32 clips. Call it before
        other threads of the process use CUDA (the prepare threads pin memory): a capture must not
        overlap another thread's CUDA calls."""
        if self.graphs:
            self.graph = self._graph((self.detector.batch_size, n_samples))

    def from_audio(self, samples):
        """Logits (float32, on the device) of a batch of audio, shape (n_clips, n_samples), in pinned host
        memory or on the device."""
        graph = self.graph
        if graph is not None and tuple(samples.shape) == tuple(graph.static_in.shape):
            self.replays += 1
            return graph.run(samples)
        return self._eager(samples.to(self.device, non_blocking=True))

    def from_spectrograms(self, values):
        """Logits of a batch of dB spectrograms ``(n_clips, n_frequencies, n_times)`` (the CPU path)."""
        x = spectrograms_to_tensor(values, self.frequencies, self.detector.tensor_settings, device=self.device)
        with precision_context(self.device, self.detector.precision):
            return self.network(inference_input(x, self.device)).to(torch.float32)

    def _eager(self, samples, cache: bool = True):
        det = self.detector
        values = spectrograms_on_device(samples, det.sample_rate_hz, det.params)
        x = spectrograms_to_tensor(values, self.frequencies, det.tensor_settings, device=self.device)
        with precision_context(self.device, det.precision, cache=cache):
            return self.network(inference_input(x, self.device)).to(torch.float32)

    def _graph(self, shape):
        key = (self.detector.sha256, str(self.device), tuple(shape), self.detector.precision, _numerics_key())
        with _GRAPHS_LOCK:
            if _STATE["off"]:
                return None
            if key not in _GRAPHS:
                _GRAPHS[key] = self._record(shape)
            return _GRAPHS[key]

    def _record(self, shape):
        """Record the graph on zero audio, then check it on two different batches against the eager
        computation (an empty or stale recording would give the recorded batch's numbers)."""
        name = self.detector.name
        try:
            with torch.cuda.device(self.device), torch.no_grad():
                static_in = torch.zeros(shape, dtype=torch.float32, device=self.device)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up: cuDNN and cuFFT choose kernels and plans, constants are copied
                        self._eager(static_in, cache=False)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device),
                                          capture_error_mode="thread_local"):
                        static_out = self._eager(static_in, cache=False)
                if any("empty" in str(w.message).lower() for w in caught):
                    raise RuntimeError("the recorded graph is empty")
                generator = torch.Generator(device=self.device).manual_seed(0)
                difference = 0.0
                for _ in range(2):
                    audio = 0.1 * torch.randn(shape, generator=generator, device=self.device)
                    static_out.fill_(float("nan"))
                    static_in.copy_(audio)
                    graph.replay()
                    eager = self._eager(audio)
                    difference = max(difference, float((static_out - eager).abs().max()))  # waits for the GPU
        except Exception as exc:  # recording is an optimisation: from now on this process runs batches eagerly
            _STATE["off"] = True
            logger.warning("cnn %s: CUDA graphs not used in this worker (%s: %s); batches run eagerly", name,
                           type(exc).__name__, exc)
            return None
        if not difference <= GRAPH_TOLERANCE:  # NaN too: the replay did not write the output
            logger.warning("cnn %s: the CUDA graph's outputs differ from the eager computation by %s; batches run "
                           "eagerly", name, difference)
            return None
        logger.info("cnn %s: batches of %d clips run as a CUDA graph on %s", name, shape[0], self.device)
        return _Graph(graph, static_in, static_out, keep=self.network)
