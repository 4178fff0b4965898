"""StableAnimator's PoseNet (pose guider), channel counts read from its checkpoint.

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
from .model_files import Fixed, Width, agreed_widths

# The official PoseNet's kernels in order; its three 4x4 stride-2 steps bring the skeleton image down to
# the latent's size (H/8), where the features are added to the UNet's conv_in output.
OFFICIAL_KERNELS = (3, 4, 3, 4, 3, 4, 3, 3)
OUT_WIDTH = "PoseNet output channels"
FIX = ("Delete it and download the official Animation/pose_net.pth from the StableAnimator release "
       "again (python tools/models.py download pose_net.pth).")


def _conv_width(i: int) -> str:
    return f"output channels of conv_layers.{2 * i}"


def _official_layout() -> dict:
    """Tensor name -> axes of the official PoseNet; channel counts are left to the file."""
    layout, prev = {}, Fixed(3, "the first convolution takes the RGB skeleton image")
    for i, k in enumerate(OFFICIAL_KERNELS):
        out = Width(_conv_width(i))
        kernel = Fixed(k, f"conv_layers.{2 * i} has a {k}x{k} kernel in the official PoseNet"
                       + (", a stride-2 step down to the latent's size" if k == 4 else ""))
        layout[f"conv_layers.{2 * i}.weight"] = (out, prev, kernel, kernel)
        layout[f"conv_layers.{2 * i}.bias"] = (out,)
        prev = out
    one = Fixed(1, "final_proj is a 1x1 projection")
    layout["final_proj.weight"] = (Width(OUT_WIDTH), prev, one, one)
    layout["final_proj.bias"] = (Width(OUT_WIDTH),)
    layout["scale"] = (Fixed(1, "scale is a single learnt number"),)
    return layout


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
    def specs_from_state_dict(sd, source: str = "") -> tuple[list[tuple[int, int, int]], int]:
        """``(conv_specs, out_channels)`` from the tensor shapes, checked against each other and against
        the official architecture (a damaged shape is named here, not at the first sampling step)."""
        if not any(re.match(r"^conv_layers\.\d+\.weight$", k) for k in sd) or "final_proj.weight" not in sd:
            raise CheckpointError(
                "Not a PoseNet checkpoint: expected 'conv_layers.N.weight' and 'final_proj.weight'. "
                "Pick Animation/pose_net.pth."
            )
        widths = agreed_widths(sd, _official_layout(), "PoseNet", source, FIX)
        specs, in_ch = [], 3
        for i, kernel in enumerate(OFFICIAL_KERNELS):
            out_ch = widths[_conv_width(i)]
            specs.append((in_ch, out_ch, kernel))
            in_ch = out_ch
        return specs, widths[OUT_WIDTH]

    @classmethod
    def from_state_dict(cls, sd, *, dtype=None, device=None, operations=nn, source: str = "pose_net") -> "PoseNet":
        specs, out_ch = cls.specs_from_state_dict(sd, source)
        build = functools.partial(cls, specs, out_ch)
        model = build(dtype=dtype, device=device, operations=operations)
        return load_checked(model, sd, module_shapes(build), "PoseNet", source, dtype).eval()
