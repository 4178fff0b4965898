"""StableAnimator's PoseNet (pose guider), sizes read from its checkpoint.

Input: rendered skeleton images at generation resolution, ``[F, 3, H, W]`` in ``[-1, 1]``.
Output: ``[F, C, H/8, W/8]`` with ``C`` = the UNet's ``model_channels`` (320), added to the
UNet's ``conv_in`` output. Eight convolutions with SiLU after each (kernel 4 stride 2 at the three
downsampling steps, kernel 3 stride 1 otherwise), a 1x1 projection, and a learnt scalar scale.
"""
from __future__ import annotations

import functools
import re

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checked, module_shapes


class PoseNet(nn.Module):
    def __init__(self, conv_specs, out_channels: int, *, dtype=None, device=None, operations=nn):
        """``conv_specs``: ``[(in_ch, out_ch, kernel), ...]`` in order; stride 2 for kernel 4."""
        super().__init__()
        layers: list[nn.Module] = []
        for in_ch, out_ch, kernel in conv_specs:
            stride = 2 if kernel == 4 else 1
            layers.append(operations.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=1, dtype=dtype, device=device))
            layers.append(nn.SiLU())
        self.conv_layers = nn.Sequential(*layers)
        last = conv_specs[-1][1]
        self.final_proj = operations.Conv2d(last, out_channels, 1, dtype=dtype, device=device)
        self.scale = nn.Parameter(torch.ones(1, dtype=dtype, device=device) * 2.0)

    @property
    def out_channels(self) -> int:
        return self.final_proj.out_channels

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        if pose.ndim == 5:  # [B, F, 3, H, W] -> [B*F, 3, H, W]
            pose = pose.flatten(0, 1)
        return self.final_proj(self.conv_layers(pose)) * self.scale

    @staticmethod
    def specs_from_state_dict(sd) -> tuple[list[tuple[int, int, int]], int]:
        idx = sorted(int(m.group(1)) for k in sd if (m := re.match(r"^conv_layers\.(\d+)\.weight$", k)))
        if not idx or "final_proj.weight" not in sd:
            raise CheckpointError(
                "Not a PoseNet checkpoint: expected 'conv_layers.N.weight' and 'final_proj.weight'. "
                "Pick Animation/pose_net.pth."
            )
        if idx != list(range(0, 2 * len(idx), 2)):
            raise CheckpointError(f"PoseNet convolutions must be at even indices 0,2,4..., found {idx}.")
        specs = []
        for i in idx:
            w = sd[f"conv_layers.{i}.weight"]
            specs.append((int(w.shape[1]), int(w.shape[0]), int(w.shape[2])))
        return specs, int(sd["final_proj.weight"].shape[0])

    @classmethod
    def from_state_dict(cls, sd, *, dtype=None, device=None, operations=nn, source: str = "pose_net") -> "PoseNet":
        specs, out_ch = cls.specs_from_state_dict(sd)
        build = functools.partial(cls, specs, out_ch)
        model = build(dtype=dtype, device=device, operations=operations)
        return load_checked(model, sd, module_shapes(build), "PoseNet", source, dtype).eval()
