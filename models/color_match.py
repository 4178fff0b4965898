"""Colour matching of video frames to a target's colour statistics in CIE Lab (Reinhard-style transfer).

Each frame gets a per-channel affine correction in Lab, ``lab * scale + shift``. One correction is
measured per window of frames (the sampler's window length and overlap by default) and pinned to the
window's centre; between centres the correction is blended linearly. So it never jumps from window to
window, follows a steady drift, and does not flicker as a per-frame correction can on changing content.
Because the correction is affine, blending corrections equals blending the corrected frames (before the
RGB clamp), and ``strength`` is an exact linear blend between the frames and their full correction.

Frames are converted in chunks: memory grows with the output, never with per-frame intermediates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .windows import magicanimate_windows, triangular_weights

MODES = ("mean_std", "mean", "color_only")
TARGETS = ("reference", "first_window")

# A frame or window with almost no contrast (a fade to black, a flat wall under the mask) would get its
# noise stretched without limit if its spread were matched: the contrast change is held within this factor.
MAX_CONTRAST_CHANGE = 1.5
# Corrections smaller than this (in Lab units, well under one 8-bit step, about 0.4) leave the frames
# untouched: a Lab round trip alone changes pixels by ~1e-5, and "nothing to match" must mean "unchanged".
IDENTITY_TOLERANCE = 1e-4


@dataclass
class LabStats:
    """Per-frame colour statistics in Lab: measured weight (pixels, or mask sum), mean and variance per channel."""

    weight: torch.Tensor   # [N] float64
    mean: torch.Tensor     # [N, 3] float64
    var: torch.Tensor      # [N, 3] float64

    def pooled(self, frames=None, frame_weights=None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mean [3], standard deviation [3] and total weight of ``frames`` (all by default) taken together,
        as if their measured pixels were one picture, each frame's pixels counted ``frame_weights`` times."""
        idx = slice(None) if frames is None else torch.as_tensor(list(frames), dtype=torch.long)
        w, m, v = self.weight[idx], self.mean[idx], self.var[idx]
        if frame_weights is not None:
            w = w * torch.as_tensor(frame_weights, dtype=torch.float64)
        total = float(w.sum())
        if total <= 0:
            return torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 0.0
        mean = (w[:, None] * m).sum(0) / total
        var = (w[:, None] * (v + (m - mean) ** 2)).sum(0) / total
        return mean, var.clamp_min(0).sqrt(), total


def to_lab(images: torch.Tensor) -> torch.Tensor:
    """IMAGE ``[N, H, W, 3]`` in 0..1 -> Lab ``[N, 3, H, W]`` (L 0..100, a/b about -128..127), float32."""
    import kornia

    return kornia.color.rgb_to_lab(images[..., :3].float().clamp(0, 1).movedim(-1, 1))


