"""Video Former: a perceiver resampler that compresses GFDM features of all predicted frames and cameras
into a fixed set of tokens (docs/method.md §4.3d).

Per frame, learned queries cross-attend to that frame's feature tokens (all cameras concatenated); the
queries of the same slot then attend to each other across frames; an MLP follows. Output tokens are
frame-major: ``(B, num_frames * queries_per_frame, dim)``.

Official quirk kept as a flag: the temporal attention has no pre-norm (``temporal_prenorm=False``).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class VideoFormerConfig:
    dim: int = 384
    depth: int = 6
    num_heads: int = 8
    head_dim: int = 64
    queries_per_frame: int = 14
    mlp_ratio: int = 4
    # Hidden width of the input MLP that maps GFDM features (2560 channels) to `dim`.
    input_hidden_dim: int = 768
    # Official quirk: no LayerNorm before the temporal attention (docs/method.md §8.11).
    temporal_prenorm: bool = False
    # Standard deviation of the learned queries and frame embedding at initialisation. The original draws both
    # from N(0, 1), which swamps the projected features: at init the output hardly depends on the image (relative
    # change ~0.002) and a policy trained from scratch learns to ignore it; 0.02 lets the features through
    # (docs/training.md#s4). Irrelevant when weights are loaded.
    init_std: float = 0.02


class PerceiverAttention(nn.Module):
    """Queries from the latents; keys/values from ``[media, latents]``; projections without bias."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: Tensor, latents: Tensor) -> Tensor:
        """``media (N, M, D)``, ``latents (N, Q, D)`` -> ``(N, Q, D)``."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        keys_values_in = torch.cat([media, latents], dim=1)
        h = self.num_heads
        q = rearrange(self.to_q(latents), "n q (h d) -> n h q d", h=h)
        k = rearrange(self.to_k(keys_values_in), "n m (h d) -> n h m d", h=h)
        v = rearrange(self.to_v(keys_values_in), "n m (h d) -> n h m d", h=h)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "n h q d -> n q (h d)"))


class TemporalAttention(nn.Module):
    """Bidirectional self-attention across frames; fused qkv projection with bias, output with bias."""

    def __init__(self, dim: int, num_heads: int, prenorm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x (N, F, D)`` -> ``(N, F, D)``."""
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "n f (three h d) -> three n h f d", three=3, h=self.num_heads
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "n h f d -> n f (h d)"))


class VideoFormerLayer(nn.Module):
    def __init__(self, cfg: VideoFormerConfig):
        super().__init__()
        self.perceiver = PerceiverAttention(cfg.dim, cfg.num_heads, cfg.head_dim)
        self.temporal = TemporalAttention(cfg.dim, cfg.num_heads, cfg.temporal_prenorm)
        self.mlp = nn.Sequential(
            nn.LayerNorm(cfg.dim),
            nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim, bias=False),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim, bias=False),
        )


class VideoFormer(nn.Module):
    """``features (B, F, N, C)`` (F frames, N tokens of all cameras, C GFDM channels) ->
    ``(B, F * queries_per_frame, dim)``."""

    def __init__(self, cfg: VideoFormerConfig, feature_dim: int, num_frames: int):
        super().__init__()
        self.cfg = cfg
        self.num_frames = num_frames
        self.input_mlp = nn.Sequential(
            nn.Linear(feature_dim, cfg.input_hidden_dim), nn.GELU(), nn.Linear(cfg.input_hidden_dim, cfg.dim)
        )
        self.frame_embedding = nn.Parameter(torch.randn(num_frames, 1, cfg.dim) * cfg.init_std)
        self.queries = nn.Parameter(torch.randn(num_frames, cfg.queries_per_frame, cfg.dim) * cfg.init_std)
        self.layers = nn.ModuleList(VideoFormerLayer(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, features: Tensor) -> Tensor:
        b, f = features.shape[:2]
        if f != self.num_frames:
            raise ValueError(
                f"VideoFormer was built for {self.num_frames} frames, got features {tuple(features.shape)}"
            )
        media = self.input_mlp(features) + self.frame_embedding  # (B, F, N, D)
        media = rearrange(media, "b f n d -> (b f) n d")
        x = self.queries.expand(b, -1, -1, -1).reshape(b * f, self.cfg.queries_per_frame, self.cfg.dim)
        for layer in self.layers:
            x = x + layer.perceiver(media, x)
            x = rearrange(x, "(b f) q d -> (b q) f d", b=b)
            x = x + layer.temporal(x)
            x = rearrange(x, "(b q) f d -> (b f) q d", b=b)
            x = x + layer.mlp(x)
        return self.norm(rearrange(x, "(b f) q d -> b (f q) d", b=b))
