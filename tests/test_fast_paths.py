"""The speed-ups leave results unchanged: same seed and noise, fast vs reference paths (issue: fast DeFI).

Reference paths: context re-computed at every solver step (official), instructions re-encoded every call,
T5 padded to the batch's longest instruction, eager fp32. Fast paths: context once per chunk, cached
instructions, T5 padded to buckets, torch.compile, bf16 frozen parts (GPU test).
"""

from contextlib import nullcontext

import pytest
import torch
from defi_test_utils import tiny_batch, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from lerobot_defi.models.edm import sample_first_order
from lerobot_defi.policy.cuda_graphs import CUDAGraphedFunction
from lerobot_defi.policy.modeling_defi import DeFIPolicy


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that reach the dispatcher while it is active."""

    calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def make_policy(**overrides) -> DeFIPolicy:
    torch.manual_seed(0)
    return DeFIPolicy(tiny_config(**overrides)).eval()


def reference_sample(policy: DeFIPolicy, batch: dict, noise: torch.Tensor) -> torch.Tensor:
    """Official sampler: the context encoder runs inside every denoiser call."""
    head = policy.action_head

    def denoiser(x, sigma):
        context = policy.encode_observation(batch)["context"]
        return head.denoise(x, sigma.expand(x.shape[0]), context)

    sigmas = head.inference_sigmas()
    return sample_first_order(denoiser, noise * sigmas[0], sigmas)


def test_context_once_per_chunk_equals_context_every_step():
    policy = make_policy(feature_noise_seed=3)
    batch = tiny_batch(policy.config, batch_size=2)
    noise = torch.randn(2, 10, 7)
    with torch.no_grad():
        fast = policy.predict_action_chunk(batch, noise=noise)
        reference = reference_sample(policy, batch, noise)
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)


def test_instruction_cache_and_token_buckets_do_not_change_actions():
    policy = make_policy(feature_noise_seed=3)
    batch = tiny_batch(
        policy.config, batch_size=3, tasks=["open the drawer", "lift the red block from the table", "go"]
    )
    noise = torch.randn(3, 10, 7)
    with torch.no_grad():
        first = policy.predict_action_chunk(batch, noise=noise)  # fills the cache
        cached = policy.predict_action_chunk(batch, noise=noise)
        policy.text.clear_cache()
        policy.text.pad_to_multiple_of = 16
        bucketed = policy.predict_action_chunk(batch, noise=noise)
    torch.testing.assert_close(cached, first, rtol=0, atol=0)
    torch.testing.assert_close(bucketed, first, rtol=1e-5, atol=1e-5)


def chunks_of_twin_policies(**overrides):
    """A tiny policy and a twin with ``overrides`` and the same weights; both predict one chunk from the same
    batch and noise. Returns ``(reference, twin, batch, reference_chunk, twin_chunk)``."""
    reference = make_policy(feature_noise_seed=3)
    twin = make_policy(feature_noise_seed=3, **overrides)
    twin.load_state_dict(reference.state_dict())
    batch = tiny_batch(reference.config, batch_size=2)
    noise = torch.randn(2, 10, 7)
    with torch.no_grad():
        expected = reference.predict_action_chunk(batch, noise=noise)
        got = twin.predict_action_chunk(batch, noise=noise)
    return reference, twin, batch, expected, got


@pytest.mark.slow
def test_compiled_policy_matches_eager_on_cpu():
    from torch._dynamo.utils import counters

    # The chunk graph test_compile_cache's warm-start test compiles (batch 2): the session's inductor cache
    # (tests/conftest.py) has it when both run. No compile cache entry is written (compile_cache_dir off).
    eager, compiled, batch, expected, got = chunks_of_twin_policies(
        compile_mode="default", compile_cache_dir="off"
    )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Training loss and gradients: the loss's tensor path is one compiled graph, forward and backward. Eval mode,
    # and inductor's random ops replaced by torch's (fallback_random), so both draw the same action-loss noise and
    # noise levels from the seed (in training mode the compiled graph draws dropout masks from its own stream).
    graph_breaks = sum(counters["graph_break"].values())
    losses, grads, backward_ops = [], [], []
    for policy in (eager, compiled):
        torch.manual_seed(1)
        with torch._inductor.config.patch(fallback_random=True):
            loss, info = policy.forward(batch)
        with OpCounter() as ops:
            loss.backward()
        losses.append((loss, info["action_loss"]))
        grads.append({name: p.grad for name, p in policy.named_parameters() if p.grad is not None})
        backward_ops.append(ops.calls)
    assert sum(counters["graph_break"].values()) == graph_breaks
    # The compiled backward runs fused kernels: few ops reach the dispatcher (matrix products and the like).
    assert backward_ops[1] < backward_ops[0] / 3, backward_ops
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-5, atol=1e-5)
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-5)
    assert grads[1].keys() == grads[0].keys() and len(grads[0]) > 100
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_uncompiled_chunk_of_a_compiled_policy_runs_eagerly():
    """``predict_action_chunk(compiled=False)``: what benchmarks compare the compiled chunk with."""
    from torch._dynamo.utils import counters

    from lerobot_defi.models.frame_convolution import use_frame_convolutions

    eager = make_policy(feature_noise_seed=3)
    compiled = make_policy(feature_noise_seed=3, compile_mode="default", compile_cache_dir="off")
    compiled.load_state_dict(eager.state_dict())
    use_frame_convolutions(eager.gfdm)  # what compile_modules does besides compiling
    eager.text.pad_to_multiple_of = 16
    batch = tiny_batch(eager.config, batch_size=2)
    noise = torch.randn(2, 10, 7)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        got = compiled.predict_action_chunk(batch, noise=noise, compiled=False)
        expected = eager.predict_action_chunk(batch, noise=noise)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing was compiled
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_bf16_mixed_precision_inference_stays_close_to_fp32():
    *_, expected, got = chunks_of_twin_policies(dtype="bfloat16")
    assert got.dtype == torch.float32 and not torch.equal(got, expected)  # autocast did run
    assert (got - expected).abs().max().item() < 5e-2


def test_cuda_graphed_function_calls_through_on_cpu():
    calls = []

    def fn(x, y):
        calls.append(1)
        return x * 2 + y

    graphed = CUDAGraphedFunction(fn)
    torch.testing.assert_close(graphed(torch.ones(3), torch.arange(3.0)), torch.tensor([2.0, 3.0, 4.0]))
    assert len(calls) == 1 and len(graphed) == 0


def test_chunk_path_makes_no_host_tensors(monkeypatch):
    """CUDA-graph capture forbids host-to-device copies: run the chunk on the meta device and fail on any op that
    produces a CPU tensor (a schedule or index built on the CPU and moved over)."""

    policy = make_policy()
    batch = tiny_batch(policy.config, batch_size=2)
    with torch.no_grad():
        inputs = policy._tensor_inputs(batch)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.action_dim)
    policy = policy.to("meta")
    inputs = tuple(t.to("meta") for t in (*inputs, noise))
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: nullcontext())  # autocast has no meta device
    host_ops = []

    class HostTensorSpy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if torch.is_tensor(o) and o.device.type == "cpu":
                    host_ops.append(str(func))
            return out

    with torch.no_grad(), HostTensorSpy():
        out = policy._sample_chunk(*inputs)
    assert out.shape == (2, policy.config.chunk_size, policy.config.action_dim)
    assert host_ops == []


@pytest.mark.gpu
def test_cuda_graphed_function_replays_per_signature():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    weight = torch.randn(8, 8, device="cuda")
    graphed = CUDAGraphedFunction(lambda x, noise: torch.tanh(x @ weight) + noise)
    for batch in (1, 4, 1):
        x, noise = torch.randn(batch, 8, device="cuda"), torch.randn(batch, 8, device="cuda")
        out = graphed(x, noise)
        torch.testing.assert_close(out, torch.tanh(x @ weight) + noise)
        out.fill_(float("nan"))  # a copy: the next replay is unaffected
    assert len(graphed) == 2
    weight.mul_(2)  # in-place parameter updates are seen by the replay
    x, noise = torch.randn(1, 8, device="cuda"), torch.randn(1, 8, device="cuda")
    torch.testing.assert_close(graphed(x, noise), torch.tanh(x @ weight) + noise)
    graphed.clear()
    assert len(graphed) == 0


def compiled_bf16_twin_on_gpu(policy: DeFIPolicy, batch_size: int) -> tuple[DeFIPolicy, DeFIPolicy, dict]:
    """``policy`` on the GPU, a twin with its weights (bf16 frozen and trainable parts, compiled with CUDA graphs)
    and a tiny batch on the GPU."""
    twin = make_policy(
        feature_noise_seed=3,
        device="cuda",
        gfdm_dtype="bfloat16",
        dtype="bfloat16",
        compile_mode="reduce-overhead",
    )
    twin.load_state_dict(policy.state_dict())
    batch = tiny_batch(policy.config, batch_size=batch_size)
    return policy.cuda(), twin.cuda(), {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.gpu
def test_bf16_compiled_gfdm_matches_fp32_eager_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    reference, fast, batch = compiled_bf16_twin_on_gpu(make_policy(feature_noise_seed=3, device="cuda"), 2)
    noise = torch.randn(2, 10, 7, device="cuda")
    with torch.no_grad():
        expected = reference.predict_action_chunk(batch, noise=noise)
        for _ in range(3):  # warm-up and CUDA-graph capture
            got = fast.predict_action_chunk(batch, noise=noise)
        assert len(fast._compiled_sample) == 1  # one graph for this input signature, replayed
        fast.cuda()  # moving the policy drops the graphs (they hold parameter addresses)
        assert len(fast._compiled_sample) == 0
        again = fast.predict_action_chunk(batch, noise=noise)
    # bf16 frozen features and bf16 mixed precision: actions agree to a few hundredths on a [-1, 1] range.
    assert (got - expected).abs().max().item() < 5e-2
    torch.testing.assert_close(again, got, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_compiled_training_step_matches_eager_on_gpu():
    """The compiled training loss (one graph, forward and backward) under bf16 autocast, as lerobot-train runs it,
    against the same policy's eager modules: same loss and gradients up to bf16 rounding."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    eager = make_policy(feature_noise_seed=3, device="cuda", gfdm_dtype="bfloat16", dtype="bfloat16")
    eager, compiled, batch = compiled_bf16_twin_on_gpu(eager, 4)
    eager.prepare_for_compile()
    results = []
    for policy in (eager, compiled):
        torch.manual_seed(1)
        with torch._inductor.config.patch(fallback_random=True), torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = policy.forward(batch)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        results.append((loss.detach().float(), grads.float()))
    (loss_eager, grads_eager), (loss_compiled, grads_compiled) = results
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=2e-2, atol=2e-2)
    assert grads_compiled.shape == grads_eager.shape
    relative = (grads_compiled - grads_eager).norm() / grads_eager.norm()
    assert relative.item() < 5e-2, relative.item()

    # The frozen GFDM's convolutions run channels-last in the training graph: cuDNN's bf16 kernels need no
    # NCHW <-> NHWC transposes around them (inductor's own heuristic left them NCHW: docs/performance.md §2).
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = compiled.forward(batch)
        loss.backward()
        torch.cuda.synchronize()
    kernels = [event.name for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    assert any("implicit_gemm" in name or "conv" in name.lower() for name in kernels), (
        "no convolution profiled"
    )
    transposes = [name for name in kernels if "nchwToNhwc" in name or "nhwcToNchw" in name]
    assert not transposes, transposes[:3]
