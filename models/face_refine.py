"""StableAnimator's HJB face refinement, made to fit in memory.

At a refined step the predicted clean latent ``x0`` is optimised with Adam so that ArcFace embeddings
of the generated faces move towards the reference's: decode -> cut each frame's face out at 112x112
-> ArcFace -> ``mean |1 - cos(e_k, e_ref)|``.

ArcFace only compares faces that are framed alike, so one framing rule cuts both sides:

* ``arcface`` (default): the five-point similarity alignment ArcFace was trained on (insightface's
  ``norm_crop``: eyes, nose tip and mouth corners least-squares fitted onto a fixed 112x112 template),
  done differentiably with kornia. The reference is aligned on Face Embed's five landmarks, each frame
  on the five points made from its DWPose face points.
* ``official``: what the official code does, an upright detector box resized bilinearly to 112x112.
  The reference uses Face Embed's detector box; a frame's box is that same box carried over by the
  landmarks (same place and size relative to the eyes, nose and mouth), so one rule frames both.

The official code decodes every full frame with gradients (fp32, all frames at once), which runs out
of memory on 24-80 GB cards. Here:

* frames are processed a chunk at a time, each chunk's gradient accumulated before one Adam step
  (the loss is a mean over frames, so this is the same gradient);
* only the latent region a chunk's faces need is decoded: one window per chunk (the union of the
  pixels its crops read, plus a margin for the decoder's receptive field, on the 8-pixel latent grid),
  so the temporal decoder mixes the same region of every frame;
* the caller decodes with gradient checkpointing.

Crop decoding is an approximation: pixels outside the window and the decoder's group-norm and
mid-block attention statistics over the whole frame are not seen (docs/face_refinement.md measures the
effect on the gradient).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

LATENT_SCALE = 8
ARCFACE_SIZE = 112
# insightface's ArcFace template (``face_align.arcface_dst``): where the image-left eye, image-right
# eye, nose tip and the two mouth corners sit in a 112x112 recognition crop
ARCFACE_DST = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))
FRAMINGS = ("arcface", "official")


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


# --- geometry -------------------------------------------------------------------------------------

def similarity_transform(src, dst) -> torch.Tensor:
    """The least-squares 2-D similarity (rotation, uniform scale, translation) taking points
    ``src [N, 2]`` onto ``dst [N, 2]``, as a ``[2, 3]`` float64 matrix. Umeyama's closed form, the
    estimator insightface's alignment uses; a reflection is never chosen."""
    src = torch.as_tensor(src, dtype=torch.float64)
    dst = torch.as_tensor(dst, dtype=torch.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, sv, vt = torch.linalg.svd(xd.T @ xs / len(src))
    d = torch.ones(2, dtype=torch.float64)
    if torch.det(u) * torch.det(vt) < 0:
        d[1] = -1.0
    rot = u @ torch.diag(d) @ vt
    scale = (sv * d).sum() / xs.square().sum(1).mean()
    return torch.cat([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]], 1)


def arcface_matrix(points) -> torch.Tensor:
    """``[2, 3]`` pixel -> ArcFace-crop similarity for a face's five landmarks (insightface order)."""
    return similarity_transform(points, ARCFACE_DST)


def _scale(m: torch.Tensor) -> float:
    return float(torch.det(m[:, :2]).abs().sqrt())


def _invert(m: torch.Tensor) -> torch.Tensor:
    a = torch.linalg.inv(m[:, :2])
    return torch.cat([a, -a @ m[:, 2:]], 1)


def _apply(m: torch.Tensor, pts) -> torch.Tensor:
    pts = torch.as_tensor(pts, dtype=m.dtype)
    return pts @ m[:, :2].T + m[:, 2]


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer ``(x1, y1, x2, y2)`` (end exclusive) of ``box`` rounded and clipped to the frame, or
    ``None`` when nothing of it is inside. A detector box may stick out of the image (a face at the
    edge); slicing with a negative start would give an empty or wrapped crop."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
    y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
    return None if x2 <= x1 or y2 <= y1 else (x1, y1, x2, y2)


