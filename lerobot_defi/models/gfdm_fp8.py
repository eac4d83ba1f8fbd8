"""FP8 (e4m3) matrix products for the frozen GFDM UNet, through torchao (opt-in: ``DeFIConfig.gfdm_fp8``).

GPUs of compute capability 8.9 and newer (Ada, Hopper) multiply e4m3 matrices at twice their bf16 rate. Of the
truncated SVD UNet's FLOPs about 60 % are ``nn.Linear`` layers (attention projections, feed-forward, ``proj_in`` /
``proj_out``) and 1 % the 1x1 convolutions (``conv_shortcut`` of the ResNet blocks whose width changes);
:func:`fp8_flop_share` counts them for any architecture. :func:`convert_unet_to_fp8` gives exactly those layers
torchao's ``Float8DynamicActivationFloat8WeightConfig``: weights quantized once with one scale per output row,
activations quantized at every call with one scale per row (dynamic), products accumulated and returned in bf16.

Kept in bf16 (:func:`plan_fp8` says which and why):

* 3x3 and temporal ``(k, 1, 1)`` convolutions (~39 % of the FLOPs): torchao's FP8 convolution needs the separate
  ``mslk`` kernels and one scale per tensor; a 1x1 convolution instead is a matrix product over channels, so it
  runs as :class:`PointwiseConvAsLinear` (an ``nn.Linear``) and gets the same per-row FP8 as the other layers;
* the projections of the noise-level and frame-position embeddings (a few rows per image: nothing to gain);
* attention's own products (softmax(QK^T)V), normalisations, the VAE encoder and every trainable part.

The conversion swaps modules inside the UNet and can be undone (:meth:`Float8Conversion.revert`). It is invisible
to checkpoints: the replaced modules are kept on the CPU and ``state_dict()`` returns their weights, so a policy
saved with FP8 on holds the same bf16 weights as one saved without.
"""

import importlib.util
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
FP8_INSTALL_HINT = "pip install 'lerobot_policy_defi[fp8]'"
# Modules under these names project the noise-level / frame-position embeddings: one row per image or frame.
EMBEDDING_PROJECTIONS = ("time_embedding", "add_embedding", "time_emb_proj", "time_pos_embed")
Granularity = Literal["row", "tensor"]


class FP8UnavailableError(RuntimeError):
    """FP8 GFDM was asked for where it cannot run (no torchao, no CUDA, or a GPU older than compute 8.9)."""


def fp8_unavailable_reason(device: str | torch.device) -> str | None:
    """Why FP8 matrix products cannot run on ``device`` in this process, or None when they can."""
    reasons = []
    if importlib.util.find_spec("torchao") is None:
        reasons.append(f"torchao is not installed ({FP8_INSTALL_HINT})")
    device = torch.device(device)
    needs = "a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or newer)"
    if device.type != "cuda":
        reasons.append(f"FP8 matrix products need {needs}; the device is {device}")
    elif not torch.cuda.is_available():
        reasons.append(f"FP8 matrix products need {needs}; CUDA is not available in this process")
    else:
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_COMPUTE_CAPABILITY:
            reasons.append(
                f"FP8 matrix products need {needs}; {torch.cuda.get_device_name(device)} has compute "
                f"capability {capability[0]}.{capability[1]}"
            )
    return "; ".join(reasons) or None


def check_fp8_available(device: str | torch.device, option: str = "gfdm_fp8") -> None:
    """Raise :class:`FP8UnavailableError`, naming the config ``option``, when FP8 cannot run on ``device``."""
    reason = fp8_unavailable_reason(device)
    if reason is not None:
        raise FP8UnavailableError(
            f"{option}=true cannot run here: {reason}. Set --policy.{option}=false to run the GFDM in bf16."
        )


