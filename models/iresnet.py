"""ArcFace iresnet (glintr100 = iresnet100), the differentiable identity network for refinement.

Input ``[N, 3, 112, 112]`` RGB in ``[-1, 1]``; output the raw 512-d embedding (after the final
BatchNorm1d ``features``), the same quantity insightface's ONNX ``glintr100`` returns.
Block counts and widths are read from the checkpoint and checked against each other.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checked
from .model_files import Fixed, Width, agreed_widths

BN_EPS = 1e-5
ARCFACE_INPUT = 112    # insightface's aligned face crop; every stage halves it once
EMBEDDING_DIM = 512    # what glintr100 gives, and what refinement compares with the reference's embedding
FIX = ("Delete it and download the official Animation/glintr100_torch.pth from the StableAnimator "
       "release again (python tools/models.py download glintr100_torch.pth).")
STEM = "stem width"


def _stage(i: int) -> str:
    return f"layer{i} width"


def _block_counts(sd) -> list[int]:
    """Blocks per stage from the tensor names; a stage or block with no tensor at all still counts, so that
    its tensors are reported missing instead of the network silently coming out shorter."""
    found: dict[int, int] = {}
    for k in sd:
        if m := re.match(r"^layer(\d+)\.(\d+)\.", k):
            found[int(m.group(1))] = max(found.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    return [found.get(i, 1) for i in range(1, max(found, default=0) + 1)]


def _bn(prefix: str, width) -> dict:
    return {f"{prefix}.{n}": (width,) for n in ("weight", "bias", "running_mean", "running_var")} | \
        {f"{prefix}.num_batches_tracked": ()}


def _layout(blocks: list[int], feature_hw: int) -> dict:
    """Tensor name -> axes of an iresnet with ``blocks`` per stage; widths are left to the file."""
    k3, k1 = Fixed(3, "a 3x3 convolution"), Fixed(1, "a 1x1 downsampling convolution")
    emb = Fixed(EMBEDDING_DIM, "the ArcFace embedding is 512-d, as glintr100 gives it")
    cin = Width(STEM)
    layout = {"conv1.weight": (cin, Fixed(3, "ArcFace takes an RGB face"), k3, k3), **_bn("bn1", cin),
              "prelu.weight": (cin,)}
    for i, n in enumerate(blocks, start=1):
        planes = Width(_stage(i))
        for b in range(n):
            p, c = f"layer{i}.{b}", cin if b == 0 else planes
            layout.update({**_bn(f"{p}.bn1", c), f"{p}.conv1.weight": (planes, c, k3, k3), **_bn(f"{p}.bn2", planes),
                           f"{p}.prelu.weight": (planes,), f"{p}.conv2.weight": (planes, planes, k3, k3),
                           **_bn(f"{p}.bn3", planes)})
            if b == 0:
                layout.update({f"{p}.downsample.0.weight": (planes, c, k1, k1), **_bn(f"{p}.downsample.1", planes)})
        cin = planes
    layout.update({**_bn("bn2", cin), "fc.weight": (emb, Width(cin.name, feature_hw * feature_hw)),
                   "fc.bias": (emb,), **_bn("features", emb)})
    return layout


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=BN_EPS))
            if downsample else None
        )

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    def __init__(self, blocks: list[int], widths: list[int], embedding_dim: int = 512, feature_hw: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths), start=1):
            layer = [IBasicBlock(inplanes, planes, 2, True)]
            layer += [IBasicBlock(planes, planes, 1, False) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            inplanes = planes
        self.num_layers = len(blocks)
        self.feature_hw = feature_hw
        self.bn2 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.fc = nn.Linear(inplanes * feature_hw * feature_hw, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.bn2(x).flatten(1)
        return self.features(self.fc(x))

    @staticmethod
    def config_from_state_dict(sd, source: str = "") -> dict:
        """The constructor arguments from the tensor shapes, checked against each other (a damaged shape is
        named here, not in the middle of face refinement)."""
        if "conv1.weight" not in sd or "fc.weight" not in sd or "features.running_mean" not in sd:
            raise CheckpointError(
                "Not an ArcFace iresnet checkpoint: expected conv1/fc/features tensors. "
                "Pick Animation/glintr100_torch.pth."
            )
        blocks = _block_counts(sd)
        feature_hw = ARCFACE_INPUT // 2 ** len(blocks)
        if feature_hw * 2 ** len(blocks) != ARCFACE_INPUT:
            raise CheckpointError(
                f"ArcFace iresnet{f' ({source})' if source else ''} has {len(blocks)} stages, which cannot map a "
                f"{ARCFACE_INPUT}x{ARCFACE_INPUT} face to a whole feature map. {FIX}")
        widths = agreed_widths(sd, _layout(blocks, feature_hw), "ArcFace iresnet", source, FIX)
        return dict(blocks=blocks, widths=[widths[_stage(i)] for i in range(1, len(blocks) + 1)],
                    embedding_dim=EMBEDDING_DIM, feature_hw=feature_hw)

    @property
    def input_size(self) -> int:
        """Square input side (112 for glintr100): every layer halves the map once."""
        return self.feature_hw * 2 ** self.num_layers

    @classmethod
    def from_state_dict(cls, sd, source: str = "glintr100_torch") -> "IResNet":
        """The network in eval mode with frozen weights: refinement backpropagates through it to the
        latent only; trainable weights would have every backward compute (and accumulate, never zeroed)
        gradients for all of them."""
        model = cls(**cls.config_from_state_dict(sd, source))   # plain torch layers: their shapes are the layout
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return load_checked(model, sd, expected, "ArcFace iresnet", source).eval().requires_grad_(False)
