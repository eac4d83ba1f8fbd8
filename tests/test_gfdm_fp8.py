"""FP8 frozen GFDM (``gfdm_fp8``, ``models/gfdm_fp8.py``): what is converted, that nothing else changes, the errors
people see where it cannot run, and (GPU) how far FP8 features and actions are from bf16.

On the CPU torchao quantizes but cannot multiply with per-row scales: the CPU tests that run FP8 layers use one
scale per tensor, with torchao's hardware check (a GPU of compute capability >= 8.9) lifted.
"""

import functools
from collections import Counter

import pytest
import torch
from defi_test_utils import tiny_batch, tiny_config
from safetensors.torch import load_file
from torch import nn

import lerobot_defi.policy.modeling_defi as modeling_defi
from lerobot_defi.models import gfdm_fp8
from lerobot_defi.models.gfdm_fp8 import (
    FP8UnavailableError,
    PointwiseConvAsLinear,
    convert_unet_to_fp8,
    fp8_flop_share,
    fp8_unavailable_reason,
    plan_fp8,
)
from lerobot_defi.policy.modeling_defi import DeFIPolicy

# Layers of an SVD transformer block and ResNet block that get FP8 (last parts of their names).
FP8_LAYER_NAMES = {
    "proj_in",
    "proj_out",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_in.net.0.proj",
    "ff_in.net.2",
}


def make_policy(**overrides) -> DeFIPolicy:
    torch.manual_seed(0)
    return DeFIPolicy(tiny_config(gfdm_dtype="bfloat16", **overrides)).eval()


@pytest.fixture
def fp8_on_cpu(monkeypatch):
    """Let the policy make FP8 layers on the CPU: no device check, torchao's hardware check lifted, one scale per
    tensor (what the CPU can multiply)."""
    pytest.importorskip("torchao", reason="the FP8 conversion needs torchao (pip install '.[fp8]')")
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularities: None)
    monkeypatch.setattr(modeling_defi, "check_fp8_available", lambda device: None)
    monkeypatch.setattr(
        modeling_defi, "convert_unet_to_fp8", functools.partial(convert_unet_to_fp8, granularity="tensor")
    )


def is_fp8(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "Float8Tensor"


# --- what is selected ------------------------------------------------------------------------------------------
def test_plan_converts_attention_feed_forward_and_1x1_convs_and_keeps_embedding_projections():
    plan = plan_fp8(make_policy().gfdm.unet)
    # tiny UNet: 6 spatio-temporal transformers (proj_in, proj_out), each with a spatial and a temporal block
    # (attn1, attn2, ff: 10 linears), the temporal one with ff_in (2 more)
    layers = Counter(next(s for s in FP8_LAYER_NAMES if name.endswith("." + s)) for name in plan.linears)
    assert layers == {
        **{name: 12 for name in FP8_LAYER_NAMES if name.startswith(("attn", "ff."))},
        **{"ff_in.net.0.proj": 6, "ff_in.net.2": 6, "proj_in": 6, "proj_out": 6},
    }
    assert len(plan.pointwise_convs) == 5
    assert all(name.endswith("spatial_res_block.conv_shortcut") for name in plan.pointwise_convs)
    kept = Counter(name.split(".")[-2] for name in plan.kept)
    assert kept == {
        "time_pos_embed": 12,
        "spatial_res_block": 10,
        "temporal_res_block": 10,
        "time_embedding": 2,
        "add_embedding": 2,
    }
    assert all(name.endswith(("linear_1", "linear_2", "time_emb_proj")) for name in plan.kept)
    assert all("embedding" in reason for reason in plan.kept.values())


def test_plan_keeps_layers_whose_widths_fp8_cannot_multiply():
    model = nn.Sequential(nn.Linear(24, 32), nn.Linear(32, 64), nn.Conv2d(32, 48, 1), nn.Conv2d(32, 48, 3))
    plan = plan_fp8(model)
    assert plan.linears == ["1"] and plan.pointwise_convs == ["2"]
    assert plan.kept == {"0": "widths (24, 32) are not multiples of 16"}


def test_pointwise_conv_as_linear_computes_the_1x1_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, kernel_size=1)
    linear = PointwiseConvAsLinear.from_conv(conv)
    x = torch.randn(2, 32, 5, 7, dtype=torch.float32)
    torch.testing.assert_close(linear(x), conv(x), rtol=1e-5, atol=1e-6)
    channels_last = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(linear(channels_last), conv(channels_last), rtol=1e-5, atol=1e-6)
    assert linear.weight.shape == (48, 32) and linear.weight.requires_grad == conv.weight.requires_grad
    with pytest.raises(ValueError, match="not a plain 1x1 convolution"):
        PointwiseConvAsLinear.from_conv(nn.Conv2d(32, 48, kernel_size=3))