@dataclass(frozen=True, eq=False)
class FaceTarget:
    """How one face is cut out for ArcFace.

    ``box``: the frame pixels the cut reads, ``(x1, y1, x2, y2)`` end exclusive, inside the frame --
    also what crop decoding must decode. ``matrix``: the ``[2, 3]`` similarity from frame pixels to the
    112x112 crop (``arcface`` framing), or ``None`` to resize ``box`` itself (``official`` framing).
    """

    box: tuple[int, int, int, int]
    matrix: torch.Tensor | None = None

    @staticmethod
    def aligned(points, width: int, height: int) -> "FaceTarget | None":
        """ArcFace's alignment on five landmarks; ``None`` if they are degenerate or the crop falls
        entirely outside the frame."""
        m = arcface_matrix(points)
        if not torch.isfinite(m).all() or not _scale(m) > 0:
            return None
        s = ARCFACE_SIZE - 1
        src = _apply(_invert(m), [[0, 0], [s, 0], [0, s], [s, s]])      # the crop's corners in the frame
        # bilinear sampling at x also reads pixel floor(x) + 1
        x1, y1 = (math.floor(float(v)) for v in src.min(0).values)
        x2, y2 = (math.floor(float(v)) + 2 for v in src.max(0).values)
        x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
        y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
        if x2 <= x1 or y2 <= y1:
            return None
        return FaceTarget((x1, y1, x2, y2), m)

    def check_inside(self, origin, width: int, height: int) -> None:
        """Raise unless a ``width x height`` window whose top-left pixel is ``origin`` holds ``box``."""
        ox, oy = origin
        x1, y1, x2, y2 = self.box
        if x1 < ox or y1 < oy or x2 - ox > width or y2 - oy > height:
            raise ValueError(f"The decoded window at {tuple(origin)} ({width}x{height}) does not contain the "
                             f"face region {self.box}.")

    def window_matrix(self, origin) -> torch.Tensor:
        """``matrix`` for a window whose top-left pixel is ``origin`` (window pixels -> crop), float64."""
        m = self.matrix.clone()
        m[:, 2] += m[:, :2] @ torch.tensor([float(origin[0]), float(origin[1])], dtype=m.dtype)
        return m

    def crop(self, img: torch.Tensor, origin=(0, 0)) -> torch.Tensor:
        """``img [3, h, w]``, a window of the frame whose top-left pixel is ``origin`` -> ``[1, 3, 112, 112]``.
        The definition of the cut; :class:`ChunkCrops` cuts many frames at once to the same result."""
        ox, oy = origin
        x1, y1, x2, y2 = self.box
        self.check_inside(origin, img.shape[-1], img.shape[-2])
        if self.matrix is None:
            face = img[:, y1 - oy:y2 - oy, x1 - ox:x2 - ox]
            return F.interpolate(face[None], size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False)
        # align_corners=True: pixel centres at integer coordinates, as cv2.warpAffine (norm_crop) has them
        return warp_affine(img[None], self.window_matrix(origin)[None].to(img), (ARCFACE_SIZE, ARCFACE_SIZE),
                           mode="bilinear", padding_mode="zeros", align_corners=True)


def as_target(t, width: int | None = None, height: int | None = None) -> FaceTarget | None:
    """A :class:`FaceTarget`, ``None``, or a plain ``(x1, y1, x2, y2)`` box (cut and resized; clipped to
    the frame when its size is given)."""
    if t is None or isinstance(t, FaceTarget):
        return t
    if width is not None and height is not None:
        box = clip_box(t, width, height)
        return None if box is None else FaceTarget(box)
    return FaceTarget(tuple(int(round(float(v))) for v in t))


