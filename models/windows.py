"""Sliding-window schedules and fusion weights for videos longer than one SVD window.

* ``official`` (StableAnimator / MimicMotion "progressive latent fusion"): every window holds frame 0
  plus ``length - 1`` consecutive frames; windows start every ``length - overlap`` frames; a tail
  window ``[0, F-length+1 .. F-1]`` is added when the last one stops short. Triangular weights by
  position in the window, ``w_k = min((k+.5)·2/L, 2 - (k+.5)·2/L)``.
* ``magicanimate`` (MagicAnimate §3.3): uniform windows of ``length`` consecutive frames every
  ``length - overlap`` frames, the last one aligned to the end, or wrapping around to frame 0 when
  ``wrap`` is on; predictions averaged with equal weights.

A seeded per-step ``shift`` moves the window starts by a different offset at every step, so seams
do not stay at the same frames.
"""
from __future__ import annotations

import numpy as np

SCHEDULES = ("official", "magicanimate")


def _shift(step: int, seed: int, stride: int) -> int:
    if stride <= 1:
        return 0
    return int(np.random.default_rng([seed, step]).integers(0, stride))


def official_windows(num_frames: int, length: int, overlap: int, shift: int = 0) -> list[list[int]]:
    if num_frames <= length:
        return [list(range(num_frames))]
    stride = max(1, length - overlap)
    starts = list(range(shift, num_frames - length + 1, stride))
    windows = [[0, *range(i + 1, min(i + length, num_frames))] for i in starts]
    if shift > 0:   # keep the first frames covered when the grid is shifted
        windows.insert(0, list(range(length)))
    if not windows or windows[-1][-1] < num_frames - 1:
        windows.append([0, *range(num_frames - length + 1, num_frames)])
    return windows


def magicanimate_windows(num_frames: int, length: int, overlap: int, wrap: bool = False, shift: int = 0) -> list[list[int]]:
    if num_frames <= length:
        return [list(range(num_frames))]
    stride = max(1, length - overlap)
    if wrap:
        starts = range(shift, shift + num_frames, stride)
        return [[(s + k) % num_frames for k in range(length)] for s in starts]
    starts = list(range(shift, num_frames - length + 1, stride))
    windows = [list(range(s, s + length)) for s in starts]
    if shift > 0:
        windows.insert(0, list(range(length)))
    if windows[-1][-1] < num_frames - 1:
        windows.append(list(range(num_frames - length, num_frames)))
    return windows


def windows_for_step(schedule: str, num_frames: int, length: int, overlap: int, *, step: int = 0,
                     shift: bool = False, seed: int = 0, wrap: bool = False) -> list[list[int]]:
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown window schedule {schedule!r}; choose one of {SCHEDULES}.")
    if length < 2 or not 0 <= overlap < length:
        raise ValueError(f"Window length must be >= 2 and 0 <= overlap < length (got {length}, {overlap}).")
    offset = _shift(step, seed, length - overlap) if shift else 0
    if schedule == "official":
        return official_windows(num_frames, length, overlap, offset)
    return magicanimate_windows(num_frames, length, overlap, wrap, offset)


def triangular_weights(length: int) -> list[float]:
    return [min((k + 0.5) * 2 / length, 2 - (k + 0.5) * 2 / length) for k in range(length)]


def fusion_weights(schedule: str, length: int) -> list[float]:
    return triangular_weights(length) if schedule == "official" else [1.0] * length


def fuse(predictions: list, windows: list[list[int]], weights: list[float], num_frames: int):
    """Weighted average of per-window predictions ``[len(window), ...]`` into ``[num_frames, ...]``."""
    import torch

    first = predictions[0]
    total = torch.zeros((num_frames, *first.shape[1:]), dtype=first.dtype, device=first.device)
    count = torch.zeros(num_frames, dtype=first.dtype, device=first.device)
    for pred, idx in zip(predictions, windows):
        w = torch.tensor(weights[: len(idx)], dtype=first.dtype, device=first.device)
        total.index_add_(0, torch.tensor(idx, device=first.device), pred * w.view(-1, *[1] * (pred.ndim - 1)))
        count.index_add_(0, torch.tensor(idx, device=first.device), w)
    return total / count.view(-1, *[1] * (first.ndim - 1))


def periodic_noise(shape, period: int, generator) -> "torch.Tensor":
    """Noise ``[F, ...]`` where frame ``k`` repeats frame ``k mod period`` (the official initial noise)."""
    import torch

    f = shape[0]
    base = torch.randn((min(period, f), *shape[1:]), generator=generator)
    reps = -(-f // base.shape[0])
    return base.repeat(reps, *[1] * (len(shape) - 1))[:f]
