"""Tiny ONNX models with the real DWPose I/O contracts, exported from torch in the test session.

* detector: ``[1,3,640,640]`` -> ``[1,8400,85]`` (YOLOX grid outputs: xy offsets, log wh, then
  objectness and 80 class scores already through a sigmoid, as the exported YOLOX-L gives them);
* pose: ``[1,3,384,288]`` -> ``simcc_x [1,133,576]``, ``simcc_y [1,133,768]`` (RTMPose SimCC).

``planted=True`` puts known boxes and keypoint peaks into the outputs (a known-answer test);
``planted=False`` gives input-dependent random outputs (for parity with an independent pipeline).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32)
# boxes planted in letterbox pixels: (cx, cy, w, h, objectness, class-0 score, class-1 score)
PLANTED_BOXES = [
    (320.0, 300.0, 200.0, 400.0, 0.95, 0.95, 0.01),   # person A
    (328.0, 305.0, 190.0, 390.0, 0.9, 0.7, 0.01),     # overlaps A, lower score: removed by NMS
    (520.0, 320.0, 120.0, 300.0, 0.8, 0.7, 0.01),     # person B (score 0.56)
    (100.0, 500.0, 80.0, 100.0, 0.5, 0.4, 0.01),      # score 0.2: below the person threshold
    (150.0, 150.0, 100.0, 100.0, 0.95, 0.01, 0.95),   # another class
]


def _anchor(cx, cy, stride):
    base = sum((640 // s) ** 2 for s in STRIDES[: STRIDES.index(stride)])
    gx, gy = int(cx // stride), int(cy // stride)
    return base + gy * (640 // stride) + gx, gx, gy


class TinyYolox(nn.Module):
    def __init__(self, planted: bool, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.head = nn.Conv2d(8, 85, 1)
        const = torch.zeros(1, 8400, 85)
        # logits: near-zero scores around planted boxes; a spread of scores for random outputs
        const[..., 4:] = -6.0
        if not planted:  # anchors differ from each other whatever the image
            const[..., 4:] = -1.4 + 0.8 * torch.randn(1, 8400, 81, generator=g)
        if planted:
            for cx, cy, w, h, obj, c0, c1 in PLANTED_BOXES:
                i, gx, gy = _anchor(cx, cy, 32)
                while const[0, i, 4] > -6.0:       # keep planted boxes on distinct anchors
                    i += 1
                    gx += 1
                const[0, i, 0], const[0, i, 1] = cx / 32 - gx, cy / 32 - gy
                const[0, i, 2], const[0, i, 3] = math.log(w / 32), math.log(h / 32)
                const[0, i, 4], const[0, i, 5], const[0, i, 6] = (math.log(p / (1 - p)) for p in (obj, c0, c1))
        self.register_buffer("const", const)
        self.gain = 0.001 if planted else 1.0
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5

    def forward(self, x):
        f = F.relu(self.conv(x / 255.0))                       # [1, 8, 80, 80]
        maps = [F.adaptive_avg_pool2d(self.head(f), 640 // s).flatten(2) for s in STRIDES]
        raw = torch.cat(maps, 2).transpose(1, 2) * self.gain + self.const   # [1, 8400, 85]
        return torch.cat([raw[..., :4], torch.sigmoid(raw[..., 4:])], -1)


class TinyRTMPose(nn.Module):
    def __init__(self, planted: bool, seed: int = 1, peaks=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 7, stride=16)
        self.u = nn.Parameter(torch.randn(8, 133, generator=g))
        self.vx = nn.Parameter(torch.randn(8, 576, generator=g))
        self.vy = nn.Parameter(torch.randn(8, 768, generator=g))
        cx, cy = torch.zeros(133, 576), torch.zeros(133, 768)
        if planted:
            for k, (bx, by) in enumerate(peaks):
                cx[k, bx], cy[k, by] = 0.9, 0.8
        self.register_buffer("cx", cx)
        self.register_buffer("cy", cy)
        self.gain = 0.001 if planted else 1.0

    def forward(self, x):
        f = F.adaptive_avg_pool2d(torch.tanh(self.conv(x / 60.0)), 1).flatten(1)   # [1, 8]
        w = f[:, :, None] * self.u[None]                                           # [1, 8, 133]
        sx = torch.einsum("bjk,jn->bkn", w, self.vx) * self.gain + self.cx
        sy = torch.einsum("bjk,jn->bkn", w, self.vy) * self.gain + self.cy
        return sx, sy


def planted_peaks():
    """Joint k peaks at crop pixel (10 + 2k mod 280, 20 + 5k mod 370), in SimCC bins (x2)."""
    return [(2 * ((10 + 2 * k) % 280), 2 * ((20 + 5 * k) % 370)) for k in range(133)]


def export(folder, planted: bool) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    det, pose = folder / "yolox_l.onnx", folder / "dw-ll_ucoco_384.onnx"
    torch.onnx.export(TinyYolox(planted).eval(), torch.zeros(1, 3, 640, 640), str(det), dynamo=False,
                      input_names=["images"], output_names=["output"])
    torch.onnx.export(TinyRTMPose(planted, peaks=planted_peaks()).eval(), torch.zeros(1, 3, 384, 288), str(pose),
                      dynamo=False, input_names=["input"], output_names=["simcc_x", "simcc_y"])
    return det, pose
