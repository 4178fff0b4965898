"""Weights of StableAnimator's distribution-aware ID adapter, as loaded from ``unet.pth``.

One ``(W_k, W_v)`` pair per spatial cross-attention (``id_to_k``/``id_to_v``: ``[C, D]``
linear maps without bias from the face tokens' width ``D`` to the block width ``C``). They are kept
apart from the UNet so the adapter can be applied, scaled or left out as a model patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IDAdapterWeights:
    """``blocks``: ``{("input", 1): {"to_k": W_k, "to_v": W_v}, ...}`` keyed like ComfyUI attn2 patches."""

    blocks: dict
    cross_attention_dim: int

    def __deepcopy__(self, memo):
        # immutable weights: ComfyUI deep-copies model options on every clone
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.blocks.values()))["to_k"].dtype

    def num_parameters(self) -> int:
        return sum(t.numel() for kv in self.blocks.values() for t in kv.values())

    def to(self, dtype: torch.dtype) -> "IDAdapterWeights":
        blocks = {b: {n: t.to(dtype) for n, t in kv.items()} for b, kv in self.blocks.items()}
        return IDAdapterWeights(blocks=blocks, cross_attention_dim=self.cross_attention_dim)

    @classmethod
    def from_converted(cls, id_adapter: dict) -> "IDAdapterWeights":
        dims = {int(kv["to_k"].shape[1]) for kv in id_adapter.values()}
        if len(dims) != 1:
            raise ValueError(f"ID-adapter layers disagree on the face-token width: {sorted(dims)}")
        return cls(blocks=dict(id_adapter), cross_attention_dim=dims.pop())
