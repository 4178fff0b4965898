"""Pose keypoints: the pack's in-memory form and the ``POSE_KEYPOINT`` format of comfyui_controlnet_aux.

``POSE_KEYPOINT`` is a list with one dict per frame::

    {"people": [{"pose_keypoints_2d": [x, y, c] * 18,        # OpenPose-18 body, neck at index 1
                 "face_keypoints_2d": [x, y, c] * 70 | None, # 68 face points + the two eyes
                 "hand_left_keypoints_2d": [x, y, c] * 21 | None,
                 "hand_right_keypoints_2d": [x, y, c] * 21 | None}, ...],
     "canvas_height": H, "canvas_width": W}

Coordinates are pixels of the canvas. controlnet_aux writes ``c = 1.0`` for a detected point and
``0, 0, 0`` for a missing one, and its readers drop any point with ``c < 1``. To stay readable by
them we write the same (a point counts as detected above ``threshold`` = 0.3), and keep what the
official pipeline still needs in an extra per-person key ``"ida_scores"`` that other packs ignore::

    "ida_scores": {"body": [s] * 18, "face": [s] * 68 | None, "hand_left": ..., "hand_right": ...,
                   "low_xy": {"<part>": [[index, x_px, y_px], ...]},   # points the standard lists zero
                   "rank": k}                                          # detector order, 0 = best box

The scores are written at full precision: the official drawing scales colours by them with
``int()``, so a rounded score can change a pixel. ``low_xy`` keeps the coordinates of the points at
or below the threshold, because the official drawing still draws hand and face points at
brightness x score and the official alignment fit uses every driving joint whatever its score.
``rank`` is the person's position in the detector's order, which the official drawing stacks people
in. When reading, the standard lists win for every point they mark detected (so edits made by other
tools are kept); ``low_xy`` only fills points they mark missing.

A point without coordinates is ``(0, 0)`` with score 0 (:func:`known`); it stays that way through
:meth:`Person.mapped`, so a transform never turns "missing" into a real place. Points in
``[0, 1]`` are read as normalised coordinates (the OpenPose node writes those).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BODY, FACE, HAND = 18, 68, 21
SCORE_KEY = "ida_scores"
LOW_KEY = "low_xy"
RANK_KEY = "rank"
THRESHOLD = 0.3  # controlnet_aux's "detected" cut, also the official body visibility threshold
PARTS = (("body", "pose_keypoints_2d", BODY), ("face", "face_keypoints_2d", FACE),
         ("hand_left", "hand_left_keypoints_2d", HAND), ("hand_right", "hand_right_keypoints_2d", HAND))


@dataclass
class Person:
    """Normalised ``[N, 2]`` coordinates and ``[N]`` scores per part; a missing part is ``None``."""

    body: np.ndarray
    body_score: np.ndarray
    face: np.ndarray | None = None
    face_score: np.ndarray | None = None
    hand_left: np.ndarray | None = None
    hand_left_score: np.ndarray | None = None
    hand_right: np.ndarray | None = None
    hand_right_score: np.ndarray | None = None
    rank: int | None = None  # position in the detector's order (best box first); None if unknown

    def parts(self):
        for name, _, _ in PARTS:
            yield name, getattr(self, name), getattr(self, f"{name}_score")

    def mapped(self, fn) -> "Person":
        """A copy with ``fn`` applied to every part's coordinates (scores kept); points without
        coordinates stay ``(0, 0)``."""
        out = {}
        for name, xy, sc in self.parts():
            if xy is None:
                out[name] = None
            else:
                moved = np.array(fn(xy.copy()), dtype=float)
                if sc is not None:
                    moved[~known(xy, sc)] = 0.0
                out[name] = moved
            out[f"{name}_score"] = None if sc is None else sc.copy()
        return Person(**out, rank=self.rank)


@dataclass
class PoseFrame:
    width: int
    height: int
    people: list[Person] = field(default_factory=list)


def known(xy: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the points that have coordinates. The format marks a point without any as
    ``(0, 0)`` with score 0; a DWPose point always has coordinates, even at score 0."""
    xy, score = np.asarray(xy, float), np.asarray(score, float)
    return (score > 0) | np.any(xy != 0, axis=-1)


def _flat(xy, score, size, threshold) -> tuple[list[float] | None, list[list[float]]]:
    """Standard ``[x, y, c]`` list and the ``[index, x, y]`` pixel entries of the points it zeroes."""
    if xy is None:
        return None, []
    w, h = size
    out, low = [], []
    for i, ((x, y), s, has) in enumerate(zip(xy, score, known(xy, score))):
        if s > threshold:
            out += [float(x * w), float(y * h), 1.0]
        else:
            out += [0.0, 0.0, 0.0]
            if has:
                low.append([i, float(x * w), float(y * h)])
    return out, low


