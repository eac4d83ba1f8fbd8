"""GIDM: the latent inverse-dynamics model (a VQ latent-action model, docs/method.md §3).

Given visual tokens of two frames (t, t+gap) and an instruction, a spatio-temporal transformer encoder
produces ``num_latent_tokens`` vectors that are quantised against a small codebook: the "latent action".
During pretraining a spatial decoder reconstructs the second frame's features from the first frame's
features plus the latent action. The DeFI policy reuses only the encoder side
(:class:`LatentActionEncoder`), fed with GFDM features instead of DINOv2 features.

Shapes: ``frames (B, 2, N, D)`` visual tokens (N = patches per frame, D = ``model_dim``),
``text (B, L, text_dim)`` with ``text_mask (B, L)`` (1 = real token).
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from lerobot_defi.models.attention import MultiHeadAttention


@dataclass
class GIDMConfig:
    """Architecture of the latent action model (official values, docs/method.md §3.1)."""

    model_dim: int = 768
    num_heads: int = 12
    encoder_blocks: int = 12
    decoder_blocks: int = 12
    mlp_ratio: int = 4
    # Vector quantiser: `codebook_size` codes of `latent_dim`, `num_latent_tokens` tokens per latent action.
    latent_dim: int = 128
    codebook_size: int = 16
    num_latent_tokens: int = 4
    commitment_weight: float = 0.25
    # Visual tokens per frame (16x16 grid for DINOv2-B/14 at 224 px and for GFDM features at 256 px).
    num_patches: int = 256
    # Hidden size of the instruction encoder (T5-base: 768).
    text_dim: int = 768
    dropout: float = 0.0
    # Official bug (docs/method.md §8.10): the instruction padding mask is tiled in (frame, sample) order while
    # the attention rows are (sample, frame); True reproduces it, False applies each sample's own mask.
    tiled_padding_mask: bool = True


def sinusoidal_position_code(num_positions: int, dim: int) -> Tensor:
    """Fixed position code ``(num_positions, dim)``: interleaved sin (even channels) / cos (odd), base 1e4."""
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    code = torch.zeros(num_positions, dim)
    code[:, 0::2] = torch.sin(position * frequency)
    code[:, 1::2] = torch.cos(position * frequency)
    return code


def _attention(cfg: GIDMConfig) -> MultiHeadAttention:
    """q/k/v without bias, output projection with bias (official layout)."""
    return MultiHeadAttention(
        cfg.model_dim, cfg.num_heads, qkv_bias=False, out_bias=True, residual_dropout=cfg.dropout
    )


def _mlp(cfg: GIDMConfig) -> nn.Sequential:
    hidden = cfg.mlp_ratio * cfg.model_dim
    return nn.Sequential(
        nn.Linear(cfg.model_dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.model_dim)
    )


def _input_projection(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))


class SpatioTemporalBlock(nn.Module):
    """Pre-norm block: spatial attention within a frame (with key-padding mask), causal temporal attention
    across frames at each token slot, MLP."""

    def __init__(self, cfg: GIDMConfig):
        super().__init__()
        self.norm_spatial = nn.LayerNorm(cfg.model_dim)
        self.spatial_attention = _attention(cfg)
        self.norm_temporal = nn.LayerNorm(cfg.model_dim)
        self.temporal_attention = _attention(cfg)
        self.norm_mlp = nn.LayerNorm(cfg.model_dim)
        self.mlp = _mlp(cfg)

    def forward(self, x: Tensor, spatial_mask: Tensor | None) -> Tensor:
        """``x (B, T, S, D)``; ``spatial_mask`` bool ``(B*T, 1, 1, S)``."""
        b, t, s, d = x.shape
        h = x.reshape(b * t, s, d)
        h = h + self.spatial_attention(self.norm_spatial(h), mask=spatial_mask)
        h = h.reshape(b, t, s, d).transpose(1, 2).reshape(b * s, t, d)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        h = h + self.temporal_attention(self.norm_temporal(h), mask=causal)
        h = h + self.mlp(self.norm_mlp(h))
        return h.reshape(b, s, t, d).transpose(1, 2)


class SpatialBlock(nn.Module):
    """Pre-norm block with spatial attention only (the decoder)."""

    def __init__(self, cfg: GIDMConfig):
        super().__init__()
        self.norm_spatial = nn.LayerNorm(cfg.model_dim)
        self.spatial_attention = _attention(cfg)
        self.norm_mlp = nn.LayerNorm(cfg.model_dim)
        self.mlp = _mlp(cfg)

    def forward(self, x: Tensor, spatial_mask: Tensor | None) -> Tensor:
        """``x (B, S, D)``; ``spatial_mask`` bool ``(B, 1, 1, S)``."""
        x = x + self.spatial_attention(self.norm_spatial(x), mask=spatial_mask)
        return x + self.mlp(self.norm_mlp(x))


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser with a straight-through gradient.

    ``z (B, K, latent_dim)`` -> ``z_q`` (same shape), ``indices (B, K)``, ``code_loss`` = mse(sg(z), e),
    ``commitment_loss`` = mse(z, sg(e)): scalars over the batch, or with ``reduction="none"`` ``(B,)``, each
    sample's mean over its own ``K x latent_dim`` values (their mean is the scalar).
    """

    def __init__(self, codebook_size: int, latent_dim: int):
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, latent_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def forward(self, z: Tensor, reduction: str = "mean") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        codebook = self.codebook.weight
        flat = z.reshape(-1, z.shape[-1])
        distances = (
            flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(-1)[None, :]
        )
        indices = distances.argmin(-1)
        quantized = self.codebook(indices).view_as(z)
        if reduction == "none":
            code_loss = F.mse_loss(quantized, z.detach(), reduction="none").flatten(1).mean(1)
            commitment_loss = F.mse_loss(z, quantized.detach(), reduction="none").flatten(1).mean(1)
        else:
            code_loss = F.mse_loss(quantized, z.detach())
            commitment_loss = F.mse_loss(z, quantized.detach())
        quantized = z + (quantized - z).detach()
        return quantized, indices.view(z.shape[:-1]), code_loss, commitment_loss

    @torch.no_grad()
    def reset_dead_codes(self, counts: Tensor, generator: torch.Generator | None = None) -> int:
        """Overwrite every code with ``counts == 0`` by a copy of a randomly chosen used code. ``counts``
        ``(codebook_size,)``: how often each code was chosen since the last reset (counted by the caller, over all
        processes when distributed: ``models/codebook_stats.py``). Returns how many codes were reset."""
        counts = counts.to(self.codebook.weight.device)
        dead = (counts == 0).nonzero().flatten()
        alive = (counts > 0).nonzero().flatten()
        if len(dead) and len(alive):
            pick = torch.randint(len(alive), (len(dead),), generator=generator, device="cpu").to(alive.device)
            self.codebook.weight[dead] = self.codebook.weight[alive[pick]]
        return len(dead) if len(alive) else 0

    @torch.no_grad()
    def restart_dead_codes(
        self, counts: Tensor, latents: Tensor, generator: torch.Generator | None = None
    ) -> int:
        """Re-initialise every code with ``counts == 0`` to a randomly chosen row of ``latents`` (recent encoder
        outputs ``(N, latent_dim)``, before quantisation), so it lands where the encoder's outputs are and gets
        chosen again. A copy of a used code (:meth:`reset_dead_codes`) cannot do that when the encoder's outputs
        sit near one code per token slot, as they do in a GIDM trained from scratch. Returns how many codes were
        restarted."""
        dead = (counts.to(self.codebook.weight.device) == 0).nonzero().flatten()
        if len(dead) == 0 or len(latents) == 0:
            return 0
        pick = torch.randint(len(latents), (len(dead),), generator=generator, device="cpu").to(latents.device)
        self.codebook.weight[dead] = latents[pick].to(self.codebook.weight.dtype)
        return len(dead)


