"""The speed-ups leave results unchanged: same seed and noise, fast vs reference paths (issue: fast DeFI).

Reference paths: context re-computed at every solver step (official), instructions re-encoded every call,
T5 padded to the batch's longest instruction, eager fp32. Fast paths: context once per chunk, cached
instructions, T5 padded to buckets, torch.compile, bf16 frozen parts (GPU test).
"""

import pytest
import torch
from defi_test_utils import tiny_batch, tiny_config

from lerobot_defi.models.edm import sample_first_order
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


@pytest.mark.slow
def test_compiled_policy_matches_eager_on_cpu():
    eager = make_policy(feature_noise_seed=3)
    compiled = make_policy(feature_noise_seed=3, compile_mode="default")
    compiled.load_state_dict(eager.state_dict())
    batch = tiny_batch(eager.config, batch_size=2)
    noise = torch.randn(2, 10, 7)
    with torch.no_grad():
        expected = eager.predict_action_chunk(batch, noise=noise)
        got = compiled.predict_action_chunk(batch, noise=noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Training loss (eval mode: inductor draws dropout masks from its own RNG stream).
    torch.manual_seed(1)
    loss_eager, _ = eager.forward(batch)
    torch.manual_seed(1)
    loss_compiled, _ = compiled.forward(batch)
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_bf16_compiled_gfdm_matches_fp32_eager_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    reference = make_policy(feature_noise_seed=3, device="cuda").cuda()
    fast = make_policy(
        feature_noise_seed=3, device="cuda", gfdm_dtype="bfloat16", compile_mode="reduce-overhead"
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
    # bf16 frozen features: actions agree to a few hundredths on a [-1, 1]-scaled action range.
    assert (got - expected).abs().max().item() < 5e-2
