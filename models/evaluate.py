"""Evaluation math for the StableAnimator supplement's metrics: L1, the Fréchet distance behind FVD, the
I3D network whose features FVD compares, and CSIM (ArcFace cosine similarity between the reference's face
and each frame's).

Pure PyTorch/numpy (OpenCV for the CSIM chart); ``tools/evaluate.py`` adds PSNR, SSIM and LPIPS through
torchmetrics, ``nodes/evaluate.py`` runs CSIM inside ComfyUI. Frames are ``[F, 3, H, W]`` floats in
``[0, 1]`` unless a function says otherwise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError

# --- pixel metrics --------------------------------------------------------------------------------

# OpenCV's BGR->gray weights (ITU-R BT.601), the conversion DisCo's SSIM runs on
LUMA = (0.299, 0.587, 0.114)


def l1_per_frame(gen: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per frame on the 0..1 scale: 0 for identical frames, 1 for black vs white."""
    return (gen.float() - gt.float()).abs().mean(dim=(1, 2, 3))


def l1_disco_per_frame(gen: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The number DisCo's evaluation code calls L1 (and that the TikTok tables of DisCo, MagicAnimate-era
    papers and StableAnimator print as e.g. 3.78E-04): the mean absolute difference on the 0..255 scale
    divided by the frame's pixel count H x W. It therefore depends on the resolution compared."""
    h, w = gen.shape[-2:]
    return (gen.float() - gt.float()).abs().mean(dim=(1, 2, 3)) * 255.0 / (h * w)


def luma(x: torch.Tensor) -> torch.Tensor:
    """``[F, 3, H, W]`` RGB in [0, 1] -> ``[F, 1, H, W]`` gray with OpenCV's weights, rounded to 8-bit levels
    as ``cv2.cvtColor`` returns them."""
    w = torch.tensor(LUMA, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x.float() * w).sum(1, keepdim=True) * 255.0).round() / 255.0


# --- Fréchet distance -----------------------------------------------------------------------------

def gaussian_stats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features [N, D]``, N >= 2."""
    x = torch.as_tensor(features, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"Gaussian statistics need at least 2 feature vectors [N, D]; got shape {tuple(x.shape)}.")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2):
    ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2))``.

    ``tr((cov1 cov2)^(1/2))`` is taken as the sum of the square roots of the eigenvalues of
    ``cov1^(1/2) cov2 cov1^(1/2)`` (a symmetric PSD matrix similar to ``cov1 cov2``), in float64: the same
    quantity scipy's ``sqrtm(cov1 @ cov2)`` traces, without its complex round-off."""
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape[0] != d or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"Fréchet distance: means {tuple(mu1.shape)} / {tuple(mu2.shape)} and covariances "
                         f"{tuple(cov1.shape)} / {tuple(cov2.shape)} do not describe Gaussians of one dimension.")
    root1 = _psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)     # round-off can take two equal Gaussians a hair below zero


def frechet_distance_of_features(feats1, feats2) -> float:
    """Fréchet distance between the Gaussians fitted to two sets of feature vectors ``[N, D]``."""
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


# --- I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman 2017) --------------------------------
# Laid out so that the Kinetics-400 state dict DisCo's FVD loads (``i3d_pretrained_400.pt``) fits it
# name for name: top-level blocks named after the paper's endpoints, ``conv3d``/``bn`` in every unit,
# branches ``b0, b1a, b1b, b2a, b2b, b3b`` in every Inception block, and a 1x1x1 ``logits`` unit. Every
# convolution and pooling pads the way TensorFlow's "SAME" does, as the network was trained.

I3D_INPUT = 224          # frames are resized to 224 x 224, as in DisCo's FVD
I3D_CLASSES = 400        # Kinetics-400 logits: FVD's feature vector
I3D_BN_EPS = 1e-3
# Inception blocks: (input channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels)
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


# the blocks in the order they run, before the logits
_ORDER = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
          "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
          "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one axis, (before, after): the output has ceil(size / stride) steps."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    pads = []
    for axis in (2, 1, 0):             # F.pad takes the last axis first: w, h, t
        pads += same_padding(x.shape[2 + axis], kernel[axis], stride[axis])
    return F.pad(x, pads)


