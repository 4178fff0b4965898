"""StableAnimator's HJB face refinement, made to fit in memory.

At a refined step the predicted clean latent ``x0`` is optimised with Adam so that ArcFace embeddings
of the generated faces move towards the reference's: decode -> crop each frame's face box -> 112x112
-> ArcFace -> ``mean |1 - cos(e_k, e_ref)|``. The official code decodes every full frame with
gradients (fp32, all frames at once), which runs out of memory on 24-80 GB cards. Here:

* frames are processed a chunk at a time, each chunk's gradient accumulated before one Adam step
  (the loss is a mean over frames, so this is the same gradient);
* only the latent region each face needs is decoded: a window around the face box plus a margin for
  the decoder's receptive field, the same size for all frames of a chunk so the temporal decoder
  still mixes a batch;
* the caller decodes with gradient checkpointing.

Crop decoding is an approximation: pixels outside the window and the decoder's group-norm and
mid-block attention statistics over the whole frame are not seen (docs/face_refinement.md measures the
effect on the gradient).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LATENT_SCALE = 8


@dataclass(frozen=True)
class RefineSchedule:
    """Official defaults: steps 0-20 of 25, 3 Adam iterations, lr 0.1 * (1 - i / N)."""

    start_step: int = 0
    end_step: int = 20
    iterations: int = 3
    lr: float = 0.1

    def active(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and self.iterations > 0

    def lr_at(self, step: int, steps: int) -> float:
        return self.lr * (1.0 - step / steps)


def boxes_from_masks(masks: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Per-frame ``(x1, y1, x2, y2)`` pixel boxes (end exclusive) around each mask's nonzero area."""
    out = []
    for m in masks:
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        out.append(None if ys.numel() == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return out


def identity_loss(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(emb, ref.expand_as(emb), dim=-1)).abs().mean()


def face_crops(pixels: torch.Tensor, boxes, offsets, size: int = 112) -> torch.Tensor:
    """Cut each frame's face box out of decoded pixels ``[n, 3, H, W]`` (in [-1, 1]) and resize bilinearly."""
    crops = []
    for img, (x1, y1, x2, y2), (ox, oy) in zip(pixels, boxes, offsets):
        face = img[:, y1 - oy:y2 - oy, x1 - ox:x2 - ox]
        crops.append(F.interpolate(face[None], size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops)


def reference_embedding(arcface, image: torch.Tensor, box) -> torch.Tensor:
    """ArcFace embedding of the reference's face box; ``image [H, W, 3]`` in [0, 1]."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    face = image[y1:y2, x1:x2, :3].movedim(-1, 0)[None] * 2.0 - 1.0
    face = F.interpolate(face, size=(112, 112), mode="bilinear", align_corners=False)
    with torch.no_grad():
        return arcface(face.to(next(arcface.parameters())))


def crop_window(boxes, height: int, width: int, margin: int):
    """One window size for a chunk (multiple of 8, covering every box plus ``margin`` each side) and
    each frame's window origin, clamped inside the frame. Returns ``(h, w, [(x0, y0), ...])`` in pixels."""
    bw = max(b[2] - b[0] for b in boxes) + 2 * margin
    bh = max(b[3] - b[1] for b in boxes) + 2 * margin
    w = min(width, -(-bw // LATENT_SCALE) * LATENT_SCALE)
    h = min(height, -(-bh // LATENT_SCALE) * LATENT_SCALE)
    origins = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        x0 = min(max(0, cx - w // 2), width - w) // LATENT_SCALE * LATENT_SCALE
        y0 = min(max(0, cy - h // 2), height - h) // LATENT_SCALE * LATENT_SCALE
        origins.append((x0, y0))
    return h, w, origins


class FaceRefiner:
    """The per-step refinement hook for :mod:`samplers`: ``refiner(x0, step, steps) -> x0``.

    ``decode(z) -> pixels``: model-space latents ``[n, 4, h, w]`` to images ``[n, 3, 8h, 8w]`` in
    [-1, 1], differentiable. ``arcface``: 112x112 RGB in [-1, 1] -> embeddings. ``boxes``: per-frame
    pixel face boxes at generation resolution (``None`` = no face, frame skipped).
    """

    def __init__(self, decode, arcface, ref_emb, boxes, schedule: RefineSchedule, *, margin: int = 32,
                 chunk: int = 4, crop: bool = True, check_cancel=None, on_step=None):
        self.decode, self.arcface, self.ref = decode, arcface, ref_emb
        self.boxes, self.schedule = boxes, schedule
        self.margin, self.chunk, self.crop = margin, max(1, chunk), crop
        self.check_cancel = check_cancel or (lambda: None)
        self.on_step = on_step
        self.history: list[tuple[int, float, float]] = []   # (step, similarity at first / last iteration)

    def frames(self) -> list[int]:
        return [k for k, b in enumerate(self.boxes) if b is not None]

    def chunk_loss(self, z: torch.Tensor, idx: list[int]) -> torch.Tensor:
        boxes = [self.boxes[k] for k in idx]
        height, width = z.shape[-2] * LATENT_SCALE, z.shape[-1] * LATENT_SCALE
        if self.crop:
            h, w, origins = crop_window(boxes, height, width, self.margin)
            lat = torch.stack([z[k, :, y0 // 8:(y0 + h) // 8, x0 // 8:(x0 + w) // 8] for k, (x0, y0) in zip(idx, origins)])
        else:
            origins, lat = [(0, 0)] * len(idx), z[idx]
        pixels = self.decode(lat).clamp(-1.0, 1.0)
        emb = self.arcface(face_crops(pixels, boxes, origins).to(next(self.arcface.parameters())))
        return identity_loss(emb, self.ref)

    def loss_and_grad(self, z: torch.Tensor) -> float:
        """Mean identity loss over all face frames; gradients accumulate into ``z.grad`` chunk by chunk."""
        frames = self.frames()
        total = 0.0
        for i in range(0, len(frames), self.chunk):
            self.check_cancel()
            idx = frames[i:i + self.chunk]
            loss = self.chunk_loss(z, idx) * (len(idx) / len(frames))
            loss.backward()
            total += float(loss.detach())
        return total

    def __call__(self, x0: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        if not self.schedule.active(step) or not self.frames():
            return x0
        lr = self.schedule.lr_at(step, steps)
        with torch.inference_mode(False), torch.enable_grad():
            z = x0.detach().clone().float().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            losses = []
            for _ in range(self.schedule.iterations):
                self.check_cancel()
                opt.zero_grad(set_to_none=True)
                losses.append(self.loss_and_grad(z))
                opt.step()
            refined = z.detach().to(x0.dtype)
            del z, opt
        # similarity as measured by the first and the last iteration (no extra decode just to log)
        before, after = losses[0], losses[-1]
        self.history.append((step, 1.0 - before, 1.0 - after))
        logger.info("Face refinement step %d/%d: identity similarity %.4f -> %.4f (lr %.3f, %d frames)",
                    step, steps, 1.0 - before, 1.0 - after, lr, len(self.frames()))
        if self.on_step is not None:
            self.on_step(step, 1.0 - before, 1.0 - after)
        return refined
