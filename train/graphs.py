"""Run a training step eagerly, or on CUDA as a replayed CUDA graph: :class:`StepRunner`.

A *step* here is a zero-argument function that changes its state only in place (no state tensor
rebound to a new one, outputs copied into static buffers) and never waits for the device, such as
:meth:`kernelgan._Batch.train_step`. Such a step can be recorded once with
:class:`torch.cuda.CUDAGraph` and replayed: the replay launches the recorded kernels on the same
memory, so it computes what an eager call would, without the Python and launch overhead.

Capture follows the PyTorch recipe (CUDA semantics, "CUDA Graphs"): a few warm-up calls on a side
stream (cuDNN plans, the allocator, autograd's first pass; they are real steps and count), then one
capture - during which kernels are recorded, not run - immediately followed by a replay that
performs that call's step. Every later call replays. A runner belongs to one set of state tensors:
whoever rebinds them (a batch rebuilt with fewer members) makes a new runner.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

DEFAULT_WARMUP = 3  # eager steps on a side stream before the capture


class StepRunner:
    """Calls ``step`` once per call: eagerly, or (``capture`` on a CUDA ``device``) as a CUDA graph
    recorded after ``warmup`` eager calls and replayed from then on. ``capture`` is ignored on
    other devices."""

    def __init__(
        self, step: Callable[[], None], device: torch.device, capture: bool = False, warmup: int = DEFAULT_WARMUP
    ) -> None:
        self.step = step
        self.device = torch.device(device)
        self.capture = bool(capture) and self.device.type == "cuda"
        self.warmup = max(1, warmup)
        self.calls = 0  # steps run so far (warm-up, the captured one and replays)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        """Whether calls now replay a recorded graph."""
        return self.graph is not None

    def __call__(self) -> None:
        """Run one step (queued on the current stream; no host synchronisation once captured)."""
        if not self.capture:
            self.step()
        elif self.graph is not None:
            self.graph.replay()
        elif self.calls < self.warmup:
            self._warm_up()
        else:
            self._capture()
        self.calls += 1

    def _warm_up(self) -> None:
        """One eager step on a side stream, ordered after and before the current stream's work."""
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream()
            if self._side is None:
                self._side = torch.cuda.Stream()
            self._side.wait_stream(current)
            with torch.cuda.stream(self._side):
                self.step()
            current.wait_stream(self._side)

    def _capture(self) -> None:
        """Record the step (nothing runs while recording), then replay it once: this call's step."""
        with torch.cuda.device(self.device):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.step()
            self.graph = graph
            graph.replay()
