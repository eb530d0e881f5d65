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

__all__ = ["BatchScorer", "GRAPH_TOLERANCE"]

logger = logging.getLogger(__name__)

#: largest |logit difference| between a graph's replay and the eager computation of the same batch
#: for the graph to be used (the same kernels run, so they normally agree exactly)
GRAPH_TOLERANCE = 1e-4

_GRAPHS: dict = {}  # (model sha256, device, batch shape, dtype, precision) -> _Graph or None (not usable)
_GRAPHS_LOCK = threading.Lock()


class _Graph:
    """A recorded batch: its static input and output tensors, and a lock (replay, then copy the output)."""

    def __init__(self, graph, static_in, static_out):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out
        self.lock = threading.Lock()

    def run(self, samples):
        with self.lock:
            self.static_in.copy_(samples, non_blocking=True)
            self.graph.replay()
            return self.static_out.clone()


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
        self.replays = 0  # batches run as a graph replay

    def from_audio(self, samples):
        """Logits (float32, on the device) of a batch of audio, shape (n_clips, n_samples), in pinned host
        memory or on the device."""
        if self.graphs and len(samples) == self.detector.batch_size:
            graph = self._graph(samples)
            if graph is not None:
                self.replays += 1
                return graph.run(samples)
        return self._eager(samples.to(self.device, non_blocking=True))

    def from_spectrograms(self, values):
        """Logits of a batch of dB spectrograms ``(n_clips, n_frequencies, n_times)`` (the CPU path)."""
        import torch

        from opso_core.ml.spectrogram_tensors import spectrograms_to_tensor
        from opso_core.ml.utils import inference_input, precision_context

        x = spectrograms_to_tensor(values, self.frequencies, self.detector.tensor_settings, device=self.device)
        with precision_context(self.device, self.detector.precision):
            return self.network(inference_input(x, self.device)).to(torch.float32)

    def _eager(self, samples, cache: bool = True):
        import torch

        from opso_core.ml.spectrogram_tensors import spectrograms_on_device, spectrograms_to_tensor
        from opso_core.ml.utils import inference_input, precision_context

        det = self.detector
        values = spectrograms_on_device(samples, det.sample_rate_hz, det.params)
        x = spectrograms_to_tensor(values, self.frequencies, det.tensor_settings, device=self.device)
        with precision_context(self.device, det.precision, cache=cache):
            return self.network(inference_input(x, self.device)).to(torch.float32)

    def _graph(self, samples):
        """The recorded graph for batches shaped as ``samples`` (recorded now if needed), or None."""
        key = (self.detector.sha256, str(self.device), tuple(samples.shape), str(samples.dtype),
               self.detector.precision)
        with _GRAPHS_LOCK:
            if key not in _GRAPHS:
                _GRAPHS[key] = self._record(samples)
            return _GRAPHS[key]

    def _record(self, samples):
        import torch

        try:
            static_in = torch.empty(samples.shape, dtype=samples.dtype, device=self.device)
            static_in.copy_(samples)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(2):  # warm-up: cuDNN chooses its kernels, the constants reach the device
                    self._eager(static_in, cache=False)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                static_out = self._eager(static_in, cache=False)
            with torch.no_grad():
                graph.replay()
                eager = self._eager(static_in)
            difference = float((static_out - eager).abs().max())  # waits for the GPU, once per process
        except Exception as exc:  # recording is an optimisation: any failure leaves the eager loop
            logger.warning("cnn %s: CUDA graph not used (%s: %s); batches run eagerly", self.detector.name,
                           type(exc).__name__, exc)
            return None
        if not difference <= GRAPH_TOLERANCE:
            logger.warning("cnn %s: the CUDA graph's outputs differ from the eager computation by %.2e; batches "
                           "run eagerly", self.detector.name, difference)
            return None
        logger.info("cnn %s: batches of %d clips run as a CUDA graph on %s", self.detector.name, len(samples),
                    self.device)
        return _Graph(graph, static_in, static_out)
