"""Multi-head attention with separate q/k/v projections, shared by the action head and the GIDM."""

import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """``x (B, N, D)`` attends to ``context (B, M, D)`` (itself when ``None``).

    ``mask``: bool, broadcastable to ``(B, heads, N, M)``, ``True`` = may attend. Bias of the q/k/v and output
    projections is configurable because the two official networks differ there.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool,
        out_bias: bool,
        attention_dropout: float = 0.0,
        residual_dropout: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim, bias=out_bias)
        self.attention_dropout = attention_dropout
        self.residual_dropout = nn.Dropout(residual_dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        h = self.num_heads
        q = self.query(x).view(b, n, h, d // h).transpose(1, 2)
        k = self.key(context).view(b, -1, h, d // h).transpose(1, 2)
        v = self.value(context).view(b, -1, h, d // h).transpose(1, 2)
        dropout = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.residual_dropout(self.out(y.transpose(1, 2).reshape(b, n, d)))
