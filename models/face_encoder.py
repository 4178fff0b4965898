"""StableAnimator's Face Encoder (``FusionFaceId``): ArcFace embedding + CLIP token -> face tokens.

``proj`` lifts the raw 512-d ArcFace embedding to ``num_tokens`` tokens (LayerNorm'd), then a
4-layer perceiver (``FacePerceiver``) refines them by attending over ``[clip tokens, face tokens]``.
With the official ``shortcut=False`` the output is the perceiver output alone, ``[B, 4, 1024]``.
The UNet's cross-attention context is then ``[clip token, 4 face tokens]``.
"""
from __future__ import annotations

import functools
import math
import re

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checked, module_shapes
from .model_files import Fixed, Width, agreed_widths

DIM_HEAD = 64  # fixed in the official FacePerceiver; heads = inner width / 64
ARCFACE_DIM = 512  # what proj takes: insightface's glintr100 embedding
FIX = ("Delete it and download the official Animation/face_encoder.pth from the StableAnimator "
       "release again (python tools/models.py download face_encoder.pth).")
HIDDEN, TOKENS, TOKEN = "proj hidden width", "face-token values (tokens x token width)", "token width"
ATTENTION, FEED_FORWARD = "attention width", "feed-forward width"


def _layout(depth: int) -> dict:
    """Tensor name -> axes of a FusionFaceId with ``depth`` perceiver layers."""
    d, inner, ff = Width(TOKEN), Width(ATTENTION), Width(FEED_FORWARD)
    layout = {
        "proj.0.weight": (Width(HIDDEN), Fixed(ARCFACE_DIM, "proj takes the 512-d ArcFace embedding")),
        "proj.0.bias": (Width(HIDDEN),),
        "proj.2.weight": (Width(TOKENS), Width(HIDDEN)),
        "proj.2.bias": (Width(TOKENS),),
        "norm.weight": (d,), "norm.bias": (d,),
        # the face tokens sit beside the CLIP token in one cross-attention context, so the CLIP width that
        # proj_in takes is the token width too
        "fusion_model.proj_in.weight": (d, d), "fusion_model.proj_in.bias": (d,),
        "fusion_model.proj_out.weight": (d, d), "fusion_model.proj_out.bias": (d,),
        "fusion_model.norm_out.weight": (d,), "fusion_model.norm_out.bias": (d,),
    }
    for i in range(depth):
        p = f"fusion_model.layers.{i}"
        layout.update({
            f"{p}.0.norm1.weight": (d,), f"{p}.0.norm1.bias": (d,),
            f"{p}.0.norm2.weight": (d,), f"{p}.0.norm2.bias": (d,),
            f"{p}.0.to_q.weight": (inner, d), f"{p}.0.to_kv.weight": (Width(ATTENTION, 2), d),
            f"{p}.0.to_out.weight": (d, inner),
            f"{p}.1.0.weight": (d,), f"{p}.1.0.bias": (d,),
            f"{p}.1.1.weight": (ff, d), f"{p}.1.3.weight": (d, ff),
        })
    return layout


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, inner: int, *, dtype=None, device=None, operations=nn):
        super().__init__()
        self.heads = inner // DIM_HEAD
        self.norm1 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.norm2 = operations.LayerNorm(dim, dtype=dtype, device=device)
        self.to_q = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
        self.to_kv = operations.Linear(dim, inner * 2, bias=False, dtype=dtype, device=device)
        self.to_out = operations.Linear(inner, dim, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n_lat, _ = latents.shape
        q = self.to_q(latents)                                     # [B, L, inner]
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [B, T+L, inner]
        q, k, v = (t.reshape(b, t.shape[1], self.heads, DIM_HEAD).transpose(1, 2) for t in (q, k, v))
        # the scale is split between q and k (1/sqrt(sqrt(d)) each) to keep fp16 products in range
        scale = 1.0 / math.sqrt(math.sqrt(DIM_HEAD))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)       # [B, H, L, T+L]
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n_lat, -1)   # [B, L, inner]
        return self.to_out(out)


def _feed_forward(dim: int, hidden: int, *, dtype=None, device=None, operations=nn) -> nn.Sequential:
    return nn.Sequential(
        operations.LayerNorm(dim, dtype=dtype, device=device),
        operations.Linear(dim, hidden, bias=False, dtype=dtype, device=device),
        nn.GELU(),
        operations.Linear(hidden, dim, bias=False, dtype=dtype, device=device),
    )


