"""Fitting the reference picture to the generation size without stretching it: crop to the size's
aspect (around the image centre or a face) or pad to it, then resize.

StableAnimator's own pipeline resizes the reference straight to the generation size, so a picture of
another shape comes out stretched; the pose, the face and the skeleton are all drawn on that stretched
canvas. Fitting first keeps people's proportions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FIT_MODES = ("crop_center", "crop_face", "pad", "stretch")
TRAINED_SIZES = ((512, 512), (576, 1024))


@dataclass(frozen=True)
class Fit:
    """Where the source goes: the crop box in source pixels and the placement on the output canvas."""

    crop: tuple[int, int, int, int]      # x0, y0, width, height in the source
    place: tuple[int, int, int, int]     # x0, y0, width, height on the output
    mode: str

    def describe(self, src_w: int, src_h: int, out_w: int, out_h: int) -> str:
        x, y, w, h = self.crop
        if self.mode == "pad":
            px, py, pw, ph = self.place
            return (f"{src_w}x{src_h} fitted inside {out_w}x{out_h} (scaled to {pw}x{ph}, padded "
                    f"{px}/{out_w - pw - px} px left/right, {py}/{out_h - ph - py} px top/bottom)")
        if self.mode == "stretch":
            return f"{src_w}x{src_h} stretched to {out_w}x{out_h} (the official behaviour)"
        if (w, h) == (src_w, src_h):
            return f"{src_w}x{src_h} resized to {out_w}x{out_h} (same shape, nothing cut)"
        return f"{src_w}x{src_h} cropped to {w}x{h} at ({x}, {y}), resized to {out_w}x{out_h}"


def _crop_box(src_w: int, src_h: int, out_w: int, out_h: int, center: tuple[float, float]) -> tuple[int, int, int, int]:
    """The largest box of the output's aspect inside the source, centred on ``center`` where it fits."""
    if src_w * out_h > src_h * out_w:       # source is wider: keep the full height
        h, w = src_h, max(1, min(src_w, round(src_h * out_w / out_h)))
    else:
        w, h = src_w, max(1, min(src_h, round(src_w * out_h / out_w)))
    x = min(max(round(center[0] - w / 2), 0), src_w - w)
    y = min(max(round(center[1] - h / 2), 0), src_h - h)
    return x, y, w, h


def plan_fit(src_w: int, src_h: int, out_w: int, out_h: int, mode: str,
             face_box: tuple[float, float, float, float] | None = None) -> Fit:
    """How a ``src_w`` x ``src_h`` picture becomes ``out_w`` x ``out_h`` in ``mode``.

    ``face_box`` (x0, y0, x1, y1) centres a crop_face crop; the crop keeps the whole box where the
    crop is larger than it.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"fit mode {mode!r} is not one of {FIT_MODES}")
    if mode == "stretch":
        return Fit((0, 0, src_w, src_h), (0, 0, out_w, out_h), mode)
    if mode == "pad":
        scale = min(out_w / src_w, out_h / src_h)
        pw, ph = max(1, min(out_w, round(src_w * scale))), max(1, min(out_h, round(src_h * scale)))
        return Fit((0, 0, src_w, src_h), ((out_w - pw) // 2, (out_h - ph) // 2, pw, ph), mode)
    center = (src_w / 2, src_h / 2)
    if mode == "crop_face":
        if face_box is None:
            raise ValueError("crop_face needs a face box")
        x0, y0, x1, y1 = face_box
        center = ((x0 + x1) / 2, (y0 + y1) / 2)
    return Fit(_crop_box(src_w, src_h, out_w, out_h, center), (0, 0, out_w, out_h), mode)


def apply_fit(image: torch.Tensor, fit: Fit, out_w: int, out_h: int, pad_value: float = 0.0) -> torch.Tensor:
    """``image`` [B, H, W, C] in [0, 1] cropped, resized (bicubic, antialiased) and placed per ``fit``."""
    x, y, w, h = fit.crop
    px, py, pw, ph = fit.place
    part = image[:, y:y + h, x:x + w, :].movedim(-1, 1).float()
    if (w, h) != (pw, ph):
        part = F.interpolate(part, size=(ph, pw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if (pw, ph) == (out_w, out_h):
        return part.movedim(1, -1).to(image.dtype)
    canvas = torch.full((image.shape[0], image.shape[-1], out_h, out_w), pad_value, dtype=part.dtype, device=part.device)
    canvas[:, :, py:py + ph, px:px + pw] = part
    return canvas.movedim(1, -1).to(image.dtype)


def largest_box(boxes) -> tuple[float, float, float, float] | None:
    """The face box with the largest area among ``boxes`` (rows of x0, y0, x1, y1[, score])."""
    best, area = None, -1.0
    for b in boxes:
        a = max(0.0, float(b[2]) - float(b[0])) * max(0.0, float(b[3]) - float(b[1]))
        if a > area:
            best, area = tuple(float(v) for v in b[:4]), a
    return best


def size_warning(width: int, height: int) -> str | None:
    """A note for sizes StableAnimator was not trained at (allowed, but results may be worse)."""
    if (width, height) in TRAINED_SIZES:
        return None
    trained = " and ".join(f"{w}x{h}" for w, h in TRAINED_SIZES)
    return (f"{width}x{height} is not a size StableAnimator was trained at ({trained}); it runs, but bodies and "
            "faces may come out worse. Use it for quick previews, or pick a trained size for the final render.")
