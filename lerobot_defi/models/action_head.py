"""DeFI action head: an EDM-preconditioned encoder-decoder transformer that denoises action chunks
(docs/method.md §4.3f, §4.3g, §5.1).

* The **context encoder** turns ``[goal token, video tokens, latent-action tokens]`` into a context
  sequence once per chunk (it does not depend on the noise level or the noisy actions).
* The **action decoder** reads noisy action tokens, conditions on the noise level through AdaLN and on the
  context through cross-attention.

Official quirks kept as flags (docs/method.md §8.2, §8.3): the decoder cross-attention is causal with an upper-left
aligned mask (``causal_cross_attention``), and AdaLN modulates as ``shift + x * scale`` without the usual
``1 +`` (``adaln_scale_plus_one=False``).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lerobot_defi.models.attention import MultiHeadAttention
from lerobot_defi.models.edm import (
    edm_scalings,
    edm_training_target,
    exponential_sigmas,
    sample_first_order,
    sample_log_logistic_sigmas,
)


@dataclass
class ActionHeadConfig:
    """Architecture and EDM settings of the action head (official CALVIN values)."""

    dim: int = 384
    num_heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    mlp_ratio: int = 4
    attention_dropout: float = 0.3
    residual_dropout: float = 0.1
    mlp_dropout: float = 0.05
    # Official quirk: action token i may only read context tokens 0..i (docs/method.md §8.2).
    causal_cross_attention: bool = True
    # Official quirk: AdaLN is `shift + x * scale`; True gives DiT's `shift + x * (1 + scale)` (docs/method.md §8.3).
    adaln_scale_plus_one: bool = False
    # Initial AdaLN scale and gate: the bias of their rows in the modulation Linear (the form `shift + x * scale`
    # is kept). The original initialises them to 0 (every Linear N(0, 0.02), zero bias), so a fresh decoder block
    # hardly sees its input through self-attention and MLP; 1 starts it as a plain pre-norm block and fits several
    # times faster from scratch (docs/training.md#s4). Irrelevant when weights are loaded.
    adaln_scale_init: float = 1.0
    adaln_gate_init: float = 1.0
    # EDM.
    sigma_data: float = 0.5
    sigma_min_train: float = 0.001
    sigma_max: float = 80.0
    sigma_density_loc: float = math.log(0.5)
    sigma_density_scale: float = 0.5
    # Sampler: first-order DPM-Solver on an exponential schedule; inference stops at 1.0 (docs/method.md §8.4).
    num_inference_steps: int = 10
    sigma_min_infer: float = 1.0


class LayerNormNoBias(nn.LayerNorm):
    """LayerNorm with a learned weight and no bias."""

    def __init__(self, dim: int):
        super().__init__(dim, bias=False)


class FeedForward(nn.Module):
    """``Linear -> GELU -> Linear -> Dropout`` without biases."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden_dim, bias=False)
        self.fc_out = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(F.gelu(self.fc_in(x))))


