"""POSE_KEYPOINT interop with comfyui_controlnet_aux, and the official skeleton drawing pinned on a
fixed keypoint set."""
from __future__ import annotations

import numpy as np
import pytest

from identity_animator.models.keypoints import Person, PoseFormatError, PoseFrame, from_pose_keypoint, to_pose_keypoint
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
    (back,) = from_pose_keypoint([d])
    np.testing.assert_allclose(back.people[0].body_score[[0, 4]], [0.9, 0.0])  # real scores survive
    np.testing.assert_allclose(back.people[0].body[0], xy[0])


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
