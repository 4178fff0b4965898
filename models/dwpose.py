"""DWPose whole-body keypoints from the official ONNX files, with the official pre/post-processing.

``yolox_l.onnx`` finds people; ``dw-ll_ucoco_384.onnx`` (RTMPose, SimCC head) gives 133
COCO-WholeBody keypoints per person. The output is re-ordered the way StableAnimator's DWPose code
does: a neck (mean of the shoulders) is inserted and the body re-indexed to OpenPose-18, giving 134
points: body ``[0:18]``, feet ``[18:24]``, face ``[24:92]``, the two hands ``[92:113]``, ``[113:134]``.

When the detector finds nobody, the whole image is the person box, as the official pose
pre-processing does (``dwpose_utils/onnxpose.py``): a dancer too close to the camera for YOLOX, or
cut by the frame edge, still gets a skeleton. The result then always holds at least one person;
whether that person is credible is for the caller to judge from the scores (``WholeBody.whole_image``
says when it happened).

Images are RGB uint8 ``[H, W, 3]``. onnxruntime and OpenCV are imported when a model is built.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from .model_files import onnx_load_message

logger = logging.getLogger(__name__)

DET_SIZE = (640, 640)
DET_PAD = 114
DET_NMS = 0.45
DET_SCORE = 0.1        # candidate boxes kept for NMS
PERSON_SCORE = 0.3     # boxes kept as people after NMS
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
SIMCC_SPLIT = 2.0
NECK_SCORE = 0.3
_MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
_OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]


# --- detection -----------------------------------------------------------------------------------

def letterbox(img: np.ndarray, size=DET_SIZE) -> tuple[np.ndarray, float]:
    """Top-left letterbox on a pad-114 canvas; no /255 and no channel swap (the model takes RGB 0-255)."""
    import cv2

    h, w = img.shape[:2]
    r = min(size[0] / h, size[1] / w)
    canvas = np.full((size[0], size[1], 3), DET_PAD, np.uint8)
    resized = cv2.resize(img, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), r


def decode_yolox(out: np.ndarray, size=DET_SIZE, strides=(8, 16, 32)) -> np.ndarray:
    """Raw ``[N, 5+C]`` grid outputs -> boxes ``[N, 4]`` (cx, cy, w, h in letterbox pixels) and scores."""
    grids, expanded = [], []
    for s in strides:
        hs, ws = size[0] // s, size[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    grids, expanded = np.concatenate(grids), np.concatenate(expanded)
    out = out.astype(np.float64).copy()
    out[:, :2] = (out[:, :2] + grids) * expanded
    out[:, 2:4] = np.exp(out[:, 2:4]) * expanded
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS with the +1 pixel area convention of the YOLOX reference code."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][iou <= thr]
    return keep


def person_boxes(raw: np.ndarray, ratio: float) -> np.ndarray:
    """Decoded YOLOX output of one image -> person boxes ``[P, 4]`` (x1, y1, x2, y2) in image pixels."""
    dec = decode_yolox(raw)
    cxcywh, scores = dec[:, :4], dec[:, 4:5] * dec[:, 5:]
    boxes = np.stack([cxcywh[:, 0] - cxcywh[:, 2] / 2, cxcywh[:, 1] - cxcywh[:, 3] / 2,
                      cxcywh[:, 0] + cxcywh[:, 2] / 2, cxcywh[:, 1] + cxcywh[:, 3] / 2], 1) / ratio
    # class-aware NMS; only class 0 (person) survives the final filter, so only it is computed
    person = scores[:, 0]
    cand = np.nonzero(person > DET_SCORE)[0]
    if cand.size == 0:
        return np.zeros((0, 4))
    keep = cand[nms(boxes[cand], person[cand], DET_NMS)]
    keep = keep[person[keep] > PERSON_SCORE]
    return boxes[keep]


# --- pose ----------------------------------------------------------------------------------------

def box_center_scale(box: np.ndarray, input_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    x1, y1, x2, y2 = box
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    scale = np.array([x2 - x1, y2 - y1]) * BOX_PADDING
    aspect = input_wh[0] / input_wh[1]
    w, h = scale
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def warp_matrix(center: np.ndarray, scale: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Three-point affine (mmpose convention, no rotation): the box's width maps onto the input width."""
    import cv2

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]])

    dst_w, dst_h = out_wh
    src0, dst0 = center, np.array([dst_w * 0.5, dst_h * 0.5])
    src1, dst1 = center + np.array([0.0, scale[0] * -0.5]), dst0 + np.array([0.0, dst_w * -0.5])
    src = np.stack([src0, src1, third(src0, src1)]).astype(np.float32)
    dst = np.stack([dst0, dst1, third(dst0, dst1)]).astype(np.float32)
    return cv2.getAffineTransform(src, dst)


