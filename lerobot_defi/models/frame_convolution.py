"""SVD's temporal convolutions run as 2-D convolutions.

The temporal ResNet blocks of Stable Video Diffusion convolve over frames only: ``nn.Conv3d`` with a
``(k, 1, 1)`` kernel on ``(B, C, F, H, W)``. The same sum is a 2-D convolution with a ``(k, 1)`` kernel on
``(B, C, F, H*W)``. Run that way, cuDNN and inductor treat it like every other convolution of the UNet
(channels-last, no layout transposes around each call), which matters on the GPU (benchmarks/
bench_gfdm_variants.py). Parameters, their names and shapes stay those of the ``nn.Conv3d``.
"""

import torch.nn.functional as F
from torch import Tensor, nn


class FrameConvolution(nn.Conv3d):
    """``nn.Conv3d`` with a ``(k, 1, 1)`` kernel, computed as a 2-D convolution over (frames, pixels)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, C, F, H, W) -> (B, C_out, F, H, W)
        b, c, f, h, w = x.shape
        y = F.conv2d(
            x.reshape(b, c, f, h * w),
            self.weight.squeeze(-1),
            self.bias,
            stride=1,
            padding=(self.padding[0], 0),
        )
        return y.reshape(b, y.shape[1], f, h, w)


def is_frame_convolution(module: nn.Module) -> bool:
    """A plain ``nn.Conv3d`` over frames only: kernel ``(k, 1, 1)``, stride and dilation 1, no groups, zero
    padding on frames only."""
    return (
        type(module) is nn.Conv3d
        and tuple(module.kernel_size[1:]) == (1, 1)
        and tuple(module.stride) == (1, 1, 1)
        and tuple(module.dilation) == (1, 1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and tuple(module.padding[1:]) == (0, 0)
    )


def use_frame_convolutions(model: nn.Module) -> int:
    """Switch every frame-only ``nn.Conv3d`` of ``model`` to :class:`FrameConvolution` in place (weights and
    state-dict keys untouched); returns how many were switched."""
    switched = 0
    for module in model.modules():
        if is_frame_convolution(module):
            module.__class__ = FrameConvolution
            switched += 1
    return switched