# --- what is converted ----------------------------------------------------------------------------------------
class PointwiseConvAsLinear(nn.Linear):
    """A 1x1 ``nn.Conv2d`` computed as a matrix product over channels: ``(N, C_in, H, W) -> (N, C_out, H, W)``,
    weight ``(C_out, C_in)``."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PointwiseConvAsLinear":
        if not is_pointwise_conv(conv):
            raise ValueError(f"not a plain 1x1 convolution: {conv}")
        weight = conv.weight
        linear = cls(
            conv.in_channels,
            conv.out_channels,
            conv.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(weight.reshape(conv.out_channels, conv.in_channels))
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        return linear.requires_grad_(weight.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)


def is_pointwise_conv(module: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with a 1x1 kernel: stride 1, no padding, dilation 1, no groups."""
    return (
        type(module) is nn.Conv2d
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (1, 1)
        and module.padding in ((0, 0), "valid")
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
    )


@dataclass
class Float8Plan:
    """Qualified names (inside the UNet) of the layers that get FP8 matrix products, and of the ``nn.Linear`` /
    1x1 convolutions that stay in bf16 with the reason."""

    linears: list[str] = field(default_factory=list)
    pointwise_convs: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        return [*self.linears, *self.pointwise_convs]


def plan_fp8(unet: nn.Module) -> Float8Plan:
    """Which layers of ``unet`` :func:`convert_unet_to_fp8` converts: every ``nn.Linear`` and plain 1x1
    ``nn.Conv2d`` whose widths are multiples of 16 (FP8 matrix products need them), except the embedding
    projections (:data:`EMBEDDING_PROJECTIONS`)."""
    plan = Float8Plan()
    for name, module in unet.named_modules():
        if type(module) in (nn.Linear, PointwiseConvAsLinear):
            widths, kind = (module.in_features, module.out_features), plan.linears
        elif is_pointwise_conv(module):
            widths, kind = (module.in_channels, module.out_channels), plan.pointwise_convs
        else:
            continue
        if any(part in EMBEDDING_PROJECTIONS for part in name.split(".")):
            plan.kept[name] = "projects the noise-level / frame-position embedding (a few rows per image)"
        elif any(width % 16 for width in widths):
            plan.kept[name] = f"widths {widths} are not multiples of 16"
        else:
            kind.append(name)
    return plan


# --- the conversion -------------------------------------------------------------------------------------------
class Float8Conversion:
    """The FP8 layers of a UNet, made by :func:`convert_unet_to_fp8`; :meth:`revert` puts the originals back.

    While it is active, ``unet.state_dict()`` (and that of any module holding the UNet) returns the original
    weights of the converted layers (kept on the CPU), not their FP8 form.
    """

    def __init__(self, unet: nn.Module, plan: Float8Plan, originals: dict[str, nn.Module]):
        self.unet = unet
        self.plan = plan
        self.originals = originals

        def original_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
            for name, original in self.originals.items():
                for key, value in original.state_dict().items():
                    state_dict[f"{prefix}{name}.{key}"] = value

        # (a function: torch marks the hooks it is given with an attribute, which a bound method cannot take)
        self._hook = unet.register_state_dict_post_hook(original_weights)

    @property
    def active(self) -> bool:
        return bool(self.originals)

    def revert(self) -> None:
        """Put the original modules back (on the device the FP8 ones are on)."""
        for name, original in self.originals.items():
            device = self.unet.get_submodule(name).weight.device
            self.unet.set_submodule(name, original.to(device))
        self.originals = {}
        self._hook.remove()