def carried_box(ref_box, ref_points, points) -> tuple[float, float, float, float]:
    """The ``official`` framing's box on a frame: the reference's detector box, expressed relative to
    the reference's five landmarks, put on the frame's five landmarks. Its centre follows the face
    (turn and all), its size the face's scale; it stays upright, as a detector's box is. On the
    reference itself it is the detector box."""
    m_ref, m = arcface_matrix(ref_points), arcface_matrix(points)
    x1, y1, x2, y2 = (float(v) for v in ref_box)
    cx, cy = (float(v) for v in _apply(_invert(m), _apply(m_ref, [[(x1 + x2) / 2, (y1 + y2) / 2]]))[0])
    k = _scale(m_ref) / _scale(m)
    w, h = (x2 - x1) * k, (y2 - y1) * k
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def reference_target(bbox, kps, framing: str, width: int, height: int) -> FaceTarget:
    """How the reference face is cut: aligned on Face Embed's five landmarks (``arcface``) or its
    detector box clipped to the image (``official``)."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}")
    t = FaceTarget.aligned(kps, width, height) if framing == "arcface" else as_target(bbox, width, height)
    if t is None:
        raise ValueError(f"The reference face (box {[round(float(v), 1) for v in bbox]}) lies outside the "
                         f"{width}x{height} reference image, so refinement has nothing to compare with.")
    return t


def frame_targets(boxes, landmarks, framing: str, ref_box, ref_points, width: int, height: int):
    """Per-frame :class:`FaceTarget`, or ``None`` for a frame that is not refined.

    ``boxes``: the face masks' boxes (``None``: no face there). ``landmarks``: per-frame five points in
    frame pixels (``None`` entries: too few face points), or ``None`` when none were given -- then each
    face is cut from its mask box. A frame with a mask but without five points is skipped (logged):
    either framing needs them to be framed like the reference.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}")
    targets, skipped = [], []
    for k, box in enumerate(boxes):
        t = None
        if box is not None:
            if landmarks is None:
                t = as_target(box, width, height)
            elif landmarks[k] is not None:
                t = (FaceTarget.aligned(landmarks[k], width, height) if framing == "arcface"
                     else as_target(carried_box(ref_box, ref_points, landmarks[k]), width, height))
            if t is None:
                skipped.append(k)
        targets.append(t)
    if skipped:
        logger.warning("Face refinement skips %d frame(s) (%s): too few face points to place the eyes, nose and "
                       "mouth corners (face turned away or hidden)", len(skipped),
                       ", ".join(str(k) for k in skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
    return targets


def face_crops(pixels: torch.Tensor, targets, offsets) -> torch.Tensor:
    """Cut each frame's face out of decoded pixels ``[n, 3, h, w]`` (in [-1, 1]) at 112x112; ``offsets``
    are the frames' window origins in frame pixels. ``targets``: FaceTargets or plain boxes."""
    return torch.cat([as_target(t).crop(img, o) for img, t, o in zip(pixels, targets, offsets)])


# --- cutting a chunk's faces at once -------------------------------------------------------------
# Refinement is launch-bound. A kornia warp per frame is dozens of tiny ops (some of them host -> device
# copies) forward and backward, at every iteration, for a result that depends only on the landmarks.
# The grids are built once per chunk and an iteration runs one grid_sample for all its aligned faces.

def _sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    # kornia warps half-precision images in float32 as well; grid coordinates need float32's mantissa
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class _GridCapture(TorchFunctionMode):
    """Keeps the grid of every ``grid_sample`` run under it."""

    def __init__(self):
        super().__init__()
        self.grids: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.grid_sample, torch.grid_sampler):
            self.grids.append(args[1] if len(args) > 1 else kwargs["grid"])
        return func(*args, **kwargs)


def warp_grid(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ``[1, 112, 112, 2]`` sampling grid of :meth:`FaceTarget.crop`'s ``warp_affine`` for ``matrix
    [2, 3]`` (window pixels -> crop; its dtype and device are the sampling's) on a ``height x width`` window.

    Taken from ``warp_affine`` itself, not recomputed: kornia builds it through its own chain of float32
    ops (which differ between kornia versions), and with the very same grid a batched ``grid_sample``
    gives the per-frame warp's result bit for bit."""
    capture = _GridCapture()
    with capture:
        warp_affine(matrix.new_zeros(1, 1, height, width), matrix[None], (ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear",
                    padding_mode="zeros", align_corners=True)
    if len(capture.grids) != 1:
        raise RuntimeError(f"kornia's warp_affine ran {len(capture.grids)} grid_sample calls, expected one: this "
                           "kornia version is not supported by the batched face crop.")
    return capture.grids[0]


class ChunkCrops:
    """Cuts the faces of a chunk's frames out of their decoded window ``[n, c, h, w]`` -- bit for bit
    what :meth:`FaceTarget.crop` cuts frame by frame. Aligned faces: one ``grid_sample`` over the
    grids ``warp_affine`` would build, built here once per chunk, window, device and dtype. Box faces
    stay frame by frame (a slice and a resize each, no host traffic): resizing boxes of different sizes
    in one batched op changes the gradient's float rounding (about 1e-5) for a few launches' gain."""

    def __init__(self, targets, origin, width: int, height: int, device, dtype):
        for t in targets:
            t.check_inside(origin, width, height)
        self.targets, self.origin, self.dtype = list(targets), origin, _sampling_dtype(dtype)
        aligned = [k for k, t in enumerate(targets) if t.matrix is not None]
        self.boxes = [k for k, t in enumerate(targets) if t.matrix is None]
        mixed = bool(aligned) and bool(self.boxes)
        # built outside inference mode: grid_sample keeps its grid for backward
        with torch.inference_mode(False), torch.no_grad():
            self.grid = None if not aligned else torch.cat(
                [warp_grid(targets[k].window_matrix(origin).to(device, self.dtype), height, width) for k in aligned])
            index = lambda ks: torch.tensor(ks, device=device)
            self.aligned_frames = index(aligned) if mixed else None
            self.order = index([(aligned + self.boxes).index(k) for k in range(len(targets))]) if mixed else None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.grid is not None:
            faces = pixels if self.aligned_frames is None else pixels.index_select(0, self.aligned_frames)
            # align_corners=True: pixel centres at integer coordinates, as cv2.warpAffine (norm_crop) has them
            parts.append(F.grid_sample(faces.to(self.dtype), self.grid, mode="bilinear", padding_mode="zeros",
                                       align_corners=True).to(pixels.dtype))
        parts += [self.targets[k].crop(pixels[k], self.origin) for k in self.boxes]
        crops = parts[0] if len(parts) == 1 else torch.cat(parts)
        return crops if self.order is None else crops.index_select(0, self.order)


def reference_embedding(arcface, image: torch.Tensor, target) -> torch.Tensor:
    """ArcFace embedding of the reference face; ``image [H, W, 3]`` in [0, 1], ``target`` a
    :class:`FaceTarget` or a detector box (clipped to the image)."""
    h, w = image.shape[:2]
    t = as_target(target, w, h)
    if t is None:
        raise ValueError(f"The reference face box {list(target)} lies outside the {w}x{h} reference image.")
    face = t.crop(image[..., :3].movedim(-1, 0).float() * 2.0 - 1.0)
    with torch.no_grad():
        return arcface(face.to(next(arcface.parameters())))


def crop_window(regions, height: int, width: int, margin: int) -> tuple[int, int, int, int]:
    """The one pixel window ``(x0, y0, x1, y1)`` decoded for a chunk: the union of its frames' face
    regions plus ``margin`` on each side, widened outwards to the 8-pixel latent grid and clipped to
    the frame, so it always contains every region, and every frame of the chunk is cut at the same
    place (the temporal decoder mixes frames position by position)."""
    s = LATENT_SCALE
    x1 = min(b[0] for b in regions) - margin
    y1 = min(b[1] for b in regions) - margin
    x2 = max(b[2] for b in regions) + margin
    y2 = max(b[3] for b in regions) + margin
    return (max(0, x1 // s * s), max(0, y1 // s * s), min(width, -(-x2 // s) * s), min(height, -(-y2 // s) * s))


class FaceRefiner:
    """The per-step refinement hook for :mod:`samplers`: ``refiner(x0, step, steps) -> x0``.

    ``decode(z) -> pixels``: model-space latents ``[n, 4, h, w]`` to images ``[n, 3, 8h, 8w]`` in
    [-1, 1], differentiable. ``arcface``: 112x112 RGB in [-1, 1] -> embeddings. ``targets``: per-frame
    :class:`FaceTarget` (or plain pixel boxes) at generation resolution, ``None`` = frame skipped.
    """

    def __init__(self, decode, arcface, ref_emb, targets, schedule: RefineSchedule, *, margin: int = 32,
                 chunk: int = 4, crop: bool = True, check_cancel=None, on_step=None):
        self.decode, self.arcface, self.ref = decode, arcface, ref_emb
        self.targets, self.schedule = [as_target(t) for t in targets], schedule
        self.margin, self.chunk, self.crop = margin, max(1, chunk), crop
        self.check_cancel = check_cancel or (lambda: None)
        self.on_step = on_step
        self.history: list[tuple[int, float, float]] = []   # (step, similarity before / after the Adam steps)
        self._cuts: dict[tuple, ChunkCrops] = {}              # built on first use, per chunk, window, device, dtype
        self._frame_index: dict[tuple, torch.Tensor] = {}

    def frames(self) -> list[int]:
        return [k for k, t in enumerate(self.targets) if t is not None]

    def chunks(self) -> list[list[int]]:
        frames = self.frames()
        return [frames[i:i + self.chunk] for i in range(0, len(frames), self.chunk)]

    def window(self, idx, height: int, width: int) -> tuple[int, int, int, int]:
        """The pixels ``(x0, y0, x1, y1)`` decoded for chunk ``idx`` of ``width x height`` frames."""
        if not self.crop:
            return 0, 0, width, height
        return crop_window([self.targets[k].box for k in idx], height, width, self.margin)

    def _chunk_frames(self, z: torch.Tensor, idx) -> torch.Tensor:
        """``z[idx]``: a view for consecutive frames (every chunk unless frames are skipped), else one
        gather whose index is uploaded once, not at every call as list indexing does."""
        if list(idx) == list(range(idx[0], idx[0] + len(idx))):
            return z[idx[0]:idx[0] + len(idx)]
        key = (tuple(idx), z.device)
        if key not in self._frame_index:
            with torch.inference_mode(False):
                self._frame_index[key] = torch.tensor(list(idx), device=z.device)
        return z.index_select(0, self._frame_index[key])

    def _chunk_targets(self, idx) -> list:
        """The faces cut from a chunk, in the order its crops come out (one per frame here)."""
        return [self.targets[k] for k in idx]

    def _cut(self, idx, origin, pixels: torch.Tensor) -> ChunkCrops:
        key = (tuple(idx), origin, tuple(pixels.shape[-2:]), pixels.device, pixels.dtype)
        if key not in self._cuts:
            self._cuts[key] = ChunkCrops(self._chunk_targets(idx), origin, pixels.shape[-1], pixels.shape[-2],
                                         pixels.device, pixels.dtype)
        return self._cuts[key]

    def _decode_window(self, z: torch.Tensor, idx) -> tuple[torch.Tensor, tuple[int, int]]:
        """The chunk's frames decoded over its window only, and the window's top-left pixel."""
        s = LATENT_SCALE
        x0, y0, x1, y1 = self.window(idx, z.shape[-2] * s, z.shape[-1] * s)
        lat = self._chunk_frames(z, idx)[:, :, y0 // s:y1 // s, x0 // s:x1 // s]
        return self.decode(lat).clamp(-1.0, 1.0), (x0, y0)

    def chunk_loss(self, z: torch.Tensor, idx: list[int]) -> torch.Tensor:
        pixels, origin = self._decode_window(z, idx)
        crops = self._cut(idx, origin, pixels)(pixels)
        emb = self.arcface(crops.to(next(self.arcface.parameters())))
        return identity_loss(emb, self.ref)

    def _share(self, idx, n: int) -> float:
        """The chunk's weight in the mean over all refined faces (one face per frame here)."""
        return len(idx) / n

    # The losses stay on the device: reading one on the host (float()) would stall the launch queue at
    # every chunk. __call__ reads them once per refined step.

    def loss_and_grad(self, z: torch.Tensor) -> torch.Tensor:
        """Mean identity loss over all face frames (a 0-d tensor on ``z``'s device); gradients accumulate
        into ``z.grad`` chunk by chunk."""
        n, total = len(self.frames()), None
        for idx in self.chunks():
            self.check_cancel()
            loss = self.chunk_loss(z, idx) * self._share(idx, n)
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        return z.new_zeros(()) if total is None else total

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """The same mean identity loss without gradients (a forward decode only, no stored graph)."""
        n, total = len(self.frames()), None
        with torch.no_grad():
            for idx in self.chunks():
                self.check_cancel()
                loss = self.chunk_loss(z, idx) * self._share(idx, n)
                total = loss if total is None else total + loss
        return z.new_zeros(()) if total is None else total

    def __call__(self, x0: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        if not self.schedule.active(step) or not self.frames():
            return x0
        lr = self.schedule.lr_at(step, steps)
        with torch.inference_mode(False), torch.enable_grad():
            z = x0.detach().clone().float().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            before = None
            for _ in range(self.schedule.iterations):
                self.check_cancel()
                opt.zero_grad(set_to_none=True)
                loss = self.loss_and_grad(z)
                before = loss if before is None else before
                opt.step()
            del opt
            # the last gradient pass saw z before the last Adam step; one more forward pass without
            # gradients measures what the step hands on (measured on CPU: 0.26-0.31 of a gradient pass,
            # +9-10 % refinement time at 3 iterations; docs/face_refinement.md)
            after = self.loss(z)
            refined = z.detach().to(x0.dtype)
            del z
            before, after = torch.stack([before, after]).tolist()     # the step's one host read
        self.history.append((step, 1.0 - before, 1.0 - after))
        logger.info("Face refinement step %d/%d: identity similarity %.4f -> %.4f after %d Adam step(s) "
                    "(lr %.3f, %d frames)", step, steps, 1.0 - before, 1.0 - after, self.schedule.iterations, lr,
                    len(self.frames()))
        if self.on_step is not None:
            self.on_step(step, 1.0 - before, 1.0 - after)
        return refined


class MultiFaceRefiner(FaceRefiner):
    """:class:`FaceRefiner` for several people: each frame may show several faces, and each face is
    pulled towards its own person's reference embedding.

    ``ref_embs``: one ``[1, D]`` embedding per person; ``person_targets``: per person, the per-frame
    targets as :func:`frame_targets` gives them (``None`` = that person's face is not refined in that
    frame). Each frame is decoded once per chunk, whatever the number of faces in it; the window holds
    every face of the chunk. The loss is the mean of ``|1 - cos|`` over every (frame, person) face, so
    one person's face with its own reference counts like any single-person frame does.
    """

    def __init__(self, decode, arcface, ref_embs, person_targets, schedule: RefineSchedule, **kwargs):
        lengths = {len(t) for t in person_targets}
        if len(ref_embs) != len(person_targets) or len(lengths) != 1:
            raise ValueError("MultiFaceRefiner needs one reference embedding and one per-frame target list per "
                             "person, all lists as long as the video.")
        n = lengths.pop()
        faces = [[(p, as_target(ts[k])) for p, ts in enumerate(person_targets) if ts[k] is not None] for k in range(n)]
        # the base class's per-frame targets: a frame is refined when any person's face is in it
        super().__init__(decode, arcface, torch.cat(list(ref_embs)), [f[0][1] if f else None for f in faces],
                         schedule, **kwargs)
        self.faces = faces
        self._rows: dict[tuple, tuple] = {}

    def window(self, idx, height: int, width: int) -> tuple[int, int, int, int]:
        if not self.crop:
            return 0, 0, width, height
        return crop_window([t.box for k in idx for _, t in self.faces[k]], height, width, self.margin)

    def _share(self, idx, n: int) -> float:
        total = sum(len(f) for f in self.faces)
        return sum(len(self.faces[k]) for k in idx) / total

    def _chunk_rows(self, idx, device):
        """For a chunk: which decoded frame each face is cut from, and whose reference it is compared with."""
        key = (tuple(idx), device)
        if key not in self._rows:
            rows = [r for r, k in enumerate(idx) for _ in self.faces[k]]
            persons = [p for k in idx for p, _ in self.faces[k]]
            with torch.inference_mode(False):
                self._rows[key] = (torch.tensor(rows, device=device), torch.tensor(persons, device=device))
        return self._rows[key]

    def _chunk_targets(self, idx) -> list:
        return [t for k in idx for _, t in self.faces[k]]

    def chunk_loss(self, z: torch.Tensor, idx: list[int]) -> torch.Tensor:
        pixels, origin = self._decode_window(z, idx)
        rows, persons = self._chunk_rows(idx, pixels.device)
        crops = self._cut(idx, origin, pixels)(pixels.index_select(0, rows))
        emb = self.arcface(crops.to(next(self.arcface.parameters())))
        return identity_loss(emb, self.ref.to(emb.device).index_select(0, persons))
