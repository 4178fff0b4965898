"""POSE_KEYPOINT interop with comfyui_controlnet_aux, and the official skeleton drawing pinned on a
fixed keypoint set."""
from __future__ import annotations

import numpy as np
import pytest

from identity_animator.models.keypoints import (Person, PoseFormatError, PoseFrame, from_pose_keypoint, known,
                                                to_pose_keypoint)
from identity_animator.models.skeleton import COLORS, canvas_size, draw_skeleton

W, H = 2160, 3240  # short side already 2160: the drawing canvas is the output, no resize


def body(score=1.0):
    px = np.array([[1080, 600], [1080, 900], [880, 900], [820, 1250], [800, 1550], [1280, 900], [1340, 1250],
                   [1360, 1550], [960, 1700], [950, 2300], [940, 2900], [1200, 1700], [1210, 2300], [1220, 2900],
                   [1040, 560], [1120, 560], [1000, 580], [1160, 580]], float)
    return px / np.array([W, H]), np.full(18, score)


def person(**kw):
    xy, sc = body()
    return Person(body=xy, body_score=sc, **kw)


def test_canvas_short_side_is_2160():
    assert canvas_size(512, 768) == (2160, 3240)
    assert canvas_size(1024, 576) == (3840, 2160)
    assert canvas_size(2160, 4000) == (2160, 4000)
    assert canvas_size(3000, 4000) == (2160, 2880)