def convert_unet_to_fp8(
    unet: nn.Module, granularity: Granularity = "row", plan: Float8Plan | None = None
) -> Float8Conversion:
    """FP8 matrix products for the layers of ``plan`` (default :func:`plan_fp8`) of a frozen bf16 ``unet``, in
    place: each becomes an ``nn.Linear`` (1x1 convolutions a :class:`PointwiseConvAsLinear`) whose weight torchao
    quantizes to e4m3 (``Float8DynamicActivationFloat8WeightConfig``; ``granularity`` ``"row"``: a scale per
    row of weights and activations, ``"tensor"``: one per tensor). The replaced modules move to the CPU.

    Needs torchao, and, to run, a GPU of compute capability >= 8.9 (:func:`check_fp8_available`)."""
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            PerTensor,
            quantize_,
        )
    except ImportError as error:
        raise FP8UnavailableError(f"FP8 GFDM needs torchao ({FP8_INSTALL_HINT}): {error}") from error
    plan = plan_fp8(unet) if plan is None else plan
    dtypes = {unet.get_submodule(name).weight.dtype for name in plan.targets}
    if granularity == "row" and dtypes - {torch.bfloat16}:
        raise ValueError(
            f"per-row FP8 quantizes bf16 weights; the UNet's are {sorted(map(str, dtypes))} (gfdm_dtype=bfloat16)"
        )
    if any(p.requires_grad for name in plan.targets for p in unet.get_submodule(name).parameters()):
        raise ValueError("FP8 conversion is for frozen layers; some of the planned layers are trainable")
    originals = {}
    for name in plan.targets:
        module = unet.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            replacement = PointwiseConvAsLinear.from_conv(module)
        else:
            replacement = nn.Linear(
                module.in_features,
                module.out_features,
                module.bias is not None,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
            replacement.load_state_dict(module.state_dict())
            replacement.requires_grad_(False)
        unet.set_submodule(name, replacement)
        originals[name] = module.to("cpu")
    scales = PerRow() if granularity == "row" else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=scales,
        # torchao's inductor settings (coordinate-descent tuning) are process-wide and lengthen every compilation.
        set_inductor_config=False,
    )
    targets = set(plan.targets)
    conversion = Float8Conversion(unet, plan, originals)
    try:
        quantize_(unet, config, filter_fn=lambda module, name: name in targets)
    except Exception:
        conversion.revert()
        raise
    return conversion


# --- how much of the work is FP8 ------------------------------------------------------------------------------
def fp8_flop_share(
    gfdm: nn.Module, plan: Float8Plan, num_images: int = 2, image_size: int = 256, context_length: int = 20
) -> dict:
    """FLOPs of one GFDM pass over ``num_images`` images of ``image_size`` pixels (the policy's cameras of one
    sample) with ``context_length`` instruction tokens: the UNet's (without the VAE encoder), those of the layers
    ``plan`` converts, and their share.

    Counted with fake tensors (shapes only, nothing is computed; ``gfdm`` may itself be built from fake tensors, as
    an official-size model is on a small machine); ``gfdm`` must not be converted yet."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    counted = {"linear": 0, "pointwise_conv": 0}

    def count_linear(module, inputs, output):
        counted["linear"] += 2 * inputs[0].numel() * module.out_features

    def count_pointwise_conv(module, inputs, output):
        counted["pointwise_conv"] += 2 * output.numel() * module.in_channels

    unet = gfdm.unet
    hooks = [unet.get_submodule(name).register_forward_hook(count_linear) for name in plan.linears]
    hooks += [
        unet.get_submodule(name).register_forward_hook(count_pointwise_conv) for name in plan.pointwise_convs
    ]
    device = unet.conv_in.weight.device
    fake_mode = getattr(unet.conv_in.weight, "fake_mode", None)  # weights made as fake tensors, or real ones
    try:
        # eagerly even where the GFDM was compiled: this counts, it does not run
        with (
            fake_mode or FakeTensorMode(allow_non_fake_inputs=True),
            torch.compiler.set_stance("force_eager"),
        ):
            images = torch.zeros(num_images, 3, image_size, image_size, device=device)
            context = torch.zeros(num_images, context_length, gfdm.cross_attention_dim, device=device)
            with FlopCounterMode(display=False) as vae_only:
                gfdm.encode_condition(images)
            with FlopCounterMode(display=False) as whole:
                gfdm(images, context)
    finally:
        for hook in hooks:
            hook.remove()
    unet_flops = whole.get_total_flops() - vae_only.get_total_flops()
    fp8 = counted["linear"] + counted["pointwise_conv"]
    return {
        "unet_tflop": unet_flops / 1e12,
        "fp8_linear_tflop": counted["linear"] / 1e12,
        "fp8_pointwise_conv_tflop": counted["pointwise_conv"] / 1e12,
        "fp8_share": fp8 / unet_flops,
        "fp8_layers": len(plan.targets),
        "bf16_linear_or_1x1_layers": len(plan.kept),
    }
