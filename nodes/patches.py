"""ComfyUI model patches: the ID adapter on the spatial cross-attentions and PoseNet after conv_in.

Patch objects hold weights, so they return themselves from ``__deepcopy__`` (ComfyUI 0.3.75 deep-copies
model options on every ``clone()``) and are never changed after they are installed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from comfy.ldm.modules.attention import SpatialVideoTransformer, optimized_attention

from ..models.id_attention import id_attention

# transformer_options key that the temporal blocks' forward adds for the blocks below it
TEMPORAL_BLOCK = "ida_temporal_block"


class TemporalBlockMark:
    """Object patch for the ``forward`` of one temporal transformer block (a SpatialVideoTransformer's
    ``time_stack`` entry): runs the block's own forward with ``TEMPORAL_BLOCK`` in its options.

    ComfyUI looks attn2 replace patches up by ``(block, number[, block_index])``, and a
    SpatialVideoTransformer hands the same options to its spatial and its temporal block, so both
    find the ID adapter under the same key. The query shapes ([B·T, h·w, C] vs [B·h·w, T, C]) tell
    them apart only while T != h·w: 16-frame windows at 256×256 px meet a 4×4 middle block, 64 frames
    at 512×512 px an 8×8 one. The mark says which block is calling, whatever the sizes. Where ComfyUI
    leaves it on a block after this model is done, it is inert: only ``IDAttentionPatch`` reads it.
    """

    def __init__(self, block: torch.nn.Module):
        self.block = block

    def __deepcopy__(self, memo):
        return self   # holds a module of the model: a copy would be a second, detached UNet block

    def __call__(self, x, context=None, transformer_options=None, **kwargs):
        opts = {**(transformer_options or {}), TEMPORAL_BLOCK: True}   # a copy: the spatial block's stay unmarked
        # the class's forward, not ``self.block.forward``: that attribute is this object while patched
        return type(self.block).forward(self.block, x, context=context, transformer_options=opts, **kwargs)


def temporal_block_marks(diffusion_model) -> dict[str, TemporalBlockMark]:
    """Object-patch name (relative to the ``BaseModel``) -> mark, for every temporal transformer block."""
    marks = {}
    for name, module in diffusion_model.named_modules():
        if isinstance(module, SpatialVideoTransformer):
            for i, block in enumerate(module.time_stack):
                marks[f"diffusion_model.{name}.time_stack.{i}.forward"] = TemporalBlockMark(block)
    return marks


def _is_spatial(q: torch.Tensor, extra: dict) -> bool:
    if extra.get(TEMPORAL_BLOCK):
        return False
    # unmarked means spatial; a query that cannot be one means the marks are not in place (a host
    # that calls the temporal blocks another way), which would put the face on the temporal attention
    bt, _, h, w = extra["activations_shape"]
    if q.shape[0] != bt or q.shape[1] != h * w:
        raise RuntimeError(
            f"ID adapter called by an unmarked attention with queries {tuple(q.shape)} at a {bt}x{h}x{w} block: "
            "the temporal-block marks that Apply StableAnimator installs are missing. Re-apply it to an "
            "unpatched model, or report this with your ComfyUI version.")
    return True


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

    def frame_count_problem(self, frames: int) -> str | None:
        """A message when a video of ``frames`` latent frames cannot be driven by these poses."""
        if frames == len(self.features):
            return None
        return (f"the latent has {frames} frames but Apply StableAnimator got {len(self.features)} pose images. "
                "Every frame needs its own pose: feed the same pose images to Apply StableAnimator and to Animation "
                "Conditioning (which makes the latent), or trim the driving video to the latent's length.")

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        if transformer_options.get("block") != ("input", 0) or self.strength == 0.0:
            return h
        cou = transformer_options["cond_or_uncond"]
        per = h.shape[0] // len(cou)
        window = transformer_options.get("context_window")
        idx = _frames_in_window(window, per)
        problem = self.frame_count_problem(per) if window is None else None
        if problem is None and len(idx) != per:
            problem = (f"features cover {len(idx)} frames but the model runs {per}: the context window and the "
                       "batch disagree; report this with your ComfyUI version.")
        if problem is None and max(idx) >= len(self.features):
            problem = (f"the model runs frames up to {max(idx)} but Apply StableAnimator got {len(self.features)} pose "
                       "images: the pose images and the latent must have the same number of frames.")
        if problem:
            raise ValueError(f"PoseNet: {problem}")
        feats = self.features[idx].to(device=h.device, dtype=h.dtype)
        add = torch.cat([feats if c == 0 else torch.zeros_like(feats) for c in cou])
        return h + self.strength * add
