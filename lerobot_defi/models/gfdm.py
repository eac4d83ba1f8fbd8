"""GFDM feature extractor: one UNet pass of the language-conditioned Stable Video Diffusion model, with
features tapped inside the UNet decoder (spec 4.3 b, the VPP trick).

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
from diffusers import AutoencoderKLTemporalDecoder, DiffusionPipeline, UNetSpatioTemporalConditionModel
from torch import Tensor, nn

from lerobot_defi.models.edm import v_prediction_scalings
from lerobot_defi.models.text import encode_clip_context

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
        for name in ("conv_norm_out", "conv_act", "conv_out"):
            if hasattr(unet, name):
                delattr(unet, name)
        if hasattr(vae, "decoder"):
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
        cls, unet_config: dict, vae_config: dict, dtype: torch.dtype = torch.float32, **kwargs
    ) -> "GFDMFeatureExtractor":
        """Random-weight GFDM from architecture dicts (tiny test models, or a skeleton to load weights into)."""
        # nn.Module.to: diffusers' own .to() warns about dtype casts meant for from_pretrained.
        unet = nn.Module.to(UNetSpatioTemporalConditionModel.from_config(unet_config), dtype)
        vae = nn.Module.to(AutoencoderKLTemporalDecoder.from_config(vae_config), dtype)
        return cls(unet, vae, **kwargs)

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


# ----------------------------------------------------------------------------------------------------------------
# Stage-1 training and sampling (spec 2.5-2.8). Latent videos are ``(B, F, C, h, w)``; "scaled" latents are VAE
# latents times ``vae.config.scaling_factor`` (0.18215 for SVD), as stored in VPP's ``.pt`` files.
# ----------------------------------------------------------------------------------------------------------------

# SVD image-to-video's scheduler (spec 2.1), for folders that do not ship one (tiny test models).
SVD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "interpolation_type": "linear",
    "use_karras_sigmas": True,
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "steps_offset": 1,
}


def check_svd_init_folder(path: str | Path) -> None:
    """Fail early when a local folder to initialise the GFDM from lacks the UNet or VAE (config + weights).

    A Hub id (no such local path) is left to diffusers. Weights may be fp32 or the ``fp16`` variant.
    """
    path = Path(path)
    if not path.exists():
        return
    missing = []
    for sub in GFDM_SUBFOLDERS:
        folder = path / sub
        if not (folder / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        has_weights = any(
            any(folder.glob(pattern))
            for pattern in ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")
        )
        if not has_weights:
            missing.append(f"{sub}/diffusion_pytorch_model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{path} cannot initialise a GFDM: missing {missing}. Expected a Stable Video Diffusion image-to-video "
            "folder in the diffusers layout (e.g. a download of stabilityai/stable-video-diffusion-img2vid, or a "
            "folder written by lerobot-defi-train-gfdm): unet/ and vae/, each with config.json and "
            "diffusion_pytorch_model(.fp16).safetensors"
        )


def gfdm_v_objective_loss(
    unet: UNetSpatioTemporalConditionModel,
    clean_latents: Tensor,
    condition: Tensor,
    text_context: Tensor,
    added_time_ids: Tensor,
    sigmas: Tensor,
    noise: Tensor | None = None,
) -> Tensor:
    """Per-video EDM loss of SVD's v-parameterisation (``sigma_data = 1``), spec 2.5.

    ``clean_latents (B, F, C, h, w)`` scaled; ``condition (B, C, h, w)`` unscaled first-frame latent (repeated
    over frames, concatenated on channels); ``text_context (B, L, D)``; ``added_time_ids (B, 3)``;
    ``sigmas (B,)``; ``noise`` like ``clean_latents`` (drawn when None). Every frame is noised, frame 0 too.
    Returns ``(B,)``: ``mean(lambda(sigma) * (D - x0)^2)`` per video with ``lambda = (sigma^2 + 1) / sigma^2``.
    """
    if noise is None:
        noise = torch.randn_like(clean_latents)
    s = sigmas.to(clean_latents.dtype).reshape(-1, 1, 1, 1, 1)
    noisy = clean_latents + s * noise
    c_skip, c_out, c_in, c_noise = v_prediction_scalings(s)
    num_frames = clean_latents.shape[1]
    model_input = torch.cat([c_in * noisy, condition[:, None].expand(-1, num_frames, -1, -1, -1)], dim=2)
    output = unet(
        model_input,
        c_noise.reshape(-1),
        encoder_hidden_states=text_context,
        added_time_ids=added_time_ids,
    ).sample.float()
    denoised = c_skip * noisy + c_out * output
    weight = (s**2 + 1) / s**2
    return (weight * (denoised - clean_latents) ** 2).flatten(1).mean(dim=1)


def frame_guidance_scales(num_frames: int, guidance_min: float, guidance_max: float, device=None) -> Tensor:
    """Classifier-free guidance ramped linearly over frames: ``(1, F, 1, 1, 1)`` from min to max (spec 2.7)."""
    return torch.linspace(guidance_min, guidance_max, num_frames, device=device).reshape(1, -1, 1, 1, 1)


@torch.no_grad()
def sample_gfdm_video(
    unet: UNetSpatioTemporalConditionModel,
    scheduler,
    condition: Tensor,
    text_context: Tensor,
    *,
    num_frames: int,
    num_steps: int = 30,
    guidance_min: float = 1.0,
    guidance_max: float = 7.5,
    added_time_ids: tuple[float, float, float] = (7.0, 127.0, 0.0),
    uncond_zero_image: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Predict a latent video from a first-frame latent and an instruction (spec 2.7/2.8).

    ``scheduler``: an ``EulerDiscreteScheduler`` with SVD's config (v-prediction, continuous timesteps,
    Karras sigmas). ``condition (B, C, h, w)`` unscaled; ``text_context (B, L, D)``. The unconditional branch
    has a zero text context and, when ``uncond_zero_image`` (official), a zero image latent too.
    Guidance ramps over frames from ``guidance_min`` to ``guidance_max``; 1.0 everywhere skips the second branch.
    Returns scaled latents ``(B, F, C, h, w)`` in float32.
    """
    b, c, h, w = condition.shape
    dtype = unet.dtype
    device = condition.device
    scheduler.set_timesteps(num_steps, device=device)
    latents = torch.randn((b, num_frames, c, h, w), generator=generator, device=device, dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma
    guided = not (guidance_min == guidance_max == 1.0)
    image = condition[:, None].expand(-1, num_frames, -1, -1, -1)
    context = text_context
    ids = torch.tensor([added_time_ids], device=device, dtype=dtype).expand(b, -1)
    if guided:
        uncond_image = torch.zeros_like(image) if uncond_zero_image else image
        image = torch.cat([uncond_image, image])
        context = torch.cat([torch.zeros_like(text_context), text_context])
        ids = torch.cat([ids, ids])
    scales = frame_guidance_scales(num_frames, guidance_min, guidance_max, device)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        x = torch.cat([x, x]) if guided else x
        model_input = torch.cat([x, image], dim=2).to(dtype)
        timestep = t.reshape(1).expand(model_input.shape[0]).to(device)
        output = unet(
            model_input, timestep, encoder_hidden_states=context.to(dtype), added_time_ids=ids
        ).sample
        output = output.float()
        if guided:
            uncond, cond = output.chunk(2)
            output = uncond + scales * (cond - uncond)
        latents = scheduler.step(output, t, latents).prev_sample
    return latents


@torch.no_grad()
def encode_video_latents(
    vae: AutoencoderKLTemporalDecoder,
    frames: Tensor,
    *,
    sample_posterior: bool = True,
    chunk_size: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """VAE-encode frames ``(N, 3, H, W)`` in [-1, 1] -> scaled latents ``(N, C, H/8, W/8)`` float32.

    ``sample_posterior``: a posterior sample (official Stage-1 data) or the posterior mean."""
    out = []
    for chunk in frames.split(chunk_size):
        dist = vae.encode(chunk.to(vae.dtype)).latent_dist
        latent = dist.sample(generator) if sample_posterior else dist.mode()
        out.append(latent.float() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def decode_latent_video(vae: AutoencoderKLTemporalDecoder, latents: Tensor, chunk_size: int = 7) -> Tensor:
    """Scaled latents ``(B, F, C, h, w)`` -> frames ``(B, F, 3, H, W)`` in [-1, 1] (float32), decoding
    ``chunk_size`` frames of one video at a time with the temporal decoder (official: 7)."""
    videos = []
    for video in latents:
        frames = []
        for chunk in (video / vae.config.scaling_factor).split(chunk_size):
            frames.append(vae.decode(chunk.to(vae.dtype), num_frames=chunk.shape[0]).sample.float())
        videos.append(torch.cat(frames))
    return torch.stack(videos).clamp(-1, 1)


class GFDMVideoPipeline(DiffusionPipeline):
    """The GFDM as a diffusers pipeline (composition only): first image + instruction -> predicted video.

    ``GFDMVideoPipeline.from_pretrained(folder)`` loads a folder written by ``lerobot-defi-train-gfdm``;
    ``save_pretrained`` writes ``unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json``.
    Defaults follow the official evaluation (spec 2.8): 30 Euler steps, guidance ramp 1.0 -> 3.0, fps id 4.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, unet, vae, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )

    @torch.no_grad()
    def text_context(self, instructions: list[str], context_length: int = 20) -> Tensor:
        """``(B, context_length, cross_attention_dim)``: CLIP last hidden states (with the attention mask, as the
        original's Stage 1 trains and samples) duplicated on channels."""
        hidden = encode_clip_context(self.text_encoder, self.tokenizer, instructions, context_length)
        return text_context_from_clip(hidden, self.unet.config.cross_attention_dim)

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,
        instructions: list[str],
        *,
        num_frames: int = 16,
        num_inference_steps: int = 30,
        guidance_min: float = 1.0,
        guidance_max: float = 3.0,
        added_time_ids: tuple[float, float, float] = (4.0, 127.0, 0.02),
        uncond_zero_image: bool = True,
        context_length: int = 20,
        decode_chunk_size: int = 7,
        generator: torch.Generator | None = None,
        output_type: str = "frames",
    ) -> Tensor:
        """``images (B, 3, H, W)`` in [-1, 1] -> frames ``(B, F, 3, H, W)`` in [-1, 1] (or scaled latents
        ``(B, F, 4, H/8, W/8)`` with ``output_type="latent"``). The condition is the posterior mean of the image."""
        if len(instructions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(instructions)} instructions")
        condition = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        latents = sample_gfdm_video(
            self.unet,
            self.scheduler,
            condition.to(self.unet.device, self.unet.dtype),
            self.text_context(instructions, context_length).to(self.unet.device),
            num_frames=num_frames,
            num_steps=num_inference_steps,
            guidance_min=guidance_min,
            guidance_max=guidance_max,
            added_time_ids=added_time_ids,
            uncond_zero_image=uncond_zero_image,
            generator=generator,
        )
        if output_type == "latent":
            return latents
        return decode_latent_video(self.vae, latents.to(self.vae.device), decode_chunk_size)
