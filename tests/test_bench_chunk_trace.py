"""The chunk-trace diagnostic: graph nodes per part of the policy, counted by a backend that compiles nothing."""

import sys

import torch
from defi_test_utils import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
from bench_chunk_trace import NO_MODULE, module_part, trace_chunk
from bench_policy import build_policy, make_batch


def test_nodes_are_attributed_to_the_policy_s_top_level_modules():
    stack = {"a": ("L['self']", object), "b": ("L['self'].gfdm.unet.down_blocks[0]", object)}
    assert module_part(stack) == "gfdm"
    assert module_part({"a": ("L['self']._modules['gidm']", object)}) == "gidm"
    assert module_part({"a": ("L['self'].action_head.decoder[3].attn", object)}) == "action_head"
    assert module_part({"a": ("L['self']", object)}) == NO_MODULE
    assert module_part(None) == module_part({}) == NO_MODULE
    within = {"a": ("L['self'].action_head._modules['denoising_blocks'][3].attn", object)}
    assert module_part(within, within="action_head") == "denoising_blocks"
    assert module_part(stack, within="action_head") is None
    assert module_part({"a": ("L['self'].action_head", object)}, within="action_head") == "action_head"


def test_tiny_chunk_is_one_graph_mostly_gfdm_and_action_head():
    policy = build_policy(True, "cpu", seed=0).eval()
    batch = make_batch(policy.config, 1, "cpu")
    noise = torch.randn(1, policy.config.chunk_size, policy.config.action_dim)
    result = trace_chunk(policy, batch, noise)
    nodes = result["nodes"]
    assert nodes["total"] == sum(count for part, count in nodes.items() if part != "total")
    assert list(nodes)[:2] == ["gfdm", "action_head"]  # largest first
    assert {"gidm", "video_former", NO_MODULE} <= set(nodes)
    assert 0 < result["seconds"]["tracing"] <= result["seconds"]["wall"]
    assert result["action_head_nodes"]["total"] == nodes["action_head"]
    assert next(iter(result["action_head_nodes"])) == "denoising_blocks"  # once per solver step
