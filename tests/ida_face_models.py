"""Tiny ONNX models in the antelopev2 file layout, to drive insightface's real code path.

* ``scrfd_10g_bnkps.onnx``: SCRFD's contract (``[1,3,H,W]`` dynamic, normalised RGB in) with 9
  outputs (scores ``[K*2,1]``, boxes ``[K*2,4]``, landmarks ``[K*2,10]`` for strides 8/16/32). It
  "detects" squares of pure colour: a red-dominant square is face A, a green-dominant one face B.
  Because insightface swaps BGR to RGB, a red face is only found when the colour order is right;
  green faces are found either way.
* ``glintr100.onnx``: the tiny random iresnet (our own module) exported, ``[N,3,112,112] -> [N,512]``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

STRIDES = (8, 16, 32)
# five landmarks relative to the box centre, in box sizes: eyes, nose, mouth corners
LANDMARKS = torch.tensor([[-0.2, -0.15], [0.2, -0.15], [0.0, 0.02], [-0.15, 0.2], [0.15, 0.2]])


class TinySCRFD(nn.Module):
    def _square(self, x, ch):
        """Box of the pixels where channel ``ch`` dominates; and whether there are any."""
        other = [c for c in range(3) if c != ch]
        mask = (x[:, ch] > 0.5) & (x[:, other[0]] < -0.5) & (x[:, other[1]] < -0.5)   # [1, H, W]
        rows, cols = mask.any(2)[0].float(), mask.any(1)[0].float()
        ys = torch.arange(rows.shape[0], dtype=torch.float32)
        xs = torch.arange(cols.shape[0], dtype=torch.float32)
        big = 1e6
        x1, x2 = (xs + big * (1 - cols)).min(), (xs * cols).max() + 1
        y1, y2 = (ys + big * (1 - rows)).min(), (ys * rows).max() + 1
        return torch.stack([x1, y1, x2, y2]), (cols.sum() > 0).float()

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        faces = [self._square(x, 0), self._square(x, 1)]
        scores, boxes, kpss = [], [], []
        for s in STRIDES:
            gy, gx = torch.meshgrid(torch.arange(0, h, s, dtype=torch.float32), torch.arange(0, w, s, dtype=torch.float32),
                                    indexing="ij")
            centers = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1).repeat_interleave(2, 0)   # [K*2, 2]
            best_score = torch.zeros(centers.shape[0], 1)
            best_box = torch.zeros(centers.shape[0], 4)
            best_kps = torch.zeros(centers.shape[0], 10)
            for box, present in faces:
                c = (box[:2] + box[2:]) / 2
                size = box[2:] - box[:2]
                d2 = ((centers - c) ** 2).sum(-1, keepdim=True)
                sc = 0.95 * torch.exp(-d2 / (2 * (0.3 * s) ** 2)) * present
                dist = torch.cat([centers - box[:2], box[2:] - centers], -1) / s
                kps = ((c + LANDMARKS * size)[None] - centers[:, None]).reshape(-1, 10) / s
                take = sc > best_score
                best_score = torch.where(take, sc, best_score)
                best_box = torch.where(take, dist, best_box)
                best_kps = torch.where(take, kps, best_kps)
            scores.append(best_score)
            boxes.append(best_box)
            kpss.append(best_kps)
        return (*scores, *boxes, *kpss)


def export_antelopev2(root, iresnet: nn.Module) -> Path:
    """Write ``root/models/antelopev2/{scrfd_10g_bnkps,glintr100}.onnx``; returns the pack folder."""
    pack = Path(root) / "models" / "antelopev2"
    pack.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    torch.onnx.export(TinySCRFD().eval(), torch.zeros(1, 3, 640, 640), str(pack / "scrfd_10g_bnkps.onnx"),
                      dynamo=False, input_names=["input.1"], output_names=names,
                      dynamic_axes={"input.1": {2: "h", 3: "w"}})
    torch.onnx.export(iresnet.eval(), torch.zeros(1, 3, 112, 112), str(pack / "glintr100.onnx"), dynamo=False,
                      input_names=["input.1"], output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}})
    return pack


def face_image(size=400, faces=(("green", 150, 120, 120),), background=(20, 20, 20)):
    """RGB uint8 image with coloured squares ``(colour, x, y, side)`` standing in for faces."""
    import numpy as np

    img = np.zeros((size, size, 3), np.uint8) + np.array(background, np.uint8)
    rgb = {"red": (230, 10, 10), "green": (10, 230, 10)}
    for colour, x, y, side in faces:
        img[y:y + side, x:x + side] = rgb[colour]
        # a little texture so the recogniser sees something
        img[y + side // 3: y + side // 3 + 6, x + side // 4: x + 3 * side // 4] = (200, 200, 200) if colour == "red" else (240, 240, 30)
    return img
