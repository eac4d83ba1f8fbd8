"""Temporal Conv3d run as 2-D convolutions: same outputs, gradients and state dict (speed: bench_gfdm_variants)."""

import copy

import torch
from defi_test_utils import tiny_config
from diffusers import UNetSpatioTemporalConditionModel
from torch import nn

from lerobot_defi.models.frame_convolution import FrameConvolution, use_frame_convolutions


def test_frame_convolution_equals_conv3d_forward_and_backward():
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 10, (3, 1, 1), padding=(1, 0, 0))
    fast = copy.deepcopy(conv)
    assert use_frame_convolutions(fast) == 1 and isinstance(fast, FrameConvolution)
    # A permuted (non-contiguous) input, as SVD's spatio-temporal blocks pass it.
    x = torch.randn(2, 5, 6, 4, 3).permute(0, 2, 1, 3, 4).requires_grad_(True)
    x_fast = x.detach().clone().requires_grad_(True)
    expected, actual = conv(x), fast(x_fast)
    assert actual.shape == (2, 10, 5, 4, 3)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    expected.square().sum().backward()
    actual.square().sum().backward()
    torch.testing.assert_close(x_fast.grad, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-4)
    assert fast.state_dict().keys() == conv.state_dict().keys()


def test_only_frame_only_convolutions_switch():
    others = nn.ModuleList(
        [
            nn.Conv3d(4, 4, 3, padding=1),  # spatial kernel
            nn.Conv3d(4, 4, (3, 1, 1), stride=(2, 1, 1)),  # strided
            nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), padding_mode="replicate"),
            nn.Conv2d(4, 4, 1),
        ]
    )
    assert use_frame_convolutions(others) == 0
    assert use_frame_convolutions(nn.Conv3d(4, 8, 1)) == 1  # the 1x1x1 shortcut


def test_svd_unet_with_frame_convolutions_is_unchanged():
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel.from_config(tiny_config().gfdm_unet_config).eval()
    fast = copy.deepcopy(unet)
    switched = use_frame_convolutions(fast)
    assert switched == sum(isinstance(m, nn.Conv3d) for m in unet.modules()) > 0
    sample = torch.randn(1, 4, 8, 16, 16)
    context = torch.randn(1, 20, unet.config.cross_attention_dim)
    added = torch.tensor([[4.0, 127.0, 0.0]])
    with torch.no_grad():
        expected = unet(sample, torch.tensor(1.6), context, added).sample
        actual = fast(sample, torch.tensor(1.6), context, added).sample
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