class FacePerceiver(nn.Module):
    def __init__(self, dim: int, depth: int, inner: int, ff_hidden: int, embedding_dim: int, output_dim: int,
                 *, dtype=None, device=None, operations=nn):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.proj_in = operations.Linear(embedding_dim, dim, dtype=dtype, device=device)
        self.proj_out = operations.Linear(dim, output_dim, dtype=dtype, device=device)
        self.norm_out = operations.LayerNorm(output_dim, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, inner, **kw), _feed_forward(dim, ff_hidden, **kw)])
            for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FaceEncoder(nn.Module):
    """``FusionFaceId``: ``forward(id_embeds [B,512], clip_embeds [B,T,D]) -> [B, num_tokens, D]``."""

    def __init__(self, id_dim: int, id_hidden: int, cross_dim: int, num_tokens: int, clip_dim: int,
                 depth: int, inner: int, ff_hidden: int, *, dtype=None, device=None, operations=nn):
        super().__init__()
        self.num_tokens, self.cross_dim = num_tokens, cross_dim
        self.proj = nn.Sequential(
            operations.Linear(id_dim, id_hidden, dtype=dtype, device=device),
            nn.GELU(),
            operations.Linear(id_hidden, cross_dim * num_tokens, dtype=dtype, device=device),
        )
        self.norm = operations.LayerNorm(cross_dim, dtype=dtype, device=device)
        self.fusion_model = FacePerceiver(cross_dim, depth, inner, ff_hidden, clip_dim, cross_dim,
                                          dtype=dtype, device=device, operations=operations)

    @property
    def id_dim(self) -> int:
        return self.proj[0].in_features

    @property
    def clip_dim(self) -> int:
        return self.fusion_model.proj_in.in_features

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor, shortcut: bool = False,
                scale: float = 1.0) -> torch.Tensor:
        tokens = self.norm(self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_dim))
        out = self.fusion_model(tokens, clip_embeds)
        return tokens + scale * out if shortcut else out

    @staticmethod
    def config_from_state_dict(sd, source: str = "") -> dict:
        """The constructor arguments from the tensor shapes, checked against each other (a damaged shape is
        named here, not at the first Face Encode)."""
        needed = ("proj.0.weight", "proj.2.weight", "norm.weight", "fusion_model.proj_in.weight",
                  "fusion_model.layers.0.0.to_q.weight", "fusion_model.layers.0.1.1.weight")
        absent = [k for k in needed if k not in sd]
        if absent:
            raise CheckpointError(
                f"Not a Face Encoder (FusionFaceId) checkpoint: missing {absent}. "
                "Pick Animation/face_encoder.pth."
            )
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^fusion_model\.layers\.(\d+)\.", k)))
        w = agreed_widths(sd, _layout(depth), "Face Encoder", source, FIX)
        cross_dim, inner = w[TOKEN], w[ATTENTION]
        where = f" ({source})" if source else ""
        if w[TOKENS] % cross_dim:
            raise CheckpointError(
                f"Face Encoder{where}: proj.2 gives {w[TOKENS]} values, not a whole number of {cross_dim}-wide face "
                f"tokens. The file is damaged or was changed after training. {FIX}")
        if inner % DIM_HEAD:
            raise CheckpointError(
                f"Face Encoder{where}: the attention width {inner} is not a multiple of the {DIM_HEAD}-wide heads. "
                f"The file is damaged or was changed after training. {FIX}")
        return dict(id_dim=ARCFACE_DIM, id_hidden=w[HIDDEN], cross_dim=cross_dim, num_tokens=w[TOKENS] // cross_dim,
                    clip_dim=cross_dim, depth=depth, inner=inner, ff_hidden=w[FEED_FORWARD])

    @classmethod
    def from_state_dict(cls, sd, *, dtype=None, device=None, operations=nn, source: str = "face_encoder"):
        build = functools.partial(cls, **cls.config_from_state_dict(sd, source))
        model = build(dtype=dtype, device=device, operations=operations)
        return load_checked(model, sd, module_shapes(build), "Face Encoder", source, dtype).eval()
