"""Replay a tensor function from CUDA graphs, one graph per input signature.

A DeFI chunk is a few thousand GPU kernels; at batch 1 launching them (and checking a compiled function's
guards) costs about as much CPU time as the GPU needs to run them. A captured graph replays all of them with
one launch. ``torch.compile(mode="reduce-overhead")`` does this too, but its CUDA-graph trees check every
parameter's address at every call; here the inputs are copied into static buffers and the graph is replayed,
nothing else.

Rules for ``fn``: tensors in, one tensor out, no host synchronisation, no random numbers drawn inside (pass
noise in), and the parameters it reads must stay where they are (call :meth:`clear` after moving or replacing
them: the policy does so in ``_apply`` and ``load_state_dict``, and when it makes its low-precision weight copies
anew; updates in place, such as an optimizer step or a refresh of those copies, are seen by the next replay).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _CapturedGraph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]
    output: Tensor


class CUDAGraphedFunction:
    """``CUDAGraphedFunction(fn)(*tensors)`` == ``fn(*tensors)``, replayed from a CUDA graph for CUDA inputs.

    The first call with a new signature (shapes, dtypes, device, autocast and grad mode) runs ``fn``
    ``warmup`` times on a side stream (compilation, cuDNN autotuning) and captures it; CPU inputs call ``fn``
    directly. The returned tensor is a fresh copy, never the graph's own output buffer.
    """

    def __init__(self, fn: Callable[..., Tensor], warmup: int = 3):
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, _CapturedGraph] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph (and its memory pool)."""
        self._graphs.clear()

    def __call__(self, *inputs: Tensor) -> Tensor:
        if not inputs or not all(torch.is_tensor(t) and t.is_cuda for t in inputs):
            return self.fn(*inputs)
        key = self._signature(inputs)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(inputs)
        for static, value in zip(captured.inputs, inputs, strict=True):
            static.copy_(value)
        captured.graph.replay()
        return captured.output.clone()

    @staticmethod
    def _signature(inputs: tuple[Tensor, ...]) -> tuple:
        device = inputs[0].device
        return (
            tuple((tuple(t.shape), t.dtype, t.device) for t in inputs),
            torch.is_grad_enabled(),
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )

    def _capture(self, inputs: tuple[Tensor, ...]) -> _CapturedGraph:
        static = tuple(t.detach().clone() for t in inputs)
        side = torch.cuda.Stream(device=static[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.fn(*static)
        if not torch.is_tensor(output):
            raise TypeError(f"a CUDA-graphed function must return one tensor, got {type(output).__name__}")
        return _CapturedGraph(graph, static, output)
