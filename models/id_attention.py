"""StableAnimator's distribution-aware ID adapter, as attention math.

For a spatial cross-attention with query ``q``, the image-token attention ``A = Attn(q, K_clip, V_clip)``
and the face attention ``A_i = Attn(q, W_k·face, W_v·face)`` are combined as
``A + s·((A_i − μ_i)·σ_a/(σ_i + 1e-5) + μ_a)``: the face branch is re-scaled to the mean and
(unbiased) standard deviation of the image branch, per sample (one frame), over all tokens and
channels after the heads are merged.
"""
from __future__ import annotations

import torch

EPS = 1e-5


def match_distribution(a: torch.Tensor, ai: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``ai`` shifted and scaled to ``a``'s per-sample mean and std; ``[B, N, C]`` in, statistics in fp32."""
    a32, ai32 = a.float(), ai.float()
    mu_a, sd_a = a32.mean(dim=(1, 2), keepdim=True), a32.std(dim=(1, 2), keepdim=True)
    mu_i, sd_i = ai32.mean(dim=(1, 2), keepdim=True), ai32.std(dim=(1, 2), keepdim=True)
    return ((ai32 - mu_i) * sd_a / (sd_i + eps) + mu_a).to(a.dtype)


def id_attention(q, k, v, face_k, face_v, heads: int, attention, scale: float = 1.0) -> torch.Tensor:
    """``A + scale · match_distribution(A, A_i)``; ``attention(q, k, v, heads) -> [B, N, C]``."""
    a = attention(q, k, v, heads)
    if scale == 0.0:
        return a
    return a + scale * match_distribution(a, attention(q, face_k, face_v, heads))
