"""ArcFace iresnet (glintr100 = iresnet100), the differentiable identity network for refinement.

Input ``[N, 3, 112, 112]`` RGB in ``[-1, 1]``; output the raw 512-d embedding (after the final
BatchNorm1d ``features``), the same quantity insightface's ONNX ``glintr100`` returns.
Block counts and widths are read from the checkpoint.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checked

BN_EPS = 1e-5


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
    def config_from_state_dict(sd) -> dict:
        if "conv1.weight" not in sd or "fc.weight" not in sd or "features.running_mean" not in sd:
            raise CheckpointError(
                "Not an ArcFace iresnet checkpoint: expected conv1/fc/features tensors. "
                "Pick Animation/glintr100_torch.pth."
            )
        layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^layer(\d+)\.", k))})
        blocks, widths = [], []
        for i in layers:
            n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(rf"^layer{i}\.(\d+)\.", k)))
            blocks.append(n)
            widths.append(int(sd[f"layer{i}.0.conv1.weight"].shape[0]))
        fc_in = int(sd["fc.weight"].shape[1])
        hw = round((fc_in / widths[-1]) ** 0.5)
        if hw * hw * widths[-1] != fc_in:
            raise CheckpointError(f"iresnet fc input {fc_in} is not width {widths[-1]} x a square map.")
        return dict(blocks=blocks, widths=widths, embedding_dim=int(sd["fc.weight"].shape[0]), feature_hw=hw)

    @property
    def input_size(self) -> int:
        """Square input side (112 for glintr100): every layer halves the map once."""
        return self.feature_hw * 2 ** self.num_layers

    @classmethod
    def from_state_dict(cls, sd, source: str = "glintr100_torch") -> "IResNet":
        model = cls(**cls.config_from_state_dict(sd))   # plain torch layers: their shapes are the layout
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        return load_checked(model, sd, expected, "ArcFace iresnet", source).eval()