def padding_mask_rows(text_mask: Tensor, num_visual: int, num_frames: int, tiled: bool) -> Tensor:
    """Key-padding mask for the rows ``(sample, frame)`` of the spatial attention: ``(B*T, 1, 1, S)`` bool.

    ``tiled=True`` reproduces the official ordering bug (row ``r`` gets sample ``r % B``'s mask instead of
    ``r // T``'s); identical to the correct mask when B == 1 or all instructions have the same length.
    """
    b = text_mask.shape[0]
    visual = torch.ones(b, num_visual, dtype=torch.bool, device=text_mask.device)
    keys = torch.cat([visual, text_mask.bool()], dim=1)  # (B, S)
    rows = keys.repeat(num_frames, 1) if tiled else keys.repeat_interleave(num_frames, dim=0)
    return rows[:, None, None, :]


class LatentActionEncoder(nn.Module):
    """Encoder side of the GIDM: ``(frames (B, 2, N, D), text) -> latent-action tokens (B, K, D)``.

    This is the part the DeFI policy fine-tunes: action queries, input projection, spatio-temporal blocks,
    instruction projection, quantiser and the ``action_up`` projection of the quantised codes.
    """

    def __init__(self, cfg: GIDMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        self.action_queries = nn.Parameter(torch.empty(1, 1, cfg.num_latent_tokens, d).uniform_(-1, 1))
        self.input_projection = _input_projection(d)
        self.blocks = nn.ModuleList(SpatioTemporalBlock(cfg) for _ in range(cfg.encoder_blocks))
        self.text_projection = nn.Linear(cfg.text_dim, d)
        self.to_codebook = nn.Linear(d, cfg.latent_dim)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.latent_dim)
        self.action_up = nn.Linear(cfg.latent_dim, d)
        self.register_buffer(
            "position_code",
            sinusoidal_position_code(cfg.num_latent_tokens + cfg.num_patches, d),
            persistent=False,
        )

    def forward(
        self, frames: Tensor, text: Tensor, text_mask: Tensor, loss_reduction: str = "mean"
    ) -> dict[str, Tensor]:
        """Returns ``latent_action_tokens (B, K, D)``, ``latents (B, K, latent_dim)`` (before quantisation),
        ``quantized (B, K, latent_dim)``, ``indices (B, K)``, ``code_loss``, ``commitment_loss`` (scalars, or
        ``(B,)`` with ``loss_reduction="none"``; see :class:`VectorQuantizer`) and ``text_tokens (B, L, D)``
        (reused by the decoder)."""
        b, t, n, d = frames.shape
        if n != self.cfg.num_patches or d != self.cfg.model_dim:
            raise ValueError(
                f"GIDM encoder expects frames (B, T, {self.cfg.num_patches}, {self.cfg.model_dim}), "
                f"got {tuple(frames.shape)}"
            )
        queries = self.action_queries.expand(b, t, -1, -1).to(frames.dtype)
        x = self.input_projection(torch.cat([queries, frames], dim=2)) + self.position_code
        text_tokens = self.text_projection(text)
        x = torch.cat([x, text_tokens[:, None].expand(-1, t, -1, -1)], dim=2)
        mask = padding_mask_rows(text_mask, x.shape[2] - text.shape[1], t, self.cfg.tiled_padding_mask)
        for block in self.blocks:
            x = block(x, mask)
        # The last frame's query slots have seen every earlier frame through the causal temporal attention.
        z = self.to_codebook(x[:, -1, : self.cfg.num_latent_tokens])
        quantized, indices, code_loss, commitment_loss = self.quantizer(z, reduction=loss_reduction)
        return {
            "latent_action_tokens": self.action_up(quantized),
            "latents": z,
            "quantized": quantized,
            "indices": indices,
            "code_loss": code_loss,
            "commitment_loss": commitment_loss,
            "text_tokens": text_tokens,
        }


