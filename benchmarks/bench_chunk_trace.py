"""What dynamo traces in a compiled chunk: graph nodes per part of the policy, and the tracing seconds.

A warm start (``bench_compiled_start.py``) loads the compiled graphs from the compile cache but still runs dynamo
over the chunk's Python code. This script traces the function ``compile_modules`` compiles
(``DeFIPolicy._inference_chunk``, one full graph, static shapes) with a backend that only counts, so nothing is
compiled and nothing runs: it prints how many graph nodes each top-level module of the policy contributes (the
innermost module a node was traced in; the action head's count holds its context blocks once and its denoising blocks in
each of the solver steps; the script splits it by the action head's children too) and torch's tracing timers.

    python benchmarks/bench_chunk_trace.py --size=official --out=trace.json   # builds 1.72 B random weights
    python benchmarks/bench_chunk_trace.py                                    # tiny preset
"""

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_compiled_start import COMPILE_PHASES, Size
from bench_policy import build_policy, make_batch

from lerobot_defi.command_line import parse_or_exit

COUNTED_OPS = ("call_function", "call_method", "call_module")


@dataclass
class BenchChunkTraceConfig:
    """Graph nodes per part of the compiled chunk, and dynamo's tracing seconds."""

    # Policy size: the tiny preset, or the official-size architectures (random weights either way).
    size: Size = "tiny"
    # Torch device of the policy (tracing runs on the host either way).
    device: str = "cpu"
    # Write the results as JSON here.
    out: str | None = None


NO_MODULE = "(no module: policy and solver code)"


def module_part(nn_module_stack: dict | None, within: str | None = None) -> str | None:
    """The policy's top-level module a graph node was traced in (``gfdm``, ``action_head``, ...), from the node's
    ``nn_module_stack`` (paths such as ``L['self'].gfdm.unet.down_blocks[0]`` or ``L['self']._modules['gidm']``);
    :data:`NO_MODULE` for code that runs outside every submodule's ``forward`` (the policy's methods, the solver
    loop's arithmetic). With ``within``, the child of that top-level module instead (``None`` for nodes outside
    it, ``within`` itself for its own code)."""
    if not nn_module_stack:
        return None if within else NO_MODULE
    path = list(nn_module_stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"_modules\['(\w+)'\]", r"\1", path)
    names = [name.split("[")[0] for name in path.split(".") if name]
    if within is None:
        return names[0] if names else NO_MODULE
    if not names or names[0] != within:
        return None
    return names[1] if len(names) > 1 else within


def nodes_per_part(graph: torch.fx.Graph, within: str | None = None) -> dict[str, int]:
    """Operation nodes of ``graph`` per :func:`module_part` (with ``within``: per child of that module), largest
    first, and their ``total``."""
    parts = Counter(
        module_part(node.meta.get("nn_module_stack"), within)
        for node in graph.nodes
        if node.op in COUNTED_OPS
    )
    parts.pop(None, None)
    counted = dict(parts.most_common())
    counted["total"] = sum(parts.values())
    return counted


def trace_chunk(policy, batch: dict, noise: torch.Tensor) -> dict:
    """Trace ``policy._inference_chunk`` on ``batch`` (and action ``noise``) as ``compile_modules`` prepares it;
    nodes per part and seconds."""
    from torch._dynamo.utils import compilation_time_metrics

    policy.prepare_for_compile()  # before the inputs: instruction tokens padded as the compiled chunk sees them
    with torch.no_grad():
        inputs = (*policy._tensor_inputs(batch), noise)
    graphs: list[dict[str, dict[str, int]]] = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(
            {
                "nodes": nodes_per_part(graph_module.graph),
                # the solver's denoiser runs once per step, its context blocks once per chunk
                "action_head_nodes": nodes_per_part(graph_module.graph, within="action_head"),
            }
        )
        outputs = next(node for node in graph_module.graph.nodes if node.op == "output").args[0]
        examples = [out.meta["example_value"] for out in outputs]  # fake tensors: shapes, dtypes, devices

        def no_run(*args):  # outputs of the right shapes, nothing computed
            return [torch.empty(e.shape, dtype=e.dtype, device=e.device) for e in examples]

        return no_run

    torch._dynamo.reset()
    compilation_time_metrics.clear()
    traced = torch.compile(policy._inference_chunk, backend=counting_backend, fullgraph=True, dynamic=False)
    started = time.perf_counter()
    with torch.no_grad(), policy._mixed_precision(inputs[0].device.type):
        traced(*inputs)
    seconds = time.perf_counter() - started
    if len(graphs) != 1:
        raise RuntimeError(f"expected the chunk as one graph, dynamo made {len(graphs)}")
    return {
        **graphs[0],
        "seconds": {
            "wall": round(seconds, 2),
            **{
                name: round(sum(compilation_time_metrics.get(key, [])), 2)
                for name, key in COMPILE_PHASES.items()
            },
        },
    }


def main() -> None:
    args = parse_or_exit(BenchChunkTraceConfig)

    started = time.perf_counter()
    policy = build_policy(args.size == "tiny", args.device, seed=0).eval()
    print(f"built the {args.size} policy in {time.perf_counter() - started:.1f} s", flush=True)
    batch = make_batch(policy.config, 1, args.device)
    noise = torch.randn(1, policy.config.chunk_size, policy.config.action_dim, device=args.device)
    result = trace_chunk(policy, batch, noise)
    total = result["nodes"]["total"]
    print(f"\n{args.size} policy: {total} graph nodes in the chunk")
    for part, count in result["nodes"].items():
        if part != "total":
            print(f"  {part:<36} {count:>6}  {100 * count / total:5.1f} %")
    print("  of the action head: " + ", ".join(f"{k} {v}" for k, v in result["action_head_nodes"].items()))
    print("seconds: " + ", ".join(f"{name} {value}" for name, value in result["seconds"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"size": args.size, "device": args.device, **result}, indent=2))


if __name__ == "__main__":
    main()