def test_limbs_are_dimmed_then_joints_drawn_full():
    img = draw_skeleton([person()], W, H)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    # limb 0 (neck -> right shoulder), halfway: red x 0.6
    assert tuple(img[900, 980]) == (153, 0, 0)
    # limb 6 (neck -> right hip) colour (0,255,0) x 0.6, away from the joints
    mid = ((1080 + 960) // 2, (900 + 1700) // 2)
    assert tuple(img[mid[1], mid[0]]) == (0, 153, 0)
    # joints drawn after dimming: the neck disc is the full palette colour 1
    assert tuple(img[900, 1080]) == COLORS[1]
    assert tuple(img[600, 1080]) == COLORS[0]


def test_limb_colour_scales_with_both_scores_and_low_scores_hide_it():
    xy, sc = body()
    sc[2] = 0.5   # right shoulder
    sc[1] = 0.8   # neck
    img = draw_skeleton([Person(body=xy, body_score=sc)], W, H)
    assert tuple(img[900, 980]) == (int(int(255 * 0.4) * 0.6), 0, 0)
    sc[2] = 0.29
    img = draw_skeleton([Person(body=xy, body_score=sc)], W, H)
    assert tuple(img[900, 980]) == (0, 0, 0)        # limb skipped
    assert tuple(img[900, 880]) == (0, 0, 0)        # joint skipped


def test_the_last_two_limbs_are_never_drawn():
    img = draw_skeleton([person()], W, H)
    # shoulder -> ear limbs (indices 17, 18 of the OpenPose list): their midpoints stay black
    assert tuple(img[740, 940]) == (0, 0, 0)
    assert tuple(img[740, 1220]) == (0, 0, 0)


def test_hands_and_face():
    hand = np.array([[0.3 + 0.01 * i, 0.5 + 0.002 * i] for i in range(21)])
    face = np.array([[0.45 + 0.002 * i, 0.17] for i in range(68)])
    img = draw_skeleton([person(hand_left=hand, hand_left_score=np.full(21, 0.8),
                                face=face, face_score=np.full(68, 0.5))], W, H)
    x, y = int(hand[20, 0] * W), int(hand[20, 1] * H)
    assert tuple(img[y, x]) == (0, 0, int(0.8 * 255))  # hand points: blue x score
    fx, fy = int(face[30, 0] * W), int(face[30, 1] * H)
    assert tuple(img[fy, fx]) == (127, 127, 127)        # face points: grey = score


def test_generation_size_render_is_a_bilinear_resize_of_the_2160_canvas():
    import cv2

    p = person()
    big = draw_skeleton([p], 2160, 3240)
    small = draw_skeleton([p], 512, 768)
    assert np.array_equal(small, cv2.resize(big, (512, 768)))
    assert small[..., 0].max() > 100  # still visible after downscaling


CN_AUX_FRAME = {  # shaped like comfyui_controlnet_aux DWPose output: pixels, c in {0,1}, 70 face points
    "people": [{
        "pose_keypoints_2d": sum(([100.0 + i, 200.0 + i, 1.0] for i in range(17)), []) + [0.0, 0.0, 0.0],
        "face_keypoints_2d": [150.0, 120.0, 1.0] * 70,
        "hand_left_keypoints_2d": None,
        "hand_right_keypoints_2d": [300.0, 400.0, 1.0] * 21,
    }],
    "canvas_height": 768, "canvas_width": 512,
}


def test_reads_controlnet_aux_pose_keypoint():
    (fr,) = from_pose_keypoint([CN_AUX_FRAME])
    assert (fr.width, fr.height) == (512, 768)
    p = fr.people[0]
    np.testing.assert_allclose(p.body[3], [103 / 512, 203 / 768])
    assert p.body_score[17] == 0 and p.body_score[0] == 1
    assert p.face.shape == (68, 2) and p.hand_left is None and p.hand_right.shape == (21, 2)


def test_writes_controlnet_aux_pose_keypoint_and_keeps_scores():
    xy, sc = body(0.9)
    sc[4] = 0.1
    frame = PoseFrame(W, H, [Person(body=xy, body_score=sc, face=np.full((68, 2), 0.5), face_score=np.full(68, 0.7))])
    (d,) = to_pose_keypoint([frame])
    p = d["people"][0]
    assert set(p) >= {"pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"}
    assert len(p["pose_keypoints_2d"]) == 54 and len(p["face_keypoints_2d"]) == 70 * 3
    assert p["pose_keypoints_2d"][12:15] == [0.0, 0.0, 0.0]                  # below threshold -> missing
    assert p["pose_keypoints_2d"][2] == 1.0 and p["pose_keypoints_2d"][0] == pytest.approx(1080.0)
    assert p["hand_left_keypoints_2d"] is None
    assert {c for c in p["pose_keypoints_2d"][2::3]} == {0.0, 1.0}           # what controlnet_aux reads
    (back,) = from_pose_keypoint([d])
    np.testing.assert_allclose(back.people[0].body_score[[0, 4]], [0.9, 0.1])  # real scores survive
    np.testing.assert_allclose(back.people[0].body[[0, 4]], xy[[0, 4]])        # and the faint joint's place


def faint_person():
    hand = np.array([[0.3 + 0.01 * i, 0.5 + 0.002 * i] for i in range(21)])
    face = np.array([[0.45 + 0.002 * i, 0.17] for i in range(68)])
    return person(hand_left=hand, hand_left_score=np.full(21, 0.25), face=face, face_score=np.full(68, 0.2))


def test_low_score_points_survive_pose_keypoint_outside_the_standard_lists():
    (d,) = to_pose_keypoint([PoseFrame(W, H, [faint_person()])])
    p = d["people"][0]
    # other packs read the standard lists: the faint points are "missing" there, as before
    assert p["hand_left_keypoints_2d"] == [0.0] * 63 and p["face_keypoints_2d"][:204] == [0.0] * 204
    low = p["ida_scores"]["low_xy"]
    assert [e[0] for e in low["hand_left"]] == list(range(21)) and len(low["face"]) == 68
    (back,) = from_pose_keypoint([d])
    q, orig = back.people[0], faint_person()
    np.testing.assert_allclose(q.hand_left, orig.hand_left, atol=1e-12)
    np.testing.assert_allclose(q.face, orig.face, atol=1e-12)
    np.testing.assert_array_equal(q.hand_left_score, 0.25)
    np.testing.assert_array_equal(q.face_score, 0.2)


def test_low_score_hands_and_face_are_drawn_dim_after_the_round_trip():
    p = faint_person()
    (back,) = from_pose_keypoint(to_pose_keypoint([PoseFrame(W, H, [p])]))
    img = draw_skeleton(back.people, W, H)
    x, y = int(p.hand_left[20, 0] * W), int(p.hand_left[20, 1] * H)
    assert tuple(img[y, x]) == (0, 0, int(0.25 * 255))   # no threshold on hands: brightness x score
    fx, fy = int(p.face[30, 0] * W), int(p.face[30, 1] * H)
    assert tuple(img[fy, fx]) == (51, 51, 51)            # nor on the face
    assert np.array_equal(img, draw_skeleton([p], W, H))


def test_scores_are_kept_exactly():
    # 255 x s just below 128: a score rounded to 4 decimals would draw 128, the official draws 127
    s = float(np.float32(128 / 255 - 2e-6))
    p = faint_person()
    p.face_score = np.full(68, s)
    (back,) = from_pose_keypoint(to_pose_keypoint([PoseFrame(W, H, [p])]))
    assert back.people[0].face_score[0] == s
    fx, fy = int(p.face[30, 0] * W), int(p.face[30, 1] * H)
    assert tuple(draw_skeleton(back.people, W, H)[fy, fx]) == (127, 127, 127)


def test_standard_lists_win_over_the_side_key():
    """A point another tool (or Pose Edit) put into the standard list is not overwritten."""
    from identity_animator.models.keypoints import apply_edits

    xy, sc = body()
    sc[4] = 0.1
    value = to_pose_keypoint([PoseFrame(W, H, [Person(body=xy, body_score=sc)])])
    assert [e[0] for e in value[0]["people"][0]["ida_scores"]["low_xy"]["body"]] == [4]
    moved = apply_edits(value, {"0": {"0": {"4": [500.0, 600.0]}}})
    (back,) = from_pose_keypoint(moved)
    np.testing.assert_allclose(back.people[0].body[4] * [W, H], [500.0, 600.0])
    assert back.people[0].body_score[4] == 1.0
    moved[0]["people"][0]["ida_scores"]["low_xy"]["body"] = [[4, 1.0, 2.0]]   # stale side entry
    (back,) = from_pose_keypoint(moved)
    np.testing.assert_allclose(back.people[0].body[4] * [W, H], [500.0, 600.0])


def test_missing_points_stay_missing_through_a_transform():
    (fr,) = from_pose_keypoint([CN_AUX_FRAME])
    p = fr.people[0]
    assert not known(p.body[17:], p.body_score[17:]).any()
    shifted = p.mapped(lambda xy: xy * 0.5 + 0.25)
    np.testing.assert_array_equal(shifted.body[17], [0.0, 0.0])                 # no coordinates: not placed
    np.testing.assert_allclose(shifted.body[3], p.body[3] * 0.5 + 0.25)


def two_people_crossing():
    """Person A's right forearm (limb 3) crosses person B's neck->right-shoulder (limb 0)."""
    a_xy, sc = body()
    b_xy = a_xy.copy()
    b_xy[1], b_xy[2] = [0.30, 0.35], [0.42, 0.35]         # B's limb 0: horizontal at y = 0.35
    a_xy[3], a_xy[4] = [0.36, 0.30], [0.36, 0.40]         # A's limb 3: vertical at x = 0.36
    sa, sb = np.zeros(18), np.zeros(18)
    sa[[2, 3, 4]] = 1.0                                   # A: right arm only (limbs 2 and 3)
    sb[[1, 2]] = 1.0                                      # B: neck and right shoulder only (limb 0)
    return Person(body=a_xy, body_score=sa, rank=0), Person(body=b_xy, body_score=sb, rank=1)


def test_limbs_are_drawn_limb_by_limb_across_people():
    a, b = two_people_crossing()
    img = draw_skeleton([a, b], W, H)
    y = int(0.35 * H)
    x = int(0.36 * W) + 2                                  # on both limbs, off A's wrist/elbow discs
    # limb 3 (A) is drawn after limb 0 (B) whoever comes first in the list: A's colour x 0.6 on top
    assert tuple(img[y, x]) == tuple(int(c * 0.6) for c in COLORS[3])


def test_people_are_stacked_in_the_detectors_order():
    a, b = two_people_crossing()
    b.body[[3, 4]] = a.body[[3, 4]] + [0.001, 0.0]         # B's forearm nearly on A's, B detected second
    b.body_score[[3, 4]] = 0.5
    img = draw_skeleton([b, a], W, H)                       # the list is largest-first, not detector order
    y, x = int(0.35 * H), int(0.36 * W) + 2
    assert tuple(img[y, x]) == tuple(int(int(c * 0.25) * 0.6) for c in COLORS[3])   # B (dimmer) on top


@pytest.mark.parametrize("bad,match", [
    ([], "non-empty list"),
    ([{"people": []}], "canvas_width"),
    ([{"people": [{"pose_keypoints_2d": [1.0, 2.0]}], "canvas_width": 5, "canvas_height": 5}], "multiple of 3"),
])
def test_malformed_pose_keypoint_is_named(bad, match):
    with pytest.raises(PoseFormatError, match=match):
        from_pose_keypoint(bad)


def test_apply_edits_moves_joints_and_marks_them_detected():
    from identity_animator.models.keypoints import apply_edits

    value = [CN_AUX_FRAME, CN_AUX_FRAME]
    out = apply_edits(value, {"1": {"0": {"17": [10.5, 20.0], "2": [1, 2]}}})
    body = out[1]["people"][0]["pose_keypoints_2d"]
    assert body[51:54] == [10.5, 20.0, 1.0] and body[6:9] == [1.0, 2.0, 1.0]
    assert out[0] == CN_AUX_FRAME and value[1] == CN_AUX_FRAME      # input untouched
    with pytest.raises(PoseFormatError, match="frame 5"):
        apply_edits(value, {"5": {}})
    with pytest.raises(PoseFormatError, match="person 3"):
        apply_edits(value, {"0": {"3": {}}})
    with pytest.raises(PoseFormatError, match="Joint 18"):
        apply_edits(value, {"0": {"0": {"18": [0, 0]}}})