class LatentActionDecoder(nn.Module):
    """Pretraining-only decoder: first-frame features + latent-action tokens + instruction -> predicted
    features of the second frame ``(B, N, D)``."""

    def __init__(self, cfg: GIDMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        self.patch_up = nn.Linear(d, d)
        self.input_projection = _input_projection(d)
        self.blocks = nn.ModuleList(SpatialBlock(cfg) for _ in range(cfg.decoder_blocks))
        self.output_projection = nn.Linear(d, d)
        self.register_buffer(
            "position_code",
            sinusoidal_position_code(cfg.num_latent_tokens + cfg.num_patches, d),
            persistent=False,
        )

    def forward(
        self, first_frame: Tensor, latent_action_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor
    ) -> Tensor:
        k = self.cfg.num_latent_tokens
        x = torch.cat([latent_action_tokens, self.patch_up(first_frame)], dim=1)
        x = self.input_projection(x) + self.position_code
        x = torch.cat([x, text_tokens], dim=1)
        mask = padding_mask_rows(text_mask, k + first_frame.shape[1], 1, tiled=False)
        for block in self.blocks:
            x = block(x, mask)
        return self.output_projection(x[:, k : k + first_frame.shape[1]])


class LatentActionModel(nn.Module, PyTorchModelHubMixin, library_name="lerobot_defi", tags=["defi", "gidm"]):
    """The whole GIDM (encoder + decoder) as trained in pretraining; saved/loaded as config + safetensors.

    ``forward(frames (B, 2, N, D), text, text_mask)`` returns the encoder outputs plus
    ``reconstruction (B, N, D)`` and the losses ``reconstruction_loss``, ``loss``
    (``rec + code + commitment_weight * commit``).
    """

    def __init__(self, config: GIDMConfig | dict | None = None):
        super().__init__()
        if isinstance(config, dict):
            config = GIDMConfig(**config)
        self.config = config or GIDMConfig()
        self.encoder = LatentActionEncoder(self.config)
        self.decoder = LatentActionDecoder(self.config)

    def forward(self, frames: Tensor, text: Tensor, text_mask: Tensor) -> dict[str, Tensor]:
        out = self.encoder(frames, text, text_mask)
        reconstruction = self.decoder(
            frames[:, 0], out["latent_action_tokens"], out["text_tokens"], text_mask
        )
        reconstruction_loss = F.mse_loss(reconstruction, frames[:, -1])
        out["reconstruction"] = reconstruction
        out["reconstruction_loss"] = reconstruction_loss
        out["loss"] = (
            reconstruction_loss + out["code_loss"] + self.config.commitment_weight * out["commitment_loss"]
        )
        return out

    def config_dict(self) -> dict:
        return asdict(self.config)