def crop_for_pose(img: np.ndarray, box: np.ndarray, input_wh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import cv2

    center, scale = box_center_scale(box, input_wh)
    crop = cv2.warpAffine(img, warp_matrix(center, scale, input_wh), tuple(input_wh), flags=cv2.INTER_LINEAR)
    x = ((crop - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
    return x, center, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[K, Wx]``, ``[K, Wy]`` -> locations ``[K, 2]`` in input pixels and scores ``[K]`` (min of the two maxima)."""
    locs = np.stack([simcc_x.argmax(1), simcc_y.argmax(1)], -1).astype(np.float32)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    locs[scores <= 0.0] = -1
    return locs / SIMCC_SPLIT, scores


def to_openpose_order(kpts: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[P,133,2]``/``[P,133]`` COCO-WholeBody -> ``[P,134,2]``/``[P,134]`` with the neck and OpenPose body order."""
    info = np.concatenate([kpts, scores[..., None]], -1)
    neck = info[:, [5, 6]].mean(1)
    neck[:, 2] = np.logical_and(info[:, 5, 2] > NECK_SCORE, info[:, 6, 2] > NECK_SCORE).astype(info.dtype)
    new = np.insert(info, 17, neck, axis=1)
    new[:, _OPENPOSE_IDX] = new[:, _MMPOSE_IDX]
    return new[..., :2], new[..., 2]


# --- the two files ---------------------------------------------------------------------------------

DET_FILE, POSE_FILE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
DET_ANCHORS = sum((DET_SIZE[0] // s) * (DET_SIZE[1] // s) for s in (8, 16, 32))   # 8400 grid cells
WHOLEBODY_POINTS = 133


class DWPoseModelError(ValueError):
    """A DWPose ONNX file is damaged, or is not the model its slot of Load DWPose needs."""


def open_session(path: str, slot: str, providers: list[str]):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, providers=providers)
    except Exception as exc:  # onnxruntime's error classes share no base below Exception
        raise DWPoseModelError(onnx_load_message(path, exc, slot)) from exc


def _signature(session) -> tuple[list[list], list[list]]:
    return [list(i.shape) for i in session.get_inputs()], [list(o.shape) for o in session.get_outputs()]


def _fits(shape: list, want: list) -> bool:
    """``shape`` matches ``want`` where both are known (ONNX leaves dynamic axes as names or None)."""
    return len(shape) == len(want) and all(not isinstance(s, int) or w is None or s == w for s, w in zip(shape, want))


def _is_detector(inputs, outputs) -> bool:
    # what detect() relies on: one 640x640 RGB input, and a first output of YOLOX grid rows
    # (xy, wh, objectness, then class scores with the person first); yolox_l.onnx has no other output
    return (len(inputs) == 1 and _fits(inputs[0], [None, 3, *DET_SIZE]) and len(outputs) >= 1
            and _fits(outputs[0], [None, DET_ANCHORS, None])
            and (not isinstance(outputs[0][2], int) or outputs[0][2] >= 6))


def _is_pose_model(inputs, outputs) -> bool:
    # what keypoints() relies on: one crop of a fixed size, and first two outputs that are the SimCC x and y
    # maps of the 133 points at SIMCC_SPLIT bins per pixel
    if len(inputs) != 1 or len(inputs[0]) != 4 or len(outputs) < 2:
        return False
    _, ch, h, w = inputs[0]
    if ch != 3 or not isinstance(h, int) or not isinstance(w, int):
        return False
    return (_fits(outputs[0], [None, WHOLEBODY_POINTS, int(w * SIMCC_SPLIT)])
            and _fits(outputs[1], [None, WHOLEBODY_POINTS, int(h * SIMCC_SPLIT)]))


def _describe(inputs, outputs) -> str:
    return (f"it takes {len(inputs)} input(s) {', '.join(map(str, inputs))} and gives {len(outputs)} output(s) "
            f"{', '.join(map(str, outputs))}")


def check_detector(session, path: str) -> None:
    inputs, outputs = _signature(session)
    if _is_detector(inputs, outputs):
        return
    name = os.path.basename(path)
    if _is_pose_model(inputs, outputs):
        raise DWPoseModelError(
            f"detector '{name}' is the whole-body pose model, not the person detector. Pick {DET_FILE} as the "
            f"detector (and {POSE_FILE} as the pose_model) in Load DWPose.")
    raise DWPoseModelError(
        f"detector '{name}' ({path}) is not DWPose's YOLOX person detector: {_describe(inputs, outputs)}, but the "
        f"detector takes one [1, 3, 640, 640] image and gives one [1, {DET_ANCHORS}, 85] output. Pick {DET_FILE} "
        "(download it again if it is that file).")


def check_pose_model(session, path: str) -> None:
    inputs, outputs = _signature(session)
    if _is_pose_model(inputs, outputs):
        return
    name = os.path.basename(path)
    if _is_detector(inputs, outputs):
        raise DWPoseModelError(
            f"pose_model '{name}' is a person detector, not the whole-body pose model. Pick {POSE_FILE} as the "
            f"pose_model (and {DET_FILE} as the detector) in Load DWPose.")
    raise DWPoseModelError(
        f"pose_model '{name}' ({path}) is not DWPose's whole-body pose model (RTMPose): {_describe(inputs, outputs)}, "
        f"but the pose model takes one [1, 3, 384, 288] crop and gives simcc_x [1, {WHOLEBODY_POINTS}, 576] and "
        f"simcc_y [1, {WHOLEBODY_POINTS}, 768]. Pick {POSE_FILE} (download it again if it is that file).")


@dataclass
class WholeBody:
    """Keypoints of the people in one image: ``xy [P,134,2]`` normalised by (W, H), ``score [P,134]``."""

    xy: np.ndarray
    score: np.ndarray
    boxes: np.ndarray       # the boxes the pose model was run on, in the detector's order
    width: int
    height: int
    whole_image: bool = False  # nobody was detected: the one "person" comes from the whole image


class DWPose:
    """The two ONNX sessions and the full pipeline; ``providers`` in onnxruntime's order of preference."""

    def __init__(self, det_path: str, pose_path: str, providers: list[str] | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        self.det = open_session(det_path, "detector", providers)
        check_detector(self.det, det_path)
        self.pose = open_session(pose_path, "pose_model", providers)
        check_pose_model(self.pose, pose_path)
        shape = self.pose.get_inputs()[0].shape             # [N, 3, h, w]
        self.pose_wh = (int(shape[3]), int(shape[2]))
        self.pose_batch = shape[0] if isinstance(shape[0], int) else None
        self.providers = self.det.get_providers()

    def detect(self, img: np.ndarray) -> np.ndarray:
        x, r = letterbox(img)
        raw = self.det.run(None, {self.det.get_inputs()[0].name: x})[0][0]
        return person_boxes(raw, r)

    def keypoints(self, img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(boxes) == 0:
            return np.zeros((0, 134, 2)), np.zeros((0, 134))
        crops = [crop_for_pose(img, b, self.pose_wh) for b in boxes]
        name = self.pose.get_inputs()[0].name
        if self.pose_batch is None:                          # dynamic batch: one call for all people
            outs = self.pose.run(None, {name: np.concatenate([c[0] for c in crops])})
            sx, sy = outs[0], outs[1]
        else:
            runs = [self.pose.run(None, {name: c[0]}) for c in crops]
            sx, sy = np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])
        kpts, scores = [], []
        for (_, center, scale), x, y in zip(crops, sx, sy):
            locs, sc = decode_simcc(x, y)
            kpts.append(locs / np.array(self.pose_wh, np.float32) * scale + center - scale / 2)
            scores.append(sc)
        return to_openpose_order(np.stack(kpts), np.stack(scores))

    def __call__(self, img: np.ndarray) -> WholeBody:
        h, w = img.shape[:2]
        boxes = self.detect(img)
        whole = len(boxes) == 0
        if whole:
            # official fallback: run the pose model on the whole image rather than return nobody
            boxes = np.array([[0.0, 0.0, float(w), float(h)]])
        kpts, scores = self.keypoints(img, boxes)
        return WholeBody(kpts / np.array([w, h], float), scores, boxes, w, h, whole_image=whole)
