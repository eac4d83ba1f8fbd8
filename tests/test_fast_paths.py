"""The speed-ups leave results unchanged: same seed and noise, fast vs reference paths (issue: fast DeFI).

Reference paths: context re-computed at every solver step (official), instructions re-encoded every call,
T5 padded to the batch's longest instruction, eager fp32. Fast paths: context once per chunk, cached
instructions, T5 padded to buckets, torch.compile, bf16 frozen parts (GPU test).
"""

from contextlib import nullcontext

import pytest
import torch
from defi_test_utils import tiny_batch, tiny_config

from lerobot_defi.models.edm import sample_first_order
from lerobot_defi.policy.cuda_graphs import CUDAGraphedFunction
from lerobot_defi.policy.modeling_defi import DeFIPolicy


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
    eager, compiled, batch, expected, got = chunks_of_twin_policies(compile_mode="default")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Training loss (eval mode: inductor draws dropout masks from its own RNG stream).
    torch.manual_seed(1)
    loss_eager, _ = eager.forward(batch)
    torch.manual_seed(1)
    loss_compiled, _ = compiled.forward(batch)
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-4, atol=1e-4)


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
    from torch.utils._python_dispatch import TorchDispatchMode

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


@pytest.mark.gpu
def test_bf16_compiled_gfdm_matches_fp32_eager_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    reference = make_policy(feature_noise_seed=3, device="cuda").cuda()
    fast = make_policy(
        feature_noise_seed=3,
        device="cuda",
        gfdm_dtype="bfloat16",
        dtype="bfloat16",
        compile_mode="reduce-overhead",
    )
    fast.load_state_dict(reference.state_dict())
    fast = fast.cuda()
    batch = {
        k: v.cuda() if torch.is_tensor(v) else v
        for k, v in tiny_batch(reference.config, batch_size=2).items()
    }
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
