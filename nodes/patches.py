"""ComfyUI model patches: the ID adapter on the spatial cross-attentions and PoseNet after conv_in.

Patch objects hold weights, so they return themselves from ``__deepcopy__`` (ComfyUI 0.3.75 deep-copies
model options on every ``clone()``) and are never changed after they are installed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy.ldm.modules.attention import optimized_attention

from ..models.id_attention import id_attention


def _is_spatial(q: torch.Tensor, extra: dict) -> bool:
    # attn2 patches fire for the spatial block (queries [B*T, h*w, C]) and the temporal one
    # (queries [B*h*w, T, C]) with the same key; only the shapes tell them apart
    bt, _, h, w = extra["activations_shape"]
    return q.shape[0] == bt and q.shape[1] == h * w


def _per_chunk(cond_or_uncond: list[int], batch: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """Stack ``cond``/``uncond`` rows ([1, ...]) in the batch's chunk order, repeated per frame."""
    per = batch // len(cond_or_uncond)
    return torch.cat([(cond if c == 0 else uncond).expand(per, *cond.shape[1:]) for c in cond_or_uncond])


class IDAttentionPatch:
    """attn2 replacement for one spatial cross-attention: image attention + distribution-matched face attention.

    The UNet's context carries only the CLIP token (so the temporal blocks see exactly that, as in the
    official UNet); the 4 face tokens live here. The unconditional pass gets zero face tokens.
    """

    def __init__(self, to_k: torch.Tensor, to_v: torch.Tensor, face_tokens: torch.Tensor, strength: float,
                 sigma_start: float, sigma_end: float):
        self.to_k, self.to_v, self.face_tokens = to_k, to_v, face_tokens
        self.strength, self.sigma_start, self.sigma_end = strength, sigma_start, sigma_end

    def __deepcopy__(self, memo):
        return self

    def _scale(self, extra: dict) -> float:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return self.strength
        s = float(sigmas.max())
        return self.strength if self.sigma_end <= s <= self.sigma_start else 0.0

    def __call__(self, q, k, v, extra):
        heads, precision = extra["n_heads"], extra.get("attn_precision")
        attention = lambda q_, k_, v_, h_: optimized_attention(q_, k_, v_, h_, attn_precision=precision)
        if not _is_spatial(q, extra):
            return attention(q, k, v, heads)
        face = self.face_tokens.to(device=q.device, dtype=q.dtype)
        tokens = _per_chunk(extra["cond_or_uncond"], q.shape[0], face, torch.zeros_like(face))
        fk = F.linear(tokens, self.to_k.to(device=q.device, dtype=q.dtype))   # [B, 4, C]
        fv = F.linear(tokens, self.to_v.to(device=q.device, dtype=q.dtype))
        return id_attention(q, k, v, fk, fv, heads, attention, scale=self._scale(extra))


def _frames_in_window(window, per: int) -> list[int]:
    """The video frames the model runs now, in order: the window's index list, with the anchor frame a
    newer host prepends (``causal_anchor_index``) when the batch shows it is there."""
    if window is None:
        return list(range(per))
    idx = list(window.index_list)
    anchor = getattr(window, "causal_anchor_index", None)
    if anchor is not None and per == len(idx) + 1:
        idx = [anchor] + idx
    return idx


class PoseResidualPatch:
    """Adds PoseNet features to the conv_in output (before the first skip), for the conditional pass only.

    ``features [F, C, h, w]`` (precomputed once, kept off the GPU) are indexed by the current context
    window, so memory on the device stays one window's worth whatever the video length.
    """

    def __init__(self, features: torch.Tensor, strength: float):
        self.features, self.strength = features, strength

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        if transformer_options.get("block") != ("input", 0) or self.strength == 0.0:
            return h
        cou = transformer_options["cond_or_uncond"]
        per = h.shape[0] // len(cou)
        idx = _frames_in_window(transformer_options.get("context_window"), per)
        if len(idx) != per:
            raise RuntimeError(f"PoseNet features cover {len(idx)} frames but the model runs {per}; "
                               "the pose images and the latent must have the same number of frames.")
        feats = self.features[idx].to(device=h.device, dtype=h.dtype)
        add = torch.cat([feats if c == 0 else torch.zeros_like(feats) for c in cou])
        return h + self.strength * add