def to_pose_keypoint(frames: list[PoseFrame], threshold: float = THRESHOLD) -> list[dict]:
    """Our frames -> controlnet_aux ``POSE_KEYPOINT`` (pixels, c in {0, 1}) plus the side key."""
    out = []
    for fr in frames:
        people = []
        for p in fr.people:
            d, low = {}, {}
            for name, key, _ in PARTS:
                d[key], low_part = _flat(getattr(p, name), getattr(p, f"{name}_score"), (fr.width, fr.height), threshold)
                if low_part:
                    low[name] = low_part
            if d["face_keypoints_2d"] is not None:
                # controlnet_aux's 70-point face: the 68 landmarks, then the right and left eye
                d["face_keypoints_2d"] += d["pose_keypoints_2d"][14 * 3:16 * 3]
            side = {name: None if getattr(p, f"{name}_score") is None else
                    [float(s) for s in getattr(p, f"{name}_score")] for name, _, _ in PARTS}
            if low:
                side[LOW_KEY] = low
            if p.rank is not None:
                side[RANK_KEY] = int(p.rank)
            d[SCORE_KEY] = side
            people.append(d)
        out.append({"people": people, "canvas_height": int(fr.height), "canvas_width": int(fr.width)})
    return out


class PoseFormatError(ValueError):
    """A POSE_KEYPOINT value does not have the expected structure."""


def _part(flat, n, size, scores, low) -> tuple[np.ndarray | None, np.ndarray | None]:
    if flat is None:
        return None, None
    arr = np.asarray(flat, dtype=float)
    if arr.size % 3:
        raise PoseFormatError(f"A keypoint list has {arr.size} numbers, not a multiple of 3 (x, y, c).")
    arr = arr.reshape(-1, 3)[:n]
    if len(arr) < n:
        arr = np.concatenate([arr, np.zeros((n - len(arr), 3))])
    present = arr[:, 2] > 0
    xy = arr[:, :2].copy()
    if present.any() and np.abs(xy[present]).max() > 1.0:  # pixels -> normalised
        xy = xy / np.array(size, float)
    side = None if scores is None else np.asarray(scores, float)[:n]
    if side is not None and len(side) < n:
        side = np.concatenate([side, np.zeros(n - len(side))])
    score = np.where(present, arr[:, 2] if side is None else side, 0.0)
    for entry in low or ():
        try:
            i, x, y = int(entry[0]), float(entry[1]), float(entry[2])
        except (TypeError, ValueError, IndexError) as exc:
            raise PoseFormatError(f"An {SCORE_KEY}.{LOW_KEY} entry is {entry!r}, not [index, x, y].") from exc
        # only points the standard list marks missing: a point another tool placed there wins
        if 0 <= i < n and not present[i]:
            xy[i] = (x / size[0], y / size[1])
            score[i] = 0.0 if side is None else side[i]
    return xy, score


def from_pose_keypoint(value) -> list[PoseFrame]:
    """controlnet_aux ``POSE_KEYPOINT`` (one dict or a list of them) -> our frames."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise PoseFormatError("POSE_KEYPOINT must be a non-empty list of per-frame dicts.")
    frames = []
    for i, d in enumerate(value):
        if not isinstance(d, dict) or "people" not in d or "canvas_width" not in d or "canvas_height" not in d:
            raise PoseFormatError(f"Frame {i} is not an OpenPose dict with people/canvas_width/canvas_height.")
        size = (int(d["canvas_width"]), int(d["canvas_height"]))
        people = []
        for p in d["people"]:
            side = p.get(SCORE_KEY) or {}
            low = side.get(LOW_KEY) or {}
            kw = {}
            for name, key, n in PARTS:
                kw[name], kw[f"{name}_score"] = _part(p.get(key), n, size, side.get(name), low.get(name))
            if kw["body"] is None:
                kw["body"], kw["body_score"] = np.zeros((BODY, 2)), np.zeros(BODY)
            rank = side.get(RANK_KEY)
            people.append(Person(**kw, rank=None if rank is None else int(rank)))
        frames.append(PoseFrame(size[0], size[1], people))
    return frames


def apply_edits(value: list[dict], edits: dict) -> list[dict]:
    """A copy of ``value`` (POSE_KEYPOINT) with body joints moved:
    ``edits = {"<frame>": {"<person>": {"<joint>": [x_px, y_px]}}}``. A moved joint counts as detected."""
    import copy

    # frame by frame: frames that are one shared object upstream must not share an edit
    out = [copy.deepcopy(frame) for frame in value]
    for f, people in edits.items():
        frame = int(f)
        if not 0 <= frame < len(out):
            raise PoseFormatError(f"An edit names frame {frame}, but there are {len(out)} frames.")
        for p, joints in people.items():
            person = int(p)
            if not 0 <= person < len(out[frame]["people"]):
                raise PoseFormatError(f"An edit names person {person} in frame {frame}, which shows "
                                      f"{len(out[frame]['people'])} people.")
            entry = out[frame]["people"][person]
            flat = entry.setdefault("pose_keypoints_2d", [0.0] * BODY * 3)
            for j, (x, y) in joints.items():
                j = int(j)
                if not 0 <= j < BODY:
                    raise PoseFormatError(f"Joint {j} is not one of the {BODY} body joints.")
                flat[3 * j:3 * j + 3] = [float(x), float(y), 1.0]
                side = entry.get(SCORE_KEY, {})
                scores = side.get("body")
                if scores is not None:
                    scores[j] = max(scores[j], 1.0)
                low = side.get(LOW_KEY, {})
                if low.get("body"):
                    # the joint is now in the standard list; its old hidden place is stale
                    low["body"] = [e for e in low["body"] if int(e[0]) != j]
    return out