def from_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[N, 3, H, W]`` -> IMAGE ``[N, H, W, 3]`` clamped to 0..1."""
    import kornia

    return kornia.color.lab_to_rgb(lab, clip=True).movedim(1, -1).clamp(0, 1)


def _mask_chunk(mask: torch.Tensor | None, start: int, stop: int, size: tuple[int, int], device) -> torch.Tensor | None:
    """The weights ``[n, 1, H, W]`` of frames ``start:stop`` from a ``[1 or N, h, w]`` mask, resized to the frames."""
    if mask is None:
        return None
    part = mask[start:stop] if mask.shape[0] > 1 else mask[:1].expand(stop - start, *mask.shape[1:])
    part = part.to(device, torch.float32)[:, None]
    if tuple(part.shape[-2:]) != tuple(size):
        part = torch.nn.functional.interpolate(part, size=size, mode="bilinear", align_corners=False)
    return part.clamp(0, 1)


def _chunk_stats(lab: torch.Tensor, weights: torch.Tensor | None):
    """Weight [n], mean [n, 3], variance [n, 3] of a Lab chunk, centred before squaring (float32 sums of
    squared L values over a large frame lose the variance otherwise)."""
    if weights is None:
        return (torch.full((lab.shape[0],), float(lab.shape[-1] * lab.shape[-2]), device=lab.device),
                lab.mean((2, 3)), lab.var((2, 3), unbiased=False))
    w = weights.sum((1, 2, 3))
    safe = w.clamp_min(1e-12)[:, None]
    mean = (lab * weights).sum((2, 3)) / safe
    var = ((lab - mean[..., None, None]) ** 2 * weights).sum((2, 3)) / safe
    return w, mean, var


def frame_stats(images: torch.Tensor, mask: torch.Tensor | None = None, *, chunk: int = 8, device=None,
                progress: Callable[[int], None] | None = None) -> LabStats:
    """Lab statistics of every frame of ``images`` ``[N, H, W, 3]``, measured where ``mask`` (``[1 or N, h, w]``,
    0..1) is white, ``chunk`` frames at a time on ``device``. ``progress(frames_done)`` after each chunk."""
    device = device if device is not None else images.device
    n, size = images.shape[0], tuple(images.shape[1:3])
    weight = torch.zeros(n, dtype=torch.float64)
    mean = torch.zeros(n, 3, dtype=torch.float64)
    var = torch.zeros(n, 3, dtype=torch.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        lab = to_lab(images[start:stop].to(device))
        w, m, v = _chunk_stats(lab, _mask_chunk(mask, start, stop, size, device))
        weight[start:stop], mean[start:stop], var[start:stop] = w.double().cpu(), m.double().cpu(), v.double().cpu()
        if progress is not None:
            progress(stop)
    return LabStats(weight, mean, var)


def window_plan(num_frames: int, length: int, overlap: int) -> list[list[int]]:
    """Windows of ``length`` consecutive frames every ``length - overlap`` frames, the last one ending on the
    last frame (the sampler's uniform windows); one window of every frame when the video is not longer."""
    if length < 1 or not 0 <= overlap < length:
        raise ValueError(f"window_length must be >= 1 and 0 <= window_overlap < window_length (got {length}, "
                         f"{overlap}).")
    if length == 1:
        return [[i] for i in range(num_frames)]
    return magicanimate_windows(num_frames, length, overlap)


def window_weights(window: list[int]) -> list[float]:
    """How much each frame of ``window`` counts in its measurement: the sampler's triangular weights, the
    window's middle frames most, so its correction fits the frames it is pinned to."""
    return triangular_weights(len(window))


def _affine(src_mean, src_std, dst_mean, dst_std, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale``, ``shift`` taking colours with ``src`` statistics to ``dst``'s."""
    if mode not in MODES:
        raise ValueError(f"Unknown colour match mode {mode!r}; choose one of {MODES}.")
    scale = torch.ones(3, dtype=torch.float64)
    if mode == "mean_std":
        ratio = dst_std / src_std.clamp_min(1e-6)
        scale = ratio.clamp(1 / MAX_CONTRAST_CHANGE, MAX_CONTRAST_CHANGE)
        scale = torch.where(src_std > 1e-6, scale, torch.ones_like(scale))
    shift = dst_mean - scale * src_mean
    if mode == "color_only":   # lightness is left as it is: only the tint moves
        shift[0] = 0.0
    return scale, shift


def corrections(stats: LabStats, target_mean: torch.Tensor, target_std: torch.Tensor, *, mode: str = "mean_std",
                strength: float = 1.0, window_length: int = 16, window_overlap: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame ``scale`` and ``shift`` ``[N, 3]`` (float64); ``strength`` blends from none (0) to the full
    correction (1).

    One correction per window, measured over its frames taken together with the triangular weights (its
    centre counts most), is pinned to the window's centre; frames between two centres get the linear blend
    of the two, frames before the first centre or after the last that window's correction. So the
    correction never jumps, and a steady drift between centres is followed exactly. A window with nothing
    measured (its mask is black) is left out; with none measured at all the frames are left alone."""
    n = stats.weight.shape[0]
    keys = []
    for window in window_plan(n, window_length, window_overlap):
        mean, std, measured = stats.pooled(window, window_weights(window))
        if measured > 0:
            centre = sum(window) / len(window)
            keys.append((centre, *_affine(mean, std, target_mean.double(), target_std.double(), mode)))
    if not keys:
        return torch.ones(n, 3, dtype=torch.float64), torch.zeros(n, 3, dtype=torch.float64)
    keys.sort(key=lambda k: k[0])
    centres = torch.tensor([k[0] for k in keys], dtype=torch.float64)
    key_scale, key_shift = torch.stack([k[1] for k in keys]), torch.stack([k[2] for k in keys])
    if len(keys) == 1:
        scale, shift = key_scale.expand(n, 3), key_shift.expand(n, 3)
    else:
        pos = torch.arange(n, dtype=torch.float64).clamp(float(centres[0]), float(centres[-1]))
        right = torch.searchsorted(centres, pos).clamp(1, len(keys) - 1)
        left = right - 1
        t = ((pos - centres[left]) / (centres[right] - centres[left]))[:, None]
        scale = key_scale[left] + t * (key_scale[right] - key_scale[left])
        shift = key_shift[left] + t * (key_shift[right] - key_shift[left])
    return 1 + strength * (scale - 1), strength * shift


def is_identity(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per frame: True where the correction changes no colour by more than ``IDENTITY_TOLERANCE``."""
    # the largest change over the Lab range a correction can meet (L 0..100, a/b within +-128)
    reach = torch.tensor([100.0, 128.0, 128.0], dtype=scale.dtype)
    return ((scale - 1).abs() * reach + shift.abs()).amax(-1) <= IDENTITY_TOLERANCE


def apply_corrections(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, chunk: int = 8,
                      device=None, out_device=None, mask: torch.Tensor | None = None,
                      progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, LabStats]:
    """``images`` with each frame's Lab colours mapped by its ``scale``/``shift`` ``[N, 3]``, clamped to 0..1,
    ``chunk`` frames at a time, and the Lab statistics of the result (measured where ``mask`` is white).
    Frames whose correction is an identity are passed through unchanged."""
    device = device if device is not None else images.device
    out_device = out_device if out_device is not None else images.device
    n, size = images.shape[0], tuple(images.shape[1:3])
    out = torch.empty(images.shape[:-1] + (3,), dtype=torch.float32, device=out_device)
    unchanged = is_identity(scale, shift)
    weight = torch.zeros(n, dtype=torch.float64)
    mean = torch.zeros(n, 3, dtype=torch.float64)
    var = torch.zeros(n, 3, dtype=torch.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        frames = images[start:stop, ..., :3].to(device, torch.float32).clamp(0, 1)
        lab = to_lab(frames)
        todo = ~unchanged[start:stop]
        if bool(todo.any()):
            s = scale[start:stop].to(device, torch.float32)[..., None, None]
            t = shift[start:stop].to(device, torch.float32)[..., None, None]
            corrected = from_lab(lab * s + t)
            frames = torch.where(todo.to(device)[:, None, None, None], corrected, frames)
            lab = torch.where(todo.to(device)[:, None, None, None], to_lab(frames), lab)
        w, m, v = _chunk_stats(lab, _mask_chunk(mask, start, stop, size, device))
        weight[start:stop], mean[start:stop], var[start:stop] = w.double().cpu(), m.double().cpu(), v.double().cpu()
        out[start:stop] = frames.to(out_device)
        if progress is not None:
            progress(stop)
    return out, LabStats(weight, mean, var)


def color_distance(stats: LabStats, target_mean: torch.Tensor) -> torch.Tensor:
    """Per frame: the distance (CIE76 delta E) between the frame's mean Lab colour and ``target_mean``.

    Frames and the reference show different pictures, so a pixel-by-pixel delta E means nothing here:
    the distance of the average colours is what a cast or a drift moves. NaN for a frame with nothing
    measured (its mask is black)."""
    distance = (stats.mean - target_mean.double()).norm(dim=-1)
    return torch.where(stats.weight > 0, distance, torch.full_like(distance, float("nan")))


def summary(distance: torch.Tensor) -> tuple[float, float]:
    """Mean and worst of per-frame distances, leaving out frames with nothing measured (NaN if none)."""
    kept = distance[~distance.isnan()]
    return (float(kept.mean()), float(kept.max())) if kept.numel() else (float("nan"), float("nan"))


@dataclass
class MatchResult:
    images: torch.Tensor
    before: torch.Tensor   # [N] distance of each frame's mean colour to the target, before
    after: torch.Tensor    # [N] the same after the correction
    target: str            # what was matched to: "reference" or "first_window"


def match_colors(images: torch.Tensor, reference: torch.Tensor, *, strength: float = 1.0, mode: str = "mean_std",
                 match_to: str = "reference", window_length: int = 16, window_overlap: int = 4,
                 mask: torch.Tensor | None = None, reference_mask: torch.Tensor | None = None, chunk: int = 8,
                 device=None, out_device=None, progress: Callable[[int, int], None] | None = None) -> MatchResult:
    """Frames ``images`` ``[N, H, W, 3]`` matched to the colours of ``reference`` (its first image, any size)
    or of their own first window. ``progress(done, total)`` counts both passes (measure, then correct)."""
    if match_to not in TARGETS:
        raise ValueError(f"Unknown colour match target {match_to!r}; choose one of {TARGETS}.")
    n = images.shape[0]
    tick = (lambda base: (lambda done: progress(base + done, 2 * n))) if progress is not None else (lambda base: None)
    stats = frame_stats(images, mask, chunk=chunk, device=device, progress=tick(0))
    if match_to == "reference":
        ref_stats = frame_stats(reference[:1], reference_mask[:1] if reference_mask is not None else None,
                                chunk=1, device=device)
        target_mean, target_std, _ = ref_stats.pooled()
    else:
        # measured as the first window's own correction is, so that correction is none at all
        first = window_plan(n, window_length, window_overlap)[0]
        target_mean, target_std, _ = stats.pooled(first, window_weights(first))
    scale, shift = corrections(stats, target_mean, target_std, mode=mode, strength=strength,
                               window_length=window_length, window_overlap=window_overlap)
    out, after = apply_corrections(images, scale, shift, chunk=chunk, device=device, out_device=out_device, mask=mask,
                                   progress=tick(n))
    return MatchResult(out, color_distance(stats, target_mean), color_distance(after, target_mean), match_to)
