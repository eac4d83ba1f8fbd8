"""The GFDM as a video model (Stage 1, docs/method.md §2.5–§2.8): the training objective, the sampler, VAE
helpers and the diffusers pipeline that composes them. The policy never samples videos; its one-step feature
extractor is ``models/gfdm.py``.

Latent videos are ``(B, F, C, h, w)``; "scaled" latents are VAE latents times ``vae.config.scaling_factor``
(0.18215 for SVD), as stored in VPP's ``.pt`` files.
"""

import torch
from diffusers import AutoencoderKLTemporalDecoder, DiffusionPipeline, UNetSpatioTemporalConditionModel
from torch import Tensor

from lerobot_defi.models.edm import v_prediction_scalings
from lerobot_defi.models.gfdm import text_context_from_clip
from lerobot_defi.models.text import encode_clip_context

# SVD image-to-video's scheduler (docs/method.md §2.1), for folders that do not ship one (tiny test models).
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


def gfdm_v_objective_loss(
    unet: UNetSpatioTemporalConditionModel,
    clean_latents: Tensor,
    condition: Tensor,
    text_context: Tensor,
    added_time_ids: Tensor,
    sigmas: Tensor,
    noise: Tensor | None = None,
) -> Tensor:
    """Per-video EDM loss of SVD's v-parameterisation (``sigma_data = 1``), docs/method.md §2.5.

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
    """Classifier-free guidance ramped linearly over frames: ``(1, F, 1, 1, 1)`` from min to max (docs/method.md §2.7)."""
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
    """Predict a latent video from a first-frame latent and an instruction (docs/method.md §2.7, §2.8).

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
    Defaults follow the official evaluation (docs/method.md §2.8): 30 Euler steps, guidance ramp 1.0 -> 3.0, fps id 4.
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
