"""GFDM feature extractor: one UNet pass of the language-conditioned Stable Video Diffusion model, with
features tapped inside the UNet decoder (docs/method.md §4.3b, the VPP trick).

The video model is never sampled at policy time. Each observation image is VAE-encoded (posterior mode,
unscaled) and repeated over ``num_frames`` as SVD's image condition; the noisy half of the UNet input is
unit-variance noise (the pure-noise start at ``feature_sigma``), the timestep is ``c_noise = ln(sigma)/4``,
and the cross-attention context is the instruction's CLIP hidden states. The UNet is run only up to the last
tapped up-block; the outputs of the tapped up-blocks are resized (nearest) to the last tap's resolution and
concatenated on channels.

Official numbers: 256x256 images -> 32x32 latents; taps ``(0, 1)`` -> 1280 + 1280 = 2560 channels on a
16x16 grid; 16 frames; ``feature_sigma = 700``; micro-conditioning ``(fps 4, motion 127, noise-aug 0)``.

The modules are frozen: they run without gradients, outside autocast, in ``dtype`` (fp16 officially).
Blocks the taps do not need (later up-blocks, output convolution, the VAE decoder) are deleted.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from torch import Tensor, nn

from lerobot_defi.models.latent_spread import match_latent_spread

GFDM_SUBFOLDERS = ("unet", "vae")


def diffusers_config(model) -> dict:
    """A JSON-able architecture dict of a diffusers model (private keys dropped)."""
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")
    }


def check_gfdm_folder(path: str | Path) -> None:
    """Fail early, naming what is missing, when a local GFDM folder is not a diffusers SVD layout."""
    path = Path(path)
    if not path.exists():
        return  # a Hub id: diffusers resolves and reports it
    missing = [f"{sub}/config.json" for sub in GFDM_SUBFOLDERS if not (path / sub / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"GFDM folder {path} is not a Stable Video Diffusion (diffusers) folder: missing {missing}. "
            "Expected the layout written by `save_pretrained` of an SVD pipeline or by lerobot-defi-train-gfdm "
            "(subfolders unet/ and vae/, each with config.json and weights)."
        )


def text_context_from_clip(clip_hidden: Tensor, cross_attention_dim: int) -> Tensor:
    """Duplicate CLIP hidden states on channels to the UNet's cross-attention width:
    ``(B, L, Dc) -> (B, L, cross_attention_dim)`` (official: 512 -> 1024)."""
    repeats, remainder = divmod(cross_attention_dim, clip_hidden.shape[-1])
    if remainder or repeats < 1:
        raise ValueError(
            f"UNet cross_attention_dim {cross_attention_dim} is not a multiple of the CLIP text width "
            f"{clip_hidden.shape[-1]}"
        )
    return clip_hidden.repeat(1, 1, repeats)


class GFDMFeatureExtractor(nn.Module):
    """Frozen truncated SVD UNet + VAE encoder.

    ``forward(images (N, 3, H, W) in [-1, 1], text_context (N, L, cross_attention_dim))`` ->
    features ``(N, num_frames, feature_dim, h, w)`` in float32.
    """

    def __init__(
        self,
        unet: UNetSpatioTemporalConditionModel,
        vae: AutoencoderKLTemporalDecoder,
        *,
        num_frames: int = 16,
        feature_up_blocks: tuple[int, ...] = (0, 1),
        feature_sigma: float = 700.0,
        added_time_ids: tuple[float, float, float] = (4.0, 127.0, 0.0),
    ):
        super().__init__()
        if not feature_up_blocks or sorted(set(feature_up_blocks)) != list(feature_up_blocks):
            raise ValueError(f"feature_up_blocks must be increasing block indices, got {feature_up_blocks}")
        if feature_up_blocks[-1] >= len(unet.up_blocks):
            raise ValueError(
                f"feature_up_blocks {feature_up_blocks} asks for up-block {feature_up_blocks[-1]} but the UNet has "
                f"{len(unet.up_blocks)}"
            )
        self.num_frames = num_frames
        self.feature_up_blocks = tuple(feature_up_blocks)
        self.feature_sigma = feature_sigma
        self.register_buffer(
            "added_time_ids", torch.tensor(added_time_ids, dtype=torch.float32), persistent=False
        )
        # Keep only what the taps need.
        last = feature_up_blocks[-1]
        unet.up_blocks = unet.up_blocks[: last + 1]
        del unet.conv_norm_out, unet.conv_act, unet.conv_out
        del vae.decoder
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        channels = list(reversed(unet.config.block_out_channels))
        self.feature_dim = sum(channels[i] for i in self.feature_up_blocks)
        self.cross_attention_dim = unet.config.cross_attention_dim

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float16, **kwargs
    ) -> "GFDMFeatureExtractor":
        """Load a GFDM (or plain SVD image-to-video) diffusers folder or Hub repo with ``unet/`` and ``vae/``."""
        check_gfdm_folder(path)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(
            str(path), subfolder="unet", torch_dtype=dtype
        )
        vae = AutoencoderKLTemporalDecoder.from_pretrained(str(path), subfolder="vae", torch_dtype=dtype)
        return cls(unet, vae, **kwargs)

    @classmethod
    def from_configs(
        cls,
        unet_config: dict,
        vae_config: dict,
        dtype: torch.dtype = torch.float32,
        latent_std: float | None = None,
        image_size: int | None = None,
        **kwargs,
    ) -> "GFDMFeatureExtractor":
        """Random-weight GFDM from architecture dicts (tiny test models, or a skeleton to load weights into).

        ``latent_std``: scale the random VAE so that latents of ``image_size`` images have this spread
        (``models/latent_spread.py``; SVD's is ``1 / scaling_factor``); None keeps diffusers' initialisation."""
        unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
        vae = AutoencoderKLTemporalDecoder.from_config(vae_config)
        if latent_std is not None:
            match_latent_spread(vae, latent_std, image_size=image_size)
        # nn.Module.to: diffusers' own .to() warns about dtype casts meant for from_pretrained.
        return cls(nn.Module.to(unet, dtype), nn.Module.to(vae, dtype), **kwargs)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def latent_downsample(self) -> int:
        """Image pixels per latent pixel (8 for SVD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def feature_grid(self, image_size: int) -> int:
        """Side of the feature grid for square images of ``image_size`` pixels (16 for 256)."""
        latent = image_size // self.latent_downsample
        num_up = len(self.unet.down_blocks) - 1  # down-blocks with a downsampler
        last = self.feature_up_blocks[-1]
        return latent // 2 ** (num_up - (last + 1)) if last + 1 <= num_up else latent

    @torch.no_grad()
    def encode_condition(self, images: Tensor) -> Tensor:
        """VAE posterior mode, unscaled: ``(N, 3, H, W) -> (N, 4, H/8, W/8)``."""
        return self.vae.encode(images.to(self.dtype)).latent_dist.mode()

    @torch.no_grad()
    def forward(
        self,
        images: Tensor,
        text_context: Tensor,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``noise`` (N, F, 4, h, w): the unit-variance noise half of the UNet input; drawn (with ``generator``)
        when not given."""
        with torch.autocast(images.device.type, enabled=False):
            condition = self.encode_condition(images)  # (N, 4, h, w)
            n, c, h, w = condition.shape
            if noise is None:
                noise = torch.randn(
                    (n, self.num_frames, c, h, w),
                    generator=generator,
                    device=images.device,
                    dtype=torch.float32,
                )
            noise = noise.to(self.dtype)
            sample = torch.cat([noise, condition[:, None].expand(-1, self.num_frames, -1, -1, -1)], dim=2)
            timestep = torch.full((n,), math.log(self.feature_sigma) / 4.0, device=images.device)
            taps = self._truncated_unet(sample, timestep, text_context.to(self.dtype))
        size = taps[-1].shape[-2:]
        features = torch.cat(
            [F.interpolate(t, size=size, mode="nearest") for t in taps[:-1]] + [taps[-1]], dim=1
        )
        # fp16/bf16 features are returned in fp32; a float64 extractor (parity tests) stays float64.
        features = features.to(torch.promote_types(features.dtype, torch.float32))
        return features.reshape(n, self.num_frames, *features.shape[1:])

    def _truncated_unet(self, sample: Tensor, timestep: Tensor, context: Tensor) -> list[Tensor]:
        """The UNet's own blocks, run in its forward order up to the last tapped up-block.

        ``sample (N, F, 8, h, w)``, ``timestep (N,)`` = c_noise, ``context (N, L, D)``; returns the tapped
        up-block outputs ``[(N*F, C_i, h_i, w_i)]``.
        """
        unet = self.unet
        n, f = sample.shape[:2]
        emb = unet.time_embedding(unet.time_proj(timestep).to(sample.dtype))
        time_ids = self.added_time_ids.expand(n, -1)
        emb = emb + unet.add_embedding(unet.add_time_proj(time_ids.flatten()).reshape(n, -1).to(emb.dtype))
        emb = emb.repeat_interleave(f, dim=0)
        context = context.repeat_interleave(f, dim=0)
        indicator = torch.zeros(n, f, dtype=sample.dtype, device=sample.device)
        x = unet.conv_in(sample.flatten(0, 1))
        skips = (x,)
        for block in unet.down_blocks:
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            x, block_skips = block(hidden_states=x, temb=emb, image_only_indicator=indicator, **extra)
            skips += block_skips
        x = unet.mid_block(
            hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
        )
        taps = []
        for index, block in enumerate(unet.up_blocks):
            block_skips, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            x = block(
                hidden_states=x,
                temb=emb,
                res_hidden_states_tuple=block_skips,
                image_only_indicator=indicator,
                **extra,
            )
            if index in self.feature_up_blocks:
                taps.append(x)
        return taps
