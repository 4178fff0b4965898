"""Face stage: the reference's ArcFace embedding (insightface antelopev2), SVD's CLIP preprocessing,
and per-frame face boxes and five-point landmarks for refinement.

insightface and onnxruntime are imported when an analyser is built. Images are RGB uint8 unless a
function says otherwise.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import catalog
from .model_files import onnx_load_message

logger = logging.getLogger(__name__)

PACK_NAME = "antelopev2"
DET_SIZES = (640, 480, 320)          # retried in order until a face is found
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
COLOR_ORDERS = ("bgr", "rgb")
# insightface task -> the antelopev2 file that provides it
PACK_MODELS = {"detection": "scrfd_10g_bnkps.onnx", "recognition": "glintr100.onnx"}
_TASK_WORDS = {"detection": "face detection", "recognition": "ArcFace recognition"}


class FaceSetupError(FileNotFoundError):
    """The antelopev2 files are missing or laid out the way insightface cannot read."""


class FaceModelError(ValueError):
    """An antelopev2 .onnx file is damaged, or is a model insightface cannot use."""


class NoFaceError(ValueError):
    """No face was found where one is needed."""


def _onnx_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(".onnx")) if os.path.isdir(folder) else []


def find_insightface_root(roots: list[str]) -> str:
    """The root ``R`` with ``R/models/antelopev2/*.onnx`` (insightface's layout), or an error saying
    exactly what is wrong and how to fix it. Never lets insightface try a download."""
    for root in roots:
        pack = os.path.join(root, "models", PACK_NAME)
        if _onnx_files(pack):
            return root
        nested = os.path.join(pack, PACK_NAME)
        if _onnx_files(nested):
            raise FaceSetupError(
                f"The antelopev2 models are nested one folder too deep: {nested}. insightface reads only "
                f"{pack}. Move the .onnx files up one level (into {pack}) and delete the empty inner folder.")
        flat = os.path.join(root, PACK_NAME)
        if _onnx_files(flat):
            raise FaceSetupError(
                f"Found antelopev2 models in {flat}, but insightface reads {pack}. Move the folder to "
                f"{os.path.join(root, 'models')}/ so the files are in {pack}.")
    expected = " or ".join(os.path.join(r, "models", PACK_NAME) for r in roots) or "ComfyUI/models/insightface/models/antelopev2"
    files = [m for m in catalog.MODELS if m.folder == "insightface"]
    raise FaceSetupError(
        f"antelopev2 face models not found. Put the insightface antelopev2 pack ({', '.join(m.name.rsplit('/', 1)[-1] for m in files)}) "
        f"in {expected}. Download each from {files[0].page} (for example {files[0].url()}) or run "
        "`python custom_nodes/comfyui-identity-animator/tools/models.py download insightface`, then run the prompt again.")


def pack_fingerprint(roots: list[str]) -> tuple:
    """Name, size and modification time of every file in each root's antelopev2 folder (never raises)."""
    state = []
    for root in roots:
        pack = os.path.join(root, "models", PACK_NAME)
        try:
            entries = list(os.scandir(pack))
        except OSError:   # no such folder: find_insightface_root says what to do when the node runs
            continue
        for e in entries:
            try:
                st = e.stat()
            except OSError:   # a broken link, or a file removed meanwhile
                state.append((e.path, None, None))
                continue
            state.append((e.path, st.st_size, st.st_mtime_ns))
    return tuple(sorted(state, key=str))


def _face_analysis(root: str, providers: list[str]):
    """insightface's FaceAnalysis on the pack folder, its failures turned into errors naming the file."""
    from insightface.app import FaceAnalysis

    pack = os.path.join(root, "models", PACK_NAME)
    try:
        return FaceAnalysis(name=PACK_NAME, root=root, providers=providers, allowed_modules=list(PACK_MODELS))
    except AssertionError as exc:
        if str(exc):  # one of insightface's file checks, e.g. a broken link: it says which file
            raise FaceSetupError(f"insightface could not use {pack}: {exc}.") from exc
        # FaceAnalysis asserts, without a message, that some file there is a face detector
        raise FaceSetupError(missing_models_message(pack, ["detection"])) from exc
    except Exception as exc:  # onnxruntime's load errors, or insightface failing on a model it cannot route
        raise FaceModelError(_unreadable_model_message(pack, exc)) from exc


def missing_models_message(pack: str, missing: list[str]) -> str:
    """Which of the needed antelopev2 models insightface did not find in ``pack``, and how to fix it."""
    present = _onnx_files(pack)
    problems = [f"{PACK_MODELS[t]} is there but is not a {_TASK_WORDS[t]} model that insightface recognises "
                "(another model under that name)" if PACK_MODELS[t] in present else
                f"{PACK_MODELS[t]} ({_TASK_WORDS[t]}) is missing" for t in missing]
    fetch = "; ".join(f"python tools/models.py download models/{PACK_NAME}/{PACK_MODELS[t]}" for t in missing)
    needed = " and ".join(f"{n} ({_TASK_WORDS[t]})" for t, n in PACK_MODELS.items())
    return (f"The insightface folder {pack} has no {' and no '.join(missing)} model: {'; '.join(problems)}. It "
            f"holds: {', '.join(present) or 'no .onnx file'}. Load Face Analysis needs {needed} from the antelopev2 "
            f"pack: put the missing file there, deleting a wrong file of that name first ({fetch}).")


def _unreadable_model_message(pack: str, exc: BaseException) -> str:
    path = _file_being_loaded(exc)
    if path is None:
        return (f"insightface could not load the models in {pack}: {' '.join(str(exc).split())[:400]}. One of the "
                ".onnx files there is damaged or is not an antelopev2 model; download the antelopev2 pack again.")
    return onnx_load_message(path, exc, "The insightface model") + (
        f" insightface opens every .onnx file in {pack}, so a file there that is not part of the antelopev2 "
        "pack can simply be removed.")


def _file_being_loaded(exc: BaseException) -> str | None:
    """The .onnx file FaceAnalysis was opening when ``exc`` was raised."""
    said = re.search(r"Load model from (.+?\.onnx) failed", str(exc))
    if said:
        return said.group(1)
    tb = exc.__traceback__
    while tb is not None:   # insightface's own error (not onnxruntime's) does not name the file
        candidate = tb.tb_frame.f_locals.get("onnx_file")
        if isinstance(candidate, str):
            return candidate
        tb = tb.tb_next
    return None


@dataclass
class FaceResult:
    """One detected face of the reference (pixel coordinates of the image it was found in)."""

    embedding: np.ndarray   # [512] raw ArcFace embedding (not L2-normalised), as StableAnimator uses
    bbox: np.ndarray        # [4] x1, y1, x2, y2
    kps: np.ndarray         # [5, 2] eyes, nose, mouth corners
    det_score: float
    aligned: np.ndarray     # [112, 112, 3] RGB uint8 crop aligned on the 5 landmarks
    width: int
    height: int

    @staticmethod
    def missing(width: int, height: int) -> "FaceResult":
        return FaceResult(np.zeros(512, np.float32), np.zeros(4), np.zeros((5, 2)), 0.0,
                          np.zeros((112, 112, 3), np.uint8), width, height)

    @property
    def found(self) -> bool:
        return self.det_score > 0


def largest_first(boxes: np.ndarray) -> np.ndarray:
    """Indices of detector boxes ``[N, 4+]`` (x0, y0, x1, y1, ...) by area, largest first."""
    return np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) if len(boxes) else np.zeros(0, int)


class FaceAnalyzer:
    """insightface's antelopev2 detector + recogniser, loaded from local files only."""

    def __init__(self, root: str, providers: list[str]):
        self.app = _face_analysis(root, providers)
        missing = [m for m in PACK_MODELS if m not in self.app.models]
        if missing:
            raise FaceSetupError(missing_models_message(os.path.join(root, "models", PACK_NAME), missing))
        ctx = 0 if "CUDAExecutionProvider" in providers else -1
        self.app.prepare(ctx_id=ctx, det_size=(DET_SIZES[0], DET_SIZES[0]))
        self.det = self.app.models["detection"]
        self.rec = self.app.models["recognition"]

    def detect(self, img_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Boxes ``[N,5]`` and landmarks ``[N,5,2]``, retrying smaller detector sizes (close-ups)."""
        for size in DET_SIZES:
            boxes, kps = self.det.detect(img_bgr, input_size=(size, size), max_num=0, metric="default")
            if len(boxes):
                return boxes, kps, size
        return np.zeros((0, 5)), np.zeros((0, 5, 2)), 0

    def landmarks(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """Five-point landmarks of every face in an RGB picture, in the order :meth:`analyse` counts
        ``index`` (largest first), found the same way (BGR, detector sizes retried)."""
        boxes, kpss, _ = self.detect(np.ascontiguousarray(image_rgb[..., ::-1]))
        return [np.asarray(kpss[i], float) for i in largest_first(boxes)]

    def analyse(self, image_rgb: np.ndarray, color_order: str = "bgr", index: int = 0,
                allow_missing: bool = False) -> tuple[FaceResult, int]:
        """The ``index``-th largest face; returns it and how many faces there were."""
        from insightface.app.common import Face
        from insightface.utils import face_align

        if color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {COLOR_ORDERS}")
        # insightface expects BGR (as in StableAnimator's training data); "rgb" reproduces the official
        # inference script, which passed RGB by mistake
        img = np.ascontiguousarray(image_rgb[..., ::-1]) if color_order == "bgr" else np.ascontiguousarray(image_rgb)
        h, w = img.shape[:2]
        boxes, kpss, size = self.detect(img)
        if len(boxes) == 0:
            if allow_missing:
                logger.warning("No face found in the reference (tried detector sizes %s); using a ZERO identity "
                               "embedding because allow_missing is on. The identity will not be kept.", DET_SIZES)
                return FaceResult.missing(w, h), 0
            raise NoFaceError(
                f"No face found in the reference image (tried detector sizes {list(DET_SIZES)}). Use a reference "
                "where the face is visible and at least ~40 px wide, or switch on allow_missing to go on without identity.")
        order = largest_first(boxes)
        if index >= len(order):
            raise NoFaceError(f"face_index={index} but only {len(order)} face(s) were found (0 = largest).")
        i = order[index]
        face = Face(bbox=boxes[i, :4], kps=kpss[i], det_score=float(boxes[i, 4]))
        self.rec.get(img, face)
        aligned = face_align.norm_crop(img, landmark=face.kps, image_size=112)
        if color_order == "bgr":
            aligned = aligned[..., ::-1]
        logger.info("Face: %d found (detector size %d); using #%d, score %.2f, box %s", len(boxes), size, index,
                    face.det_score, np.round(face.bbox).astype(int).tolist())
        return FaceResult(np.asarray(face.embedding, np.float32), face.bbox.astype(float), face.kps.astype(float),
                          face.det_score, np.ascontiguousarray(aligned), w, h), len(boxes)


# --- CLIP input the way SVD's pipeline makes it ---------------------------------------------------

def _gaussian_kernel(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    k = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return k / k.sum()


def _blur(x: torch.Tensor, ky: int, kx: int, sy: float, sx: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (x first, then y)."""
    c = x.shape[1]
    kxv = _gaussian_kernel(kx, sx, x.dtype, x.device).view(1, 1, 1, kx).repeat(c, 1, 1, 1)
    kyv = _gaussian_kernel(ky, sy, x.dtype, x.device).view(1, 1, ky, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, ((kx - 1) // 2, kx - 1 - (kx - 1) // 2, 0, 0), mode="reflect"), kxv, groups=c)
    return F.conv2d(F.pad(x, (0, 0, (ky - 1) // 2, ky - 1 - (ky - 1) // 2), mode="reflect"), kyv, groups=c)


def resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SVD's image-encoder resize: Gaussian blur with sigma = (downscale - 1) / 2, then bicubic
    (align_corners=True). ``x [B, C, H, W]``."""
    h, w = x.shape[-2:]
    fy, fx = h / size[0], w / size[1]
    sy, sx = max((fy - 1.0) / 2.0, 0.001), max((fx - 1.0) / 2.0, 0.001)
    ky, kx = int(max(2.0 * 2 * sy, 3)), int(max(2.0 * 2 * sx, 3))
    ky, kx = ky + (ky % 2 == 0), kx + (kx % 2 == 0)
    return F.interpolate(_blur(x, ky, kx, sy, sx), size=size, mode="bicubic", align_corners=True)


def clip_pixels(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, 3]`` in [0, 1] -> CLIP-H pixel values ``[B, 3, 224, 224]``, SVD-style:
    the whole image squashed to 224 x 224 (no centre crop), anti-aliased resize in [-1, 1]."""
    x = image[..., :3].movedim(-1, 1).float() * 2.0 - 1.0
    x = (resize_antialiased(x, (CLIP_SIZE, CLIP_SIZE)) + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# --- per-frame face boxes -------------------------------------------------------------------------

HEAD_JOINTS = (0, 14, 15, 16, 17)     # nose, eyes, ears: a fallback when no face points are visible


def face_box(face_xy, face_score, body_xy, body_score, threshold: float = 0.3):
    """Normalised ``(x1, y1, x2, y2)`` around a person's visible face points, or ``None``."""
    if face_xy is not None and (face_score > threshold).sum() >= 3:
        pts = face_xy[face_score > threshold]
    else:
        sel = [j for j in HEAD_JOINTS if body_score[j] > threshold]
        if len(sel) < 2:
            return None
        pts = body_xy[sel]
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    return float(x1), float(y1), float(x2), float(y2)


def box_mask(box, width: int, height: int, margin: float) -> torch.Tensor:
    """Filled rectangle ``[H, W]`` (like the official face masks), grown by ``margin`` x its size."""
    mask = torch.zeros(height, width)
    if box is None:
        return mask
    x1, y1, x2, y2 = box
    bw, bh = (x2 - x1), (y2 - y1)
    x1, x2 = x1 - margin * bw, x2 + margin * bw
    y1, y2 = y1 - margin * bh, y2 + margin * bh
    c0, c1 = max(0, int(np.floor(x1 * width))), min(width, int(np.ceil(x2 * width)))
    r0, r1 = max(0, int(np.floor(y1 * height))), min(height, int(np.ceil(y2 * height)))
    if c1 > c0 and r1 > r0:
        mask[r0:r1, c0:c1] = 1.0
    return mask


# the 68-point face indices (iBUG order, which DWPose's face points follow) that make insightface's
# five landmarks: image-left eye centre, image-right eye centre, nose tip, image-left and image-right
# mouth corner -- the points ArcFace's training crops were aligned on
FIVE_POINT_GROUPS = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


def five_points(face_xy, face_score, threshold: float = 0.3) -> np.ndarray | None:
    """insightface's five landmarks ``[5, 2]`` from a person's 68 face points (same coordinates), or
    ``None`` when any of the 15 points they are made of is below ``threshold`` (a face turned away or
    hidden): a centre made of the visible half of an eye would pull the alignment sideways."""
    if face_xy is None or face_score is None:
        return None
    xy, score = np.asarray(face_xy, float), np.asarray(face_score, float)
    if len(xy) < 68 or any((score[list(g)] <= threshold).any() for g in FIVE_POINT_GROUPS):
        return None
    return np.stack([xy[list(g)].mean(0) for g in FIVE_POINT_GROUPS])


@dataclass(frozen=True)
class FaceLandmarks:
    """Per-frame five face points (see :func:`five_points`) in pixels of a ``width x height`` frame;
    ``None`` where a frame has too few visible face points. What face refinement aligns each frame on."""

    points: tuple
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class FaceConditioning:
    """What the UNet's cross-attention gets: ``[CLIP token, face tokens]``.

    ``clip_embeds [1, 1, D]`` (SVD's CLIP image embedding of the reference), ``face_tokens [1, 4, D]``
    (Face Encoder output). The unconditional pass uses zeros for both, as the official pipeline does.
    """

    clip_embeds: torch.Tensor
    face_tokens: torch.Tensor

    def __deepcopy__(self, memo):
        return self

    @property
    def context(self) -> torch.Tensor:
        return torch.cat([self.clip_embeds, self.face_tokens], dim=1)   # [1, 1 + 4, D]
