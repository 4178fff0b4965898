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
    """A POSE_KEYPOINT value does not have the expected structure; the message says where and what."""


MAX_CANVAS_SIDE = 16384   # pixels; a canvas is the image the poses were taken from, never larger than this


def _numbers(values, where: str, field_name: str) -> np.ndarray:
    if not isinstance(values, (list, tuple)):
        raise PoseFormatError(f"{where}: {field_name} is a {type(values).__name__}; expected a list of numbers.")
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PoseFormatError(f"{where}: {field_name}[{k}] is {v!r}; expected a number.")
    arr = np.asarray(values, dtype=float)
    if not np.isfinite(arr).all():
        k = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise PoseFormatError(f"{where}: {field_name}[{k}] is {values[k]!r}; expected a finite number.")
    return arr


def _part(flat, n, size, scores, low, where: str, key: str, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if flat is None:
        return None, None
    arr = _numbers(flat, where, key)
    if arr.size % 3:
        raise PoseFormatError(f"{where}: {key} has {arr.size} numbers, not a multiple of 3 (x, y, confidence).")
    arr = arr.reshape(-1, 3)[:n]
    if len(arr) < n:
        arr = np.concatenate([arr, np.zeros((n - len(arr), 3))])
    present = arr[:, 2] > 0
    xy = arr[:, :2].copy()
    if present.any() and np.abs(xy[present]).max() > 1.0:  # pixels -> normalised
        xy = xy / np.array(size, float)
    side = None if scores is None else _numbers(scores, where, f"{SCORE_KEY}.{name}")[:n]
    if side is not None and len(side) < n:
        side = np.concatenate([side, np.zeros(n - len(side))])
    score = np.where(present, arr[:, 2] if side is None else side, 0.0)
    if not isinstance(low or [], (list, tuple)):
        raise PoseFormatError(f"{where}: {SCORE_KEY}.{LOW_KEY}.{name} is a {type(low).__name__}; expected a list.")
    for entry in low or ():
        try:
            i, x, y = int(entry[0]), float(entry[1]), float(entry[2])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise PoseFormatError(f"{where}: a {SCORE_KEY}.{LOW_KEY}.{name} entry is {entry!r}, not [index, x, y].") from exc
        # only points the standard list marks missing: a point another tool placed there wins
        if 0 <= i < n and not present[i] and np.isfinite([x, y]).all():
            xy[i] = (x / size[0], y / size[1])
            score[i] = 0.0 if side is None else side[i]
    return xy, score


def _canvas_side(d: dict, key: str, where: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or not 1 <= v <= MAX_CANVAS_SIDE:
        raise PoseFormatError(f"{where}: {key} is {v!r}; expected a whole number of pixels from 1 to "
                              f"{MAX_CANVAS_SIDE} (the size of the image the poses were taken from).")
    return int(v)


def _side_dict(p: dict, where: str) -> dict:
    side = p.get(SCORE_KEY) or {}
    if not isinstance(side, dict):
        raise PoseFormatError(f"{where}: {SCORE_KEY} is a {type(side).__name__}; expected a dict (or leave it out).")
    low = side.get(LOW_KEY) or {}
    if not isinstance(low, dict):
        raise PoseFormatError(f"{where}: {SCORE_KEY}.{LOW_KEY} is a {type(low).__name__}; expected a dict.")
    return side


def _person(p, size, where: str) -> Person:
    if not isinstance(p, dict):
        raise PoseFormatError(f"{where} is a {type(p).__name__}; expected a dict with pose_keypoints_2d.")
    side = _side_dict(p, where)
    low = side.get(LOW_KEY) or {}
    kw = {}
    for name, key, n in PARTS:
        kw[name], kw[f"{name}_score"] = _part(p.get(key), n, size, side.get(name), low.get(name), where, key, name)
    if kw["body"] is None:
        kw["body"], kw["body_score"] = np.zeros((BODY, 2)), np.zeros(BODY)
    rank = side.get(RANK_KEY)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise PoseFormatError(f"{where}: {SCORE_KEY}.{RANK_KEY} is {rank!r}; expected a whole number.")
    return Person(**kw, rank=rank)


def from_pose_keypoint(value) -> list[PoseFrame]:
    """controlnet_aux ``POSE_KEYPOINT`` (one dict or a list of them) -> our frames.

    Anything that is not that format is refused with the frame, person and field that are wrong.
    """
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise PoseFormatError(f"POSE_KEYPOINT must be a non-empty list of per-frame dicts, not "
                              f"{'an empty list' if isinstance(value, (list, tuple)) else type(value).__name__}.")
    frames = []
    for i, d in enumerate(value):
        where = f"frame {i}"
        if not isinstance(d, dict) or "people" not in d or "canvas_width" not in d or "canvas_height" not in d:
            raise PoseFormatError(f"{where} is not an OpenPose dict with people, canvas_width and canvas_height.")
        size = (_canvas_side(d, "canvas_width", where), _canvas_side(d, "canvas_height", where))
        if not isinstance(d["people"], (list, tuple)):
            raise PoseFormatError(f"{where}: people is a {type(d['people']).__name__}; expected a list of person dicts.")
        people = [_person(p, size, f"{where}, person {j}") for j, p in enumerate(d["people"])]
        frames.append(PoseFrame(size[0], size[1], people))
    return frames


EDITS_FORMAT = '{"<frame>": {"<person>": {"<joint 0-17>": [x, y]}}} in canvas pixels'


def _index(key, what: str, where: str) -> int:
    text = str(key).strip()
    if not text.isdigit():
        raise PoseFormatError(f"edits{where}: {key!r} is not a {what} number; expected {EDITS_FORMAT}.")
    return int(text)


def parse_edits(edits) -> dict[int, dict[int, dict[int, tuple[float, float]]]]:
    """``edits`` (the Pose Edit widget's parsed JSON) checked entry by entry; the first bad entry is named."""
    if not isinstance(edits, dict):
        raise PoseFormatError(f"edits is a JSON {type(edits).__name__}; expected an object: {EDITS_FORMAT}, "
                              "or {} for no edits.")
    out = {}
    for f, people in edits.items():
        frame = _index(f, "frame", "")
        out.setdefault(frame, {})
        if not isinstance(people, dict):
            raise PoseFormatError(f'edits["{f}"] is {people!r}; expected an object of people: {EDITS_FORMAT}.')
        for p, joints in people.items():
            person = _index(p, "person", f'["{f}"]')
            out[frame].setdefault(person, {})
            if not isinstance(joints, dict):
                raise PoseFormatError(f'edits["{f}"]["{p}"] is {joints!r}; expected an object of joints: {EDITS_FORMAT}.')
            for j, xy in joints.items():
                joint = _index(j, "joint", f'["{f}"]["{p}"]')
                where = f'edits["{f}"]["{p}"]["{j}"]'
                if joint >= BODY:
                    raise PoseFormatError(f"Joint {joint} is not one of the {BODY} body joints (0-{BODY - 1}): remove {where}.")
                ok = (isinstance(xy, (list, tuple)) and len(xy) == 2
                      and all(isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c) for c in xy))
                if not ok:
                    raise PoseFormatError(f"{where} is {xy!r}; expected [x, y], two numbers in canvas pixels.")
                out[frame][person][joint] = (float(xy[0]), float(xy[1]))
    return out


def apply_edits(value: list[dict], edits: dict) -> list[dict]:
    """A copy of ``value`` (POSE_KEYPOINT) with body joints moved:
    ``edits = {"<frame>": {"<person>": {"<joint>": [x_px, y_px]}}}``. A moved joint counts as detected."""
    import copy

    moves = parse_edits(edits)
    # frame by frame: frames that are one shared object upstream must not share an edit
    out = [copy.deepcopy(frame) for frame in value]
    for frame, people in moves.items():
        if frame >= len(out):
            raise PoseFormatError(f"An edit names frame {frame}, but there are {len(out)} frames (0-{len(out) - 1}). "
                                  "Remove that entry from edits.")
        for person, joints in people.items():
            if person >= len(out[frame]["people"]):
                raise PoseFormatError(f"An edit names person {person} in frame {frame}, which shows "
                                      f"{len(out[frame]['people'])} people. Remove that entry from edits.")
            entry = out[frame]["people"][person]
            flat = entry.setdefault("pose_keypoints_2d", [0.0] * BODY * 3)
            if len(flat) < BODY * 3:
                flat.extend([0.0] * (BODY * 3 - len(flat)))
            for j, (x, y) in joints.items():
                flat[3 * j:3 * j + 3] = [x, y, 1.0]
                side = entry.get(SCORE_KEY) or {}
                scores = side.get("body")
                if scores is not None and j < len(scores):
                    scores[j] = max(scores[j], 1.0)
                low = side.get(LOW_KEY) or {}
                if low.get("body"):
                    # the joint is now in the standard list; its old hidden place is stale
                    low["body"] = [e for e in low["body"] if int(e[0]) != j]
    return out