class ContextBlock(nn.Module):
    """Pre-norm bidirectional transformer block of the context encoder."""

    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.norm_attention = LayerNormNoBias(cfg.dim)
        self.attention = _attention(cfg)
        self.norm_mlp = LayerNormNoBias(cfg.dim)
        self.mlp = FeedForward(cfg.dim, cfg.mlp_ratio * cfg.dim, cfg.mlp_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.mlp(self.norm_mlp(x))


class DenoisingBlock(nn.Module):
    """Decoder block: AdaLN-modulated causal self-attention, cross-attention to the context, AdaLN MLP."""

    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.scale_offset = 1.0 if cfg.adaln_scale_plus_one else 0.0
        self.modulation = nn.Linear(cfg.dim, 6 * cfg.dim)
        self.norm_self_attention = LayerNormNoBias(cfg.dim)
        self.self_attention = _attention(cfg)
        self.norm_cross_attention = nn.LayerNorm(cfg.dim)
        self.cross_attention = _attention(cfg)
        self.norm_mlp = LayerNormNoBias(cfg.dim)
        self.mlp = FeedForward(cfg.dim, cfg.mlp_ratio * cfg.dim, cfg.mlp_dropout)

    @torch.no_grad()
    def init_modulation(self, scale: float, gate: float) -> None:
        """Set the bias of the modulation rows that produce the two AdaLN scales and the two gates."""
        _, scale_1, gate_1, _, scale_2, gate_2 = self.modulation.bias.chunk(6)
        for rows, value in ((scale_1, scale), (scale_2, scale), (gate_1, gate), (gate_2, gate)):
            rows.fill_(value)

    def forward(
        self,
        x: Tensor,
        sigma_embedding: Tensor,
        context: Tensor,
        self_mask: Tensor,
        cross_mask: Tensor | None,
    ) -> Tensor:
        """``x (B, T, D)``, ``sigma_embedding (B, 1, D)``, ``context (B, M, D)``."""
        shift_1, scale_1, gate_1, shift_2, scale_2, gate_2 = self.modulation(F.silu(sigma_embedding)).chunk(
            6, -1
        )
        h = shift_1 + (scale_1 + self.scale_offset) * self.norm_self_attention(x)
        x = x + gate_1 * self.self_attention(h, mask=self_mask)
        x = x + self.cross_attention(self.norm_cross_attention(x), context, mask=cross_mask)
        h = shift_2 + (scale_2 + self.scale_offset) * self.norm_mlp(x)
        return x + gate_2 * self.mlp(h)


class SigmaEmbedding(nn.Module):
    """``c_noise (B,)`` -> sinusoidal features (``dim/2`` sin then ``dim/2`` cos) -> MLP with Mish -> ``(B, 1, dim)``."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half) / (half - 1))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.fc_in = nn.Linear(dim, 2 * dim)
        self.fc_out = nn.Linear(2 * dim, dim)

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.float()[:, None] * self.frequencies[None]
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.fc_in.weight.dtype)
        return self.fc_out(F.mish(self.fc_in(features)))[:, None]


class ActionHead(nn.Module):
    """Context encoder + denoising decoder + EDM training loss and sampler.

    Inputs at the boundary: ``goal (B, 1, goal_dim)``, ``video_tokens (B, Nv, video_dim)``,
    ``latent_action_tokens (B, Nl, latent_dim)``, actions ``(B, chunk_size, action_dim)``.
    """

    def __init__(
        self,
        cfg: ActionHeadConfig,
        action_dim: int,
        chunk_size: int,
        goal_dim: int,
        video_dim: int,
        latent_action_dim: int,
        context_length: int,
        loss_noise_draws: int = 1,
    ):
        """``loss_noise_draws``: noise levels and noises drawn per chunk in :meth:`loss` (1 as the original; the
        policy sets ``DeFIConfig.loss_noise_draws``)."""
        super().__init__()
        if loss_noise_draws < 1:
            raise ValueError(f"loss_noise_draws must be >= 1, got {loss_noise_draws}")
        self.cfg = cfg
        self.loss_noise_draws = loss_noise_draws
        self.action_dim = action_dim
        self.chunk_size = chunk_size
        d = cfg.dim
        self.goal_proj = nn.Sequential(nn.Linear(goal_dim, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.video_proj = nn.Linear(video_dim, d)
        self.latent_action_proj = nn.Linear(latent_action_dim, d)
        self.context_blocks = nn.ModuleList(ContextBlock(cfg) for _ in range(cfg.encoder_layers))
        self.context_norm = LayerNormNoBias(d)
        self.sigma_embedding = SigmaEmbedding(d)
        self.action_in = nn.Linear(action_dim, d)
        self.denoising_blocks = nn.ModuleList(DenoisingBlock(cfg) for _ in range(cfg.decoder_layers))
        self.output_norm = LayerNormNoBias(d)
        self.action_out = nn.Linear(d, action_dim)
        self.register_buffer("self_attention_mask", causal_mask(chunk_size, chunk_size), persistent=False)
        cross = causal_mask(chunk_size, context_length) if cfg.causal_cross_attention else None
        self.register_buffer("cross_attention_mask", cross, persistent=False)
        self.apply(_init_weights)
        for block in self.denoising_blocks:
            block.init_modulation(cfg.adaln_scale_init, cfg.adaln_gate_init)

    def encode_context(self, goal: Tensor, video_tokens: Tensor, latent_action_tokens: Tensor) -> Tensor:
        """``[goal, video, latent-action]`` tokens -> context ``(B, 1 + Nv + Nl, dim)``; no position code."""
        x = torch.cat(
            [
                self.goal_proj(goal),
                self.video_proj(video_tokens),
                self.latent_action_proj(latent_action_tokens),
            ],
            dim=1,
        )
        for block in self.context_blocks:
            x = block(x)
        return self.context_norm(x)

    def denoiser_output(self, scaled_actions: Tensor, c_noise: Tensor, context: Tensor) -> Tensor:
        """Raw network ``F(c_in * x, c_noise; context)``: ``(B, T, action_dim)``."""
        x = self.action_in(scaled_actions)
        sigma_embedding = self.sigma_embedding(c_noise)
        for block in self.denoising_blocks:
            x = block(x, sigma_embedding, context, self.self_attention_mask, self.cross_attention_mask)
        return self.action_out(self.output_norm(x))

    def denoise(self, noisy_actions: Tensor, sigma: Tensor, context: Tensor) -> Tensor:
        """EDM denoised estimate ``D(x; sigma)``; ``sigma`` of shape ``(B,)``."""
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma[:, None, None], self.cfg.sigma_data)
        output = self.denoiser_output(c_in * noisy_actions, c_noise.reshape(-1), context)
        return c_skip * noisy_actions + c_out * output

    def loss(
        self,
        actions: Tensor,
        context: Tensor,
        action_is_pad: Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
        noise_draws: int | None = None,
    ) -> Tensor:
        """EDM loss on a clean chunk ``actions (B, T, A)``: ``mean((F(c_in x, s) - (a - c_skip x)/c_out)^2)``
        with ``s`` from the truncated log-logistic density; padded steps (``action_is_pad (B, T)``) are
        excluded from the mean. Each chunk is noised ``noise_draws`` times (default: the head's
        ``loss_noise_draws``; one noise level and noise per draw, the original draws once; the context is
        shared). ``reduction="mean"``: one scalar over every valid step of the batch and its draws; ``"none"``: ``(B,)``, each sample's mean over its own valid steps and draws (0
        for a sample with none)."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        draws = self.loss_noise_draws if noise_draws is None else noise_draws
        if draws < 1:
            raise ValueError(f"noise_draws must be >= 1, got {draws}")
        cfg = self.cfg
        if draws > 1:
            actions, context = actions.repeat_interleave(draws, 0), context.repeat_interleave(draws, 0)
            if action_is_pad is not None:
                action_is_pad = action_is_pad.repeat_interleave(draws, 0)
        sigma = sample_log_logistic_sigmas(
            actions.shape[0],
            cfg.sigma_density_loc,
            cfg.sigma_density_scale,
            cfg.sigma_min_train,
            cfg.sigma_max,
            device=actions.device,
            generator=generator,
        )
        noise = torch.randn(actions.shape, device=actions.device, generator=generator, dtype=actions.dtype)
        noisy = actions + sigma[:, None, None] * noise
        _, _, c_in, c_noise = edm_scalings(sigma[:, None, None], cfg.sigma_data)
        output = self.denoiser_output(c_in * noisy, c_noise.reshape(-1), context)
        target = edm_training_target(actions, noisy, sigma, cfg.sigma_data)
        error = (output.float() - target.float()) ** 2
        per_sample = (-1, draws * error[0].numel())  # a sample's draws side by side
        if action_is_pad is None:
            return error.mean() if reduction == "mean" else error.reshape(per_sample).mean(1)
        valid = (~action_is_pad).to(error.dtype)[..., None].expand_as(error)
        if reduction == "mean":
            return (error * valid).sum() / valid.sum().clamp_min(1.0)
        return (error * valid).reshape(per_sample).sum(1) / valid.reshape(per_sample).sum(1).clamp_min(1.0)

    def inference_sigmas(self, device=None) -> Tensor:
        """``[sigma_max, ..., sigma_min_infer, 0]`` (official: 80, 49.16, ..., 1.63, 1.0, 0)."""
        cfg = self.cfg
        return exponential_sigmas(cfg.num_inference_steps, cfg.sigma_min_infer, cfg.sigma_max, device=device)

    def sample(self, context: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample an action chunk ``(B, T, A)``; the context is computed once by the caller and reused at
        every solver step. ``noise``: optional standard normal ``(B, T, A)``."""
        sigmas = self.inference_sigmas(context.device)
        if noise is None:
            noise = torch.randn(context.shape[0], self.chunk_size, self.action_dim, device=context.device)
        x = noise.to(context.dtype) * sigmas[0]
        batch = context.shape[0]

        def denoiser(x_t: Tensor, sigma: Tensor) -> Tensor:
            return self.denoise(x_t, sigma.expand(batch), context)

        return sample_first_order(denoiser, x, sigmas)


def _attention(cfg: ActionHeadConfig) -> MultiHeadAttention:
    """q/k/v projections with bias, output projection without (official layout)."""
    return MultiHeadAttention(
        cfg.dim,
        cfg.num_heads,
        qkv_bias=True,
        out_bias=False,
        attention_dropout=cfg.attention_dropout,
        residual_dropout=cfg.residual_dropout,
    )


def causal_mask(num_queries: int, num_keys: int) -> Tensor:
    """Upper-left aligned lower-triangular mask ``(num_queries, num_keys)``: query i sees keys 0..i."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool).tril()


def _init_weights(module: nn.Module) -> None:
    """Official init: Linear ~ N(0, 0.02) with zero bias; LayerNorm weight 1, bias 0 (docs/method.md §4.6)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
