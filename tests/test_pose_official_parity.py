"""StableAnimator's pose path re-stated from its description (DWPose output -> one global fit ->
skeleton images) and compared pixel for pixel with the pack's nodes' path, which goes through
POSE_KEYPOINT twice (Pose Extract -> Pose Align -> Render Skeleton).

The re-statement works on the official data layout: per frame, DWPose's ``[P, 134, 2]`` normalised
points and ``[P, 134]`` scores in the detector's order. Drawing (``draw_pose``): a canvas whose
short side is 2160; limb by limb, person by person, the first 17 limbs as ellipses when both scores
are >= 0.3, colour x (score_a x score_b); canvas x 0.6; joint by joint, person by person, discs
where the score is > 0.3; every person's first hand, then every person's second hand (edges in HSV
hues x int(s_a x s_b x 255), points blue x score) with no score threshold; faces grey x score with
no threshold; a bilinear resize to the reference size. The official BGR->RGB swap before saving and
OpenCV's BGR writing cancel, so the PNG holds the palette triples as drawn. Fit (``get_video_pose``):
reference joints 0,1,2,5,8..17 scoring > 0.3; every frame with exactly one person; a least-squares
line y_ref = a·y_drv + b over all those joints, whatever their driving score; a_x = a_y (the aspect
terms cancel when reference and driving share an aspect ratio, the only case where the pack's
aspect fix and the original agree); b_x = mean(x_ref - a_x·x_drv); applied to every point.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

from identity_animator.models.keypoints import PoseFrame, from_pose_keypoint, to_pose_keypoint
from identity_animator.models.pose_pipeline import align_video, frame_from_wholebody
from identity_animator.models.skeleton import draw_skeleton

REF_W, REF_H = 512, 768
DRV_W, DRV_H = 640, 960          # same 2:3 aspect as the reference
FIT_IDS = [0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
PAIRS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18)]          # 1-based OpenPose pairs, as usually published
PALETTE = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
FINGERS = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
           (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]


def official_draw(xy: np.ndarray, score: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    ratio = 2160 / min(width, height) if min(width, height) != 2160 else 1
    canvas = np.zeros((int(height * ratio), int(width * ratio), 3), np.uint8)
    ch, cw = canvas.shape[:2]
    people = range(len(xy))
    for limb, (a, b) in enumerate(PAIRS):
        a, b = a - 1, b - 1
        for n in people:
            sa, sb = score[n, a], score[n, b]
            if sa < 0.3 or sb < 0.3:
                continue
            xs, ys = xy[n, [a, b], 0] * cw, xy[n, [a, b], 1] * ch
            half = math.hypot(xs[0] - xs[1], ys[0] - ys[1]) / 2
            tilt = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            poly = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(half), 4), int(tilt), 0, 360, 1)
            weight = sa * sb
            cv2.fillConvexPoly(canvas, poly, [int(c * weight) for c in PALETTE[limb]])
    canvas = (canvas * 0.6).astype(np.uint8)
    for j in range(18):
        for n in people:
            if score[n, j] > 0.3:
                centre = (int(xy[n, j, 0] * cw), int(xy[n, j, 1] * ch))
                cv2.circle(canvas, centre, 4, [int(c * score[n, j]) for c in PALETTE[j]], thickness=-1)
    hands = [(xy[n, lo:lo + 21], score[n, lo:lo + 21]) for lo in (92, 113) for n in people]
    for pts, sc in hands:
        ip = [(int(x * cw), int(y * ch)) for x, y in pts]
        for e, (a, b) in enumerate(FINGERS):
            if min(ip[a] + ip[b]) > 0.01:
                rgb = np.array(colorsys.hsv_to_rgb(e / 20, 1.0, 1.0))
                cv2.line(canvas, ip[a], ip[b], rgb * int(sc[a] * sc[b] * 255), thickness=2)
        for (x, y), s in zip(ip, sc):
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 4, (0, 0, int(s * 255)), thickness=-1)
    for n in people:
        for (x, y), s in zip(xy[n, 24:92], score[n, 24:92]):
            x, y = int(x * cw), int(y * ch)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 3, (int(s * 255),) * 3, thickness=-1)
    return cv2.resize(canvas, (width, height))


def official_fit(ref_xy, ref_score, frames):
    ids = [j for j in FIT_IDS if ref_score[0, j] > 0.3]
    single = np.stack([xy[0, ids] for xy, _ in frames if len(xy) == 1])          # [F, J, 2]
    ref = ref_xy[0, ids]
    a_y, b_y = np.polyfit(single[..., 1].ravel(), np.tile(ref[:, 1], len(single)), 1)
    a_x = a_y
    b_x = np.mean(np.tile(ref[:, 0], len(single)) - single[..., 0].ravel() * a_x)
    return np.array([a_x, a_y]), np.array([b_x, b_y])


def body_at(rng, cx, cy, size):
    """A plausible standing body (OpenPose-18, normalised), plus hands and face near it."""
    body = np.array([[0, -0.42], [0, -0.3], [-0.1, -0.29], [-0.14, -0.12], [-0.15, 0.03], [0.1, -0.29], [0.14, -0.12],
                     [0.15, 0.03], [-0.06, 0.05], [-0.06, 0.27], [-0.06, 0.48], [0.06, 0.05], [0.06, 0.27], [0.06, 0.48],
                     [-0.02, -0.44], [0.02, -0.44], [-0.04, -0.43], [0.04, -0.43]])
    pts = np.zeros((134, 2))
    pts[:18] = body
    pts[18:24] = body[[10, 10, 10, 13, 13, 13]] + [0, 0.02]
    pts[24:92] = body[0] + rng.uniform(-0.03, 0.03, (68, 2))
    pts[92:113] = body[4] + rng.uniform(-0.04, 0.04, (21, 2))
    pts[113:134] = body[7] + rng.uniform(-0.04, 0.04, (21, 2))
    return np.array([cx, cy]) + pts * size * np.array([1.0, 1.0]) + rng.normal(0, 0.002, pts.shape)


def scores_for(rng, n):
    # DWPose scores are float32 values (SimCC maxima) carried as float64
    sc = rng.uniform(0.35, 1.0, (n, 134)).astype(np.float32).astype(np.float64)
    sc[:, [3, 4]] = 0.2                # a right arm DWPose is unsure of: kept out of the drawing only
    sc[:, 9] = 0.1                     # a knee below the threshold: still in the official fit
    sc[:, 92:113] = 0.25               # a faint hand, drawn dim
    sc[:, 24:92] = 0.2                 # a faint face, drawn dim
    sc[:, 120] = -0.05                 # SimCC maxima can be <= 0
    return sc


def test_official_pose_path_pixel_for_pixel():
    rng = np.random.default_rng(7)
    ref_xy = body_at(rng, 0.5, 0.5, 1.0)[None]
    ref_score = scores_for(rng, 1)
    ref_score[:, 9] = 0.9              # the reference sees its knee
    frames = []
    for f in range(5):
        n = 2 if f == 3 else 1          # one two-person frame: drawn, not fitted on
        # the first-detected person is the smaller one: the pack's largest-first order differs from
        # the detector's, and the stacking must follow the detector's
        xy = np.stack([body_at(rng, 0.45 + 0.02 * f + 0.12 * k, 0.55, 0.7 + 0.25 * k) for k in range(n)])
        frames.append((xy, scores_for(rng, n)))
    weak = scores_for(rng, 1)
    weak[:, :18] = 0.05                # a whole-image guess with nobody sure: the original fits on it too
    frames.append((body_at(rng, 0.52, 0.5, 0.75)[None], weak))

    a, b = official_fit(ref_xy, ref_score, frames)
    expected = [official_draw(xy * a + b, sc, REF_W, REF_H) for xy, sc in frames]

    # the pack: Pose Extract -> POSE_KEYPOINT -> Pose Align -> POSE_KEYPOINT -> Render Skeleton
    ref_value = to_pose_keypoint([frame_from_wholebody(ref_xy, ref_score, REF_W, REF_H)])
    drv_value = to_pose_keypoint([frame_from_wholebody(xy, sc, DRV_W, DRV_H) for xy, sc in frames])
    aligned, report = align_video(from_pose_keypoint(ref_value)[0], from_pose_keypoint(drv_value), "official")
    assert report.fit_frames == [0, 1, 2, 4, 5]
    rendered = [draw_skeleton(fr.people, fr.width, fr.height) for fr in from_pose_keypoint(to_pose_keypoint(aligned))]

    for f, (want, got) in enumerate(zip(expected, rendered)):
        diff = np.abs(want.astype(int) - got.astype(int))
        assert diff.max() == 0, f"frame {f}: {(diff.max(-1) > 0).sum()} pixels differ, max {diff.max()}"
    # the test means something: faint hands/faces and the two-person stacking are all on the images
    assert (expected[0][..., 2] > 0).sum() > 100


def test_aligned_points_match_the_official_fit_including_low_score_joints():
    rng = np.random.default_rng(3)
    ref_xy, ref_score = body_at(rng, 0.5, 0.5, 1.0)[None], scores_for(rng, 1)
    frames = [(body_at(rng, 0.4 + 0.03 * f, 0.6, 0.6)[None], scores_for(rng, 1)) for f in range(4)]
    a, b = official_fit(ref_xy, ref_score, frames)
    ref = from_pose_keypoint(to_pose_keypoint([frame_from_wholebody(ref_xy, ref_score, REF_W, REF_H)]))[0]
    drv = from_pose_keypoint(to_pose_keypoint([frame_from_wholebody(xy, sc, DRV_W, DRV_H) for xy, sc in frames]))
    out, _ = align_video(ref, drv, "official")
    for (xy, _), fr in zip(frames, out):
        np.testing.assert_allclose(fr.people[0].body, xy[0, :18] * a + b, atol=1e-12)
        np.testing.assert_allclose(fr.people[0].hand_left, xy[0, 92:113] * a + b, atol=1e-12)
    assert isinstance(out[0], PoseFrame)
