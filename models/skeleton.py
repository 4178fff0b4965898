"""Skeleton images drawn the way StableAnimator drew its training poses (PoseNet was trained on them).

Facts (official ``DWPose/skeleton_extraction.py``, ``draw_pose``): the canvas is the target size
scaled so its short side is 2160 px. Body: the first 17 of the 19 OpenPose limbs as filled ellipses
of half-width 4 px, colour x (score_a x score_b), skipped when either score < 0.3, drawn limb by limb
and, within a limb, person by person; then the whole canvas x 0.6; then joints (score > 0.3) as
radius-4 discs coloured x score, joint by joint across people. Hands: the first hand of every person,
then the second hand of every person; per hand 20 edges as 2 px lines in HSV hues x
int(score_a x score_b x 255), then radius-4 points (0, 0, int(score x 255)). Face points: radius 3,
grey = int(score x 255). Hands and face have **no** score threshold: a low-score point is drawn dim,
and only a point at x or y <= 0.01 px is skipped. Finally a bilinear resize to the target size.
Values are RGB with the palette's literal triples (limb 0 is red), as in the saved PNGs.

People are stacked in the detector's order (``Person.rank``, best box first), which is the order the
official code holds them in; without ranks the list order is used.
"""
from __future__ import annotations

import colorsys

import numpy as np

from .keypoints import Person

LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17)]  # 0-based; the last two are never drawn
DRAWN_LIMBS = 17
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
STICK_WIDTH = 4
LIMB_DIM = 0.6
VISIBLE = 0.3
EPS = 0.01
CANVAS_SHORT_SIDE = 2160


# The official canvas grows with the keypoints' aspect ratio (short side 2160). Up to 4:1 it is drawn
# exactly so; past that the canvas is scaled down to this many pixels, which draws limbs and joints
# relatively thicker than the official images, and past MAX_ASPECT it is refused: nobody's pose is there.
CANVAS_MAX_PIXELS = CANVAS_SHORT_SIDE * CANVAS_SHORT_SIDE * 4
MAX_ASPECT = 16.0


def canvas_size(width: int, height: int) -> tuple[int, int]:
    short = min(width, height)
    ratio = CANVAS_SHORT_SIDE / short if short != CANVAS_SHORT_SIDE else 1
    w, h = int(width * ratio), int(height * ratio)
    if w * h > CANVAS_MAX_PIXELS:
        shrink = (CANVAS_MAX_PIXELS / (w * h)) ** 0.5
        w, h = max(1, int(w * shrink)), max(1, int(h * shrink))
    return w, h


def canvas_problem(width: int, height: int) -> str | None:
    """A message for a keypoint canvas too elongated to be a person's image, else None."""
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > MAX_ASPECT:
        return (f"the keypoints' canvas is {width}x{height} (aspect {aspect:.0f}:1); skeletons are drawn for canvases "
                f"up to {MAX_ASPECT:.0f}:1. The poses were taken from a strip, not a picture of a person: extract "
                "them from the reference image or video itself.")
    return None


def _blend(color, alpha) -> list[int]:
    # the weight is one number first (score_a x score_b), then applied: (c x a) x b can round
    # differently from c x (a x b), and int() turns that into a one-level pixel difference
    return [int(c * alpha) for c in color]


def _draw_body(canvas, people: list[Person]) -> np.ndarray:
    import cv2

    h, w = canvas.shape[:2]
    # limb-major: a later limb covers an earlier one whoever it belongs to, as in the official loop
    for i in range(DRAWN_LIMBS):
        a, b = LIMBS[i]
        for p in people:
            xy, sc = p.body, p.body_score
            if sc[a] < VISIBLE or sc[b] < VISIBLE:
                continue
            px, py = xy[[a, b], 0] * w, xy[[a, b], 1] * h
            length = float(np.hypot(px[0] - px[1], py[0] - py[1]))
            angle = np.degrees(np.arctan2(py[0] - py[1], px[0] - px[1]))
            poly = cv2.ellipse2Poly((int(px.mean()), int(py.mean())), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, _blend(COLORS[i], sc[a] * sc[b]))
    # in place, in uint8: the official ``(canvas * 0.6).astype(uint8)`` truncates the same way but makes
    # an 8x float64 copy of a canvas that can hold tens of megapixels
    np.multiply(canvas, LIMB_DIM, out=canvas, casting="unsafe")
    for i in range(len(COLORS)):
        for p in people:
            if p.body_score[i] > VISIBLE:
                x, y = int(p.body[i, 0] * w), int(p.body[i, 1] * h)
                cv2.circle(canvas, (x, y), 4, _blend(COLORS[i], p.body_score[i]), thickness=-1)
    return canvas


def _draw_hand(canvas, xy: np.ndarray, score: np.ndarray) -> None:
    import cv2

    h, w = canvas.shape[:2]
    pts = [(int(x * w), int(y * h)) for x, y in xy]
    for ie, (a, b) in enumerate(HAND_EDGES):
        (x1, y1), (x2, y2) = pts[a], pts[b]
        if min(x1, y1, x2, y2) > EPS:
            hue = np.array(colorsys.hsv_to_rgb(ie / len(HAND_EDGES), 1.0, 1.0))
            cv2.line(canvas, (x1, y1), (x2, y2), hue * int(score[a] * score[b] * 255), thickness=2)
    for (x, y), s in zip(pts, score):
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), 4, (0, 0, int(s * 255)), thickness=-1)


def _draw_face(canvas, xy: np.ndarray, score: np.ndarray) -> None:
    import cv2

    h, w = canvas.shape[:2]
    for (x, y), s in zip(xy, score):
        x, y = int(x * w), int(y * h)
        if x > EPS and y > EPS:
            g = int(s * 255)
            cv2.circle(canvas, (x, y), 3, (g, g, g), thickness=-1)


def detector_order(people: list[Person]) -> list[Person]:
    """``people`` in the detector's order where every person has a rank, else as given."""
    if people and all(p.rank is not None for p in people):
        return sorted(people, key=lambda p: p.rank)
    return list(people)


def draw_skeleton(people: list[Person], width: int, height: int) -> np.ndarray:
    """``[height, width, 3]`` uint8 RGB pose image of ``people`` (normalised coordinates)."""
    import cv2

    people = detector_order(people)
    cw, ch = canvas_size(width, height)
    canvas = np.zeros((ch, cw, 3), dtype=np.uint8)
    canvas = _draw_body(canvas, people)
    # the official code stacks every person's first hand, then every person's second hand
    for name in ("hand_left", "hand_right"):
        for p in people:
            xy, sc = getattr(p, name), getattr(p, f"{name}_score")
            if xy is not None:
                _draw_hand(canvas, xy, sc)
    for p in people:
        if p.face is not None:
            _draw_face(canvas, p.face, p.face_score)
    return cv2.resize(canvas, (width, height))