class _SamePool(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        # zero padding: every pooled map follows a ReLU (>= 0), where it equals padding with -inf
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class _Unit(nn.Module):
    """conv3d ("SAME" padding) -> BatchNorm -> ReLU; the logits unit has a bias and neither of the others."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=I3D_BN_EPS, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class _Mixed(nn.Module):
    def __init__(self, cin: int, widths):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = _Unit(cin, w0)
        self.b1a, self.b1b = _Unit(cin, w1a), _Unit(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = _Unit(cin, w2a), _Unit(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = _SamePool((3, 3, 3), (1, 1, 1)), _Unit(cin, w3)

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3D(nn.Module):
    """``[N, 3, T, 224, 224]`` RGB in [-1, 1] -> ``[N, 400]`` Kinetics-400 logits averaged over time (the
    features DisCo's FVD compares)."""

    def __init__(self, classes: int = I3D_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = _Unit(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _SamePool((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = _Unit(64, 64)
        self.Conv3d_2c_3x3 = _Unit(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _SamePool((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = (_Mixed(*_MIXED[n]) for n in ("Mixed_3b", "Mixed_3c"))
        self.MaxPool3d_4a_3x3 = _SamePool((3, 3, 3), (2, 2, 2))
        self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f = (
            _Mixed(*_MIXED[f"Mixed_4{c}"]) for c in "bcdef")
        self.MaxPool3d_5a_2x2 = _SamePool((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = (_Mixed(*_MIXED[n]) for n in ("Mixed_5b", "Mixed_5c"))
        self.logits = _Unit(1024, classes, logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (I3D_INPUT, I3D_INPUT):
            raise ValueError(f"I3D takes [N, 3, T, {I3D_INPUT}, {I3D_INPUT}] clips; got {tuple(x.shape)}.")
        for name in _ORDER:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (1, 7, 7), stride=1)        # 7x7 spatial map -> 1x1 (dropout: identity at eval)
        return self.logits(x).mean(dim=(2, 3, 4))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str = "") -> "InceptionI3D":
        """The network in eval mode from a Kinetics-400 I3D state dict; a missing, unexpected or misshapen
        tensor is an error naming it. BatchNorm's ``num_batches_tracked`` counters may be absent (files
        saved by older PyTorch versions have none)."""
        model = cls()
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        optional = {k for k in expected if k.endswith("num_batches_tracked")}
        missing = sorted(set(expected) - set(sd) - optional)
        unexpected = sorted(set(sd) - set(expected))
        wrong = sorted(f"{k} is {list(sd[k].shape)}, expected {list(expected[k])}"
                       for k in set(sd) & set(expected) if tuple(sd[k].shape) != expected[k])
        if missing or unexpected or wrong:
            where = f" ({source})" if source else ""
            parts = [f"{n} {what}, e.g. {', '.join(items[:4])}." for n, what, items in
                     ((len(missing), "missing tensors", missing), (len(unexpected), "unexpected tensors", unexpected),
                      (len(wrong), "tensors of the wrong shape", wrong)) if items]
            raise CheckpointError(f"The I3D file{where} is not the Kinetics-400 Inception-I3D state dict FVD needs: "
                                  f"{' '.join(parts)} Use i3d_pretrained_400.pt (the file DisCo's FVD loads).")
        full = {**{k: model.state_dict()[k] for k in optional}, **sd}
        model.load_state_dict({k: v.float() for k, v in full.items()}, strict=True)
        return model.eval().requires_grad_(False)


def i3d_clips(frames: torch.Tensor, clip_len: int) -> torch.Tensor:
    """``frames [T, H, W, 3]`` uint8 RGB -> ``[N, 3, L, 224, 224]`` in [-1, 1]: each frame resized to
    224 x 224 (antialiased bicubic, as PIL does it, without keeping the aspect ratio, as DisCo does), cut
    into ``N = T // L`` clips of ``L = clip_len`` consecutive frames (the remainder dropped); ``clip_len``
    0 makes the whole video one clip."""
    t = frames.shape[0]
    length = t if clip_len <= 0 else clip_len
    n = t // length if length else 0
    if n == 0:
        return torch.zeros(0, 3, max(length, 1), I3D_INPUT, I3D_INPUT)
    x = frames[:n * length].permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(I3D_INPUT, I3D_INPUT), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0, 255) / 127.5 - 1.0
    return x.view(n, length, 3, I3D_INPUT, I3D_INPUT).permute(0, 2, 1, 3, 4).contiguous()


# --- CSIM -----------------------------------------------------------------------------------------

def face_crop(image: torch.Tensor, points) -> torch.Tensor | None:
    """``image [H, W, 3]`` in [0, 1] and five face landmarks (pixels, insightface order) -> the 112 x 112
    ArcFace crop ``[1, 3, 112, 112]`` in [-1, 1], aligned as ArcFace was trained (the same cut face
    refinement makes); ``None`` when the landmarks are degenerate or the face lies outside the image."""
    from .face_refine import FaceTarget

    h, w = image.shape[:2]
    target = FaceTarget.aligned(np.asarray(points, float), w, h)
    if target is None:
        return None
    return target.crop(image[..., :3].movedim(-1, 0).float() * 2.0 - 1.0)


def embed(arcface: nn.Module, crops: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """ArcFace embeddings ``[N, 512]`` of crops ``[N, 3, 112, 112]``, a batch at a time, on the network's
    device and dtype."""
    p = next(arcface.parameters())
    out = [arcface(crops[i:i + batch].to(p)).float().cpu() for i in range(0, len(crops), batch)]
    return torch.cat(out) if out else torch.zeros(0, 512)


def cosine(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``emb [N, D]`` with ``ref [D]`` or ``[1, D]``."""
    return F.cosine_similarity(emb.float(), ref.float().reshape(1, -1).expand_as(emb), dim=-1)


@dataclass(frozen=True)
class CsimResult:
    """Per-frame CSIM (``None`` where no face was found) and the threshold frames are flagged under."""

    values: tuple
    threshold: float

    @property
    def found(self) -> list[int]:
        return [i for i, v in enumerate(self.values) if v is not None]

    @property
    def missing(self) -> list[int]:
        return [i for i, v in enumerate(self.values) if v is None]

    @property
    def flagged(self) -> list[int]:
        return [i for i, v in enumerate(self.values) if v is not None and v < self.threshold]

    @property
    def mean(self) -> float:
        found = [v for v in self.values if v is not None]
        return float(np.mean(found)) if found else math.nan

    def as_floats(self) -> list[float]:
        return [math.nan if v is None else float(v) for v in self.values]

    def summary(self) -> str:
        n = len(self.values)
        if not self.found:
            return (f"CSIM: no face found in any of the {n} frame(s), so identity could not be measured. Check "
                    "that the frames show the face (at least ~40 px wide).")
        lowest = min(self.found, key=lambda i: self.values[i])
        lines = [f"CSIM mean {self.mean:.3f} over {len(self.found)} of {n} frame(s) with a face "
                 f"(1.000 = the reference's face); lowest {self.values[lowest]:.3f} at frame {lowest}."]
        lines.append(f"No face found in {len(self.missing)} frame(s): {_frame_list(self.missing)}."
                     if self.missing else "A face was found in every frame.")
        lines.append(f"{len(self.flagged)} frame(s) under the threshold {self.threshold:.2f}: "
                     f"{_frame_list(self.flagged)}." if self.flagged else
                     f"No frame under the threshold {self.threshold:.2f}.")
        return "\n".join(lines)


def _frame_list(frames: list[int], shown: int = 24) -> str:
    text = ", ".join(str(i) for i in frames[:shown])
    return text + (f" and {len(frames) - shown} more" if len(frames) > shown else "")


def plot_csim(result: CsimResult, width: int = 640, height: int = 320) -> np.ndarray:
    """The per-frame scores as a chart, ``[height, width, 3]`` uint8 RGB: a dot per frame (green at or
    above the threshold, red under it), a dashed threshold line, grey ticks where no face was found."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 52, 16, 30, 34
    pw, ph = width - left - right, height - top - bottom
    found = [v for v in result.values if v is not None]
    low = -1.0 if found and min(found) < 0 else 0.0
    n = max(len(result.values), 1)

    def x_of(i):
        return left + (pw * (i + 0.5) / n)

    def y_of(v):
        return top + ph * (1.0 - (min(max(v, low), 1.0) - low) / (1.0 - low))

    font, grey, dark = cv2.FONT_HERSHEY_SIMPLEX, (170, 170, 170), (40, 40, 40)
    for v in (low, (low + 1.0) / 2, 1.0):
        y = int(round(y_of(v)))
        cv2.line(img, (left, y), (left + pw, y), (225, 225, 225), 1)
        cv2.putText(img, f"{v:.1f}", (8, y + 4), font, 0.4, dark, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), grey, 1)
    ty = int(round(y_of(result.threshold)))
    for x0 in range(left, left + pw, 10):
        cv2.line(img, (x0, ty), (min(x0 + 5, left + pw), ty), (200, 120, 0), 1)
    points = [(int(round(x_of(i))), int(round(y_of(v)))) for i, v in enumerate(result.values) if v is not None]
    for a, b in zip(points, points[1:]):
        cv2.line(img, a, b, (120, 120, 120), 1, cv2.LINE_AA)
    radius = 3 if n <= 120 else 2
    for i, v in enumerate(result.values):
        x = int(round(x_of(i)))
        if v is None:
            cv2.line(img, (x, top + ph - 10), (x, top + ph), (120, 120, 120), 2)
        else:
            colour = (210, 40, 40) if v < result.threshold else (40, 160, 70)
            cv2.circle(img, (x, int(round(y_of(v)))), radius, colour, -1, cv2.LINE_AA)
    mean = f"mean {result.mean:.3f}" if found else "no face found"
    cv2.putText(img, f"Identity (CSIM) per frame: {mean}, threshold {result.threshold:.2f}", (left, 20), font, 0.45,
                dark, 1, cv2.LINE_AA)
    cv2.putText(img, f"frame 0 .. {len(result.values) - 1}", (left, height - 12), font, 0.4, dark, 1, cv2.LINE_AA)
    return img