def test_flop_share_counts_the_converted_layers_of_the_unet():
    gfdm = make_policy().gfdm
    plan = plan_fp8(gfdm.unet)
    share = fp8_flop_share(gfdm, plan, num_images=2, image_size=64)
    fp8 = share["fp8_linear_tflop"] + share["fp8_pointwise_conv_tflop"]
    assert share["fp8_share"] == pytest.approx(fp8 / share["unet_tflop"])
    assert 0.5 < share["fp8_share"] < 0.8 and share["fp8_pointwise_conv_tflop"] > 0
    assert share["fp8_layers"] == 149
    # counted with fake tensors: nothing ran and nothing was left behind
    assert not any(module._forward_hooks for module in gfdm.modules())


def test_official_unet_has_60_percent_of_its_flops_in_fp8_layers():
    """The figure docs/performance.md#s5 quotes: official SVD UNet truncated after up-block 1, one sample of two
    256x256 cameras, 16 frames (built from fake tensors: no memory, nothing computed)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lerobot_defi.models.gfdm import GFDMFeatureExtractor
    from lerobot_defi.models.reference_architectures import SVD_UNET, SVD_VAE

    with FakeTensorMode():
        gfdm = GFDMFeatureExtractor(
            UNetSpatioTemporalConditionModel.from_config(SVD_UNET),
            AutoencoderKLTemporalDecoder.from_config(SVD_VAE),
        )
    plan = plan_fp8(gfdm.unet)
    assert (len(plan.linears), len(plan.pointwise_convs), len(plan.kept)) == (240, 8, 56)
    share = fp8_flop_share(gfdm, plan, num_images=2, image_size=256)
    assert share["unet_tflop"] == pytest.approx(5.639, abs=1e-3)
    assert share["fp8_linear_tflop"] == pytest.approx(3.360, abs=1e-3)
    assert share["fp8_pointwise_conv_tflop"] == pytest.approx(0.054, abs=1e-3)
    assert share["fp8_share"] == pytest.approx(0.605, abs=1e-3)


# --- the conversion, on the policy -----------------------------------------------------------------------------
def test_fp8_policy_converts_only_frozen_unet_layers_and_saves_bf16_weights(fp8_on_cpu, tmp_path):
    reference = make_policy()
    policy = make_policy(gfdm_fp8=True)
    policy.load_state_dict(reference.state_dict())
    before = {name: tensor.clone() for name, tensor in policy.state_dict().items()}
    outside_unet = {name: p for name, p in policy.named_parameters() if not name.startswith("gfdm.unet.")}
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    batch = tiny_batch(policy.config, batch_size=2)
    noise = torch.randn(2, policy.config.chunk_size, policy.config.action_dim)

    torch.manual_seed(1)
    expected = reference.predict_action_chunk(batch, noise=noise)
    torch.manual_seed(1)
    got = policy.predict_action_chunk(batch, noise=noise)  # converts at the first call

    plan = policy._gfdm_fp8.plan
    converted = {f"gfdm.unet.{name}.weight" for name in plan.targets}
    assert {name for name, p in policy.named_parameters() if is_fp8(p)} == converted
    assert all(type(policy.gfdm.unet.get_submodule(n)) is PointwiseConvAsLinear for n in plan.pointwise_convs)
    # trainable parts, VAE, text encoders: the very same tensors, unchanged
    after = dict(policy.named_parameters())
    assert all(after[name] is p for name, p in outside_unet.items())
    assert {name for name, p in after.items() if p.requires_grad} == trainable
    # state_dict (what checkpoints and the compile cache's weight digest read): the bf16 weights, bit for bit
    state = policy.state_dict()
    assert set(state) == set(before)
    assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in before.items())
    policy.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(saved[k], before[k]) for k in converted)
    # FP8 GFDM features change the chunk a little (one scale per tensor here; per-row on a GPU is closer)
    assert 0 < (got - expected).abs().max().item() < 2e-2

    policy.to("cpu")  # moving the policy undoes the conversion ...
    assert policy._gfdm_fp8 is None and not any(is_fp8(p) for p in policy.parameters())
    assert all(type(policy.gfdm.unet.get_submodule(n)) is nn.Conv2d for n in plan.pointwise_convs)
    torch.manual_seed(1)
    torch.testing.assert_close(policy.predict_action_chunk(batch, noise=noise), got, rtol=0, atol=0)
    assert policy._gfdm_fp8.active  # ... and the next call makes the FP8 layers again


def test_fp8_conversion_refuses_fp32_weights_for_per_row_scales():
    pytest.importorskip("torchao", reason="the FP8 conversion needs torchao (pip install '.[fp8]')")
    unet = DeFIPolicy(tiny_config()).gfdm.unet  # tiny preset: fp32 GFDM
    with pytest.raises(ValueError, match="per-row FP8 quantizes bf16 weights"):
        convert_unet_to_fp8(unet)


# --- errors for people -----------------------------------------------------------------------------------------
def test_fp8_policy_on_the_cpu_says_what_it_needs():
    with pytest.raises(FP8UnavailableError) as raised:
        make_policy(gfdm_fp8=True, device="cpu")
    message = str(raised.value)
    assert message.startswith("gfdm_fp8=true cannot run here:")
    assert "compute capability >= 8.9" in message and "the device is cpu" in message
    assert "--policy.gfdm_fp8=false" in message


def test_fp8_reasons_name_torchao_and_old_gpus(monkeypatch):
    monkeypatch.setattr(gfdm_fp8.importlib.util, "find_spec", lambda name: None)
    assert "torchao is not installed (pip install 'lerobot_policy_defi[fp8]')" in fp8_unavailable_reason(
        "cpu"
    )
    monkeypatch.setattr(gfdm_fp8.importlib.util, "find_spec", lambda name: object())  # torchao "installed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert fp8_unavailable_reason("cuda") == (
        "FP8 matrix products need a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
        "NVIDIA A100-SXM4-80GB has compute capability 8.0"
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert fp8_unavailable_reason("cuda") is None


def test_fp8_needs_a_bf16_gfdm():
    with pytest.raises(ValueError, match=r"gfdm_fp8=true needs gfdm_dtype=bfloat16.*'float16'"):
        tiny_config(gfdm_fp8=True, gfdm_dtype="float16")


# --- GPU: FP8 against bf16 -------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_fp8_gfdm_features_and_chunk_stay_close_to_bf16_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (run on the GPU machine with -m gpu)")
    reason = fp8_unavailable_reason("cuda")
    if reason is not None:
        pytest.fail(f"FP8 GFDM cannot run on this GPU machine: {reason}")
    bf16 = make_policy(device="cuda", dtype="bfloat16").cuda()
    fp8 = make_policy(device="cuda", dtype="bfloat16", gfdm_fp8=True)
    fp8.load_state_dict(bf16.state_dict())
    fp8 = fp8.cuda()
    compiled = make_policy(device="cuda", dtype="bfloat16", gfdm_fp8=True, compile_mode="reduce-overhead")
    compiled.load_state_dict(bf16.state_dict())
    compiled = compiled.cuda()
    batch = {
        k: v.cuda() if torch.is_tensor(v) else v for k, v in tiny_batch(bf16.config, batch_size=2).items()
    }
    noise = torch.randn(2, 10, 7, device="cuda")

    def chunk(policy, repeats=1):
        for _ in range(repeats):  # compiled: warm-up and CUDA-graph capture
            torch.manual_seed(1)
            out = policy.predict_action_chunk(batch, noise=noise)
        return out

    expected, got, got_compiled = chunk(bf16), chunk(fp8), chunk(compiled, repeats=4)
    assert sum(is_fp8(p) for p in fp8.parameters()) == 149
    images = torch.cat([batch[k] for k in bf16.config.gfdm_camera_keys])
    context = torch.randn(4, 20, bf16.gfdm.cross_attention_dim, device="cuda")
    feature_noise = torch.randn(4, 4, 4, 16, 16, device="cuda")
    with torch.no_grad():
        features_bf16 = bf16.gfdm(images, context, noise=feature_noise)
        features_fp8 = fp8.gfdm(images, context, noise=feature_noise)
    relative_rms = (features_fp8 - features_bf16).norm() / features_bf16.norm()
    # e4m3 keeps 3 mantissa bits; with per-row scales the tiny UNet's features move by a few percent (one scale
    # per tensor on the CPU: 7.9 %, bf16 against fp32: 2 %), and the tiny action head hardly feels it.
    assert 0 < relative_rms.item() < 0.1
    assert (got - expected).abs().max().item() < 2e-2
    # the compiled FP8 chunk (one graph, CUDA graphs) is the eager FP8 chunk up to bf16 rounding
    assert (got_compiled - got).abs().max().item() < 5e-2
    # training, eager and compiled (the loss's one graph): gradients reach the trainable parts, never the FP8 layers
    for policy in (fp8, compiled):
        policy.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = policy.forward(batch)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is None for p in policy.gfdm.parameters())
        assert all(p.grad is not None for p in policy.action_head.parameters() if p.requires_grad)
