"""Expression transfer (Pose Align's face: reference_shape) on synthetic 68-point faces with known
shapes and motions: the reference's proportions are kept, the driver's mouth, head and missing points
come through, and a prompt through the real server transfers the face."""
from __future__ import annotations

import json

import numpy as np
import pytest

from identity_animator.models import expression as ex
from identity_animator.models.keypoints import FACE, Person, PoseFrame, from_pose_keypoint, to_pose_keypoint

REF_CANVAS = (512, 768)


def face(width=1.0, eye_x=0.42, eye_w=0.3, eye_h=0.12, height=1.0, mouth_w=0.5, mouth=0.0, eyes=1.0, brow=0.0):
    """A neutral-ish 68-point face in face units (iBUG order, y down, origin between the eyes'
    height and the nose): ``width`` jaw half-width, ``eye_x`` half the inter-ocular distance, ``height``
    stretches everything below the eyes, ``mouth`` the inner-lip opening (the jaw drops with it),
    ``eyes`` the eye opening as a share of ``eye_h``, ``brow`` a brow raise."""
    p = np.zeros((FACE, 2))
    for i in range(17):                                   # jaw: ear to chin to ear
        a = np.pi * i / 16
        drop = mouth * np.sin(a) ** 4                     # the chin drops with an open mouth, the hinges stay
        p[i] = (-np.cos(a) * width, -0.1 + np.sin(a) * 1.05 * height + drop)
    for i in range(5):                                    # brows, arched, above the eyes
        x = 0.18 + 0.6 * (4 - i) / 4
        y = -0.55 - 0.07 * np.sin(np.pi * i / 4) - brow
        p[17 + i] = (-x * width, y)
        p[26 - i] = (x * width, y)
    for i in range(4):                                    # nose bridge
        p[27 + i] = (0.0, -0.3 + 0.15 * i * height)
    for i in range(5):                                    # nostrils
        p[31 + i] = (-0.2 + 0.1 * i, 0.25 * height + 0.03 * (1 - abs(i - 2) / 2))
    h = eye_h * eyes / 2
    for c, ids in ((-eye_x, (36, 37, 38, 39, 40, 41)), (eye_x, (42, 43, 44, 45, 46, 47))):
        # both eyes clockwise from their image-left corner, as in iBUG
        corner_l, up_l, up_r, corner_r, lo_r, lo_l = ids
        p[corner_l], p[corner_r] = (c - eye_w / 2, -0.3), (c + eye_w / 2, -0.3)
        p[up_l], p[up_r] = (c - eye_w / 6, -0.3 - h), (c + eye_w / 6, -0.3 - h)
        p[lo_r], p[lo_l] = (c + eye_w / 6, -0.3 + h), (c - eye_w / 6, -0.3 + h)
    my = 0.55 * height
    m = mouth_w / 2
    outer = [(-m, 0), (-0.6 * m, -0.06), (-0.25 * m, -0.08), (0, -0.07), (0.25 * m, -0.08), (0.6 * m, -0.06),
             (m, 0), (0.6 * m, 0.08), (0.25 * m, 0.1), (0, 0.1), (-0.25 * m, 0.1), (-0.6 * m, 0.08)]
    for k, (x, y) in enumerate(outer):
        p[48 + k] = (x, my + y + (mouth if 7 <= k <= 11 else 0.0))
    inner = [(-0.85 * m, 0), (-0.4 * m, -0.01), (0, -0.01), (0.4 * m, -0.01), (0.85 * m, 0), (0.4 * m, 0.01),
             (0, 0.01), (-0.4 * m, 0.01)]
    for k, (x, y) in enumerate(inner):
        p[60 + k] = (x, my + y + (mouth if k >= 5 else 0.0))
    return p


def place(units, scale, centre, degrees=0.0):
    th = np.radians(degrees)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return units @ rot.T * scale + np.asarray(centre, float)


REFERENCE = dict(width=1.0, eye_x=0.40, height=1.0, mouth_w=0.5)
DRIVER = dict(width=1.3, eye_x=0.55, height=1.15, mouth_w=0.62)       # a wider, longer face, eyes further apart
REF_SCALE, REF_CENTRE = 40.0, (256.0, 150.0)
DRV_SCALE, DRV_CENTRE = 46.0, (262.0, 160.0)                          # the aligned driver's head: elsewhere, larger


def iod(xy):
    return float(np.linalg.norm(xy[42:48].mean(0) - xy[36:42].mean(0)))


def face_width(xy):
    return float(np.linalg.norm(xy[16] - xy[0]))


def lip_gap(xy):
    return float(np.mean([np.linalg.norm(xy[b] - xy[a]) for a, b in ex.LIP_PAIRS]))


def eye_line_degrees(xy):
    d = xy[42:48].mean(0) - xy[36:42].mean(0)
    return float(np.degrees(np.arctan2(d[1], d[0])))


def reference():
    return place(face(**REFERENCE), REF_SCALE, REF_CENTRE), np.full(FACE, 0.9)


def run(driver_frames, scores=None, ref=None):
    ref_xy, ref_sc = reference() if ref is None else ref
    scores = scores if scores is not None else [np.full(FACE, 0.8) for _ in driver_frames]
    return ex.transfer(ref_xy, ref_sc, [(f, s) for f, s in zip(driver_frames, scores)])


def test_the_reference_shape_is_kept_and_the_mouth_opens_as_the_drivers_does():
    # 4 frames with the mouth closed, then 8 opening it wider and wider
    openings = [0.0] * 4 + [0.05 * k for k in range(1, 9)]
    drv = [place(face(**DRIVER, mouth=o), DRV_SCALE, DRV_CENTRE) for o in openings]
    result = run(drv)
    assert result.kept == [] and len(result.rest_frames) >= 1
    ref_xy, _ = reference()
    drv_height = np.ptp(drv[0][:, 1])           # brow to chin of the closed-mouth driver
    ref_height = np.ptp(ref_xy[:, 1])
    for out, d in zip(result.faces, drv):
        # the reference's proportions, not the driver's (within 0.5 %)
        assert iod(out) == pytest.approx(iod(ref_xy), rel=5e-3)
        assert face_width(out) == pytest.approx(face_width(ref_xy), rel=5e-3)
        assert iod(d) / iod(ref_xy) > 1.5            # the driver's really are different
        # the opening in units of face height is the driver's (within 5 %, the scale is read off whole faces)
        if lip_gap(d) > 1.0:
            assert lip_gap(out) / ref_height == pytest.approx(lip_gap(d) / drv_height, rel=0.05)
    gaps = [lip_gap(f) for f in result.faces]
    assert gaps[:4] == pytest.approx([lip_gap(ref_xy)] * 4, abs=0.05)      # closed as the reference's
    assert all(b > a + 0.5 for a, b in zip(gaps[3:], gaps[4:]))           # and opening frame after frame
    # where the aligned head is: the reference face sits on the driver's nose
    for out, d in zip(result.faces, drv):
        assert np.linalg.norm(out[30] - d[30]) < 0.1 * iod(ref_xy)


def test_the_head_rotates_scales_and_moves_like_the_drivers():
    rest = place(face(**DRIVER), DRV_SCALE, DRV_CENTRE)
    nose = rest[30]
    motions = [(0.0, 1.0, (0, 0)), (5.0, 1.0, (0, 0)), (12.0, 1.0, (4, -3)), (-9.0, 1.2, (10, 6)), (0.0, 0.9, (-8, 2))]
    # a few more still frames: a clip's rest face is read from the face at rest, not from one moment
    motions = [(0.0, 1.0, (0, 0))] * 4 + motions
    drv = [place(rest - nose, s, nose + np.asarray(t, float), deg) for deg, s, t in motions]
    result = run(drv)
    ref_xy, _ = reference()
    base = result.faces[0]
    for out, (deg, s, t) in zip(result.faces, motions):
        assert eye_line_degrees(out) - eye_line_degrees(base) == pytest.approx(deg, abs=0.1)
        assert iod(out) == pytest.approx(s * iod(ref_xy), rel=5e-3)
        # the whole reference-shaped face moves rigidly with the head: same shape as the first frame
        expected = place(base - nose, s, nose + np.asarray(t, float), deg)
        np.testing.assert_allclose(out, expected, atol=0.05)


def test_driver_equal_to_reference_gives_the_reference_back():
    ref_xy, ref_sc = reference()
    result = run([ref_xy.copy() for _ in range(5)], [ref_sc.copy() for _ in range(5)])
    for out in result.faces:
        np.testing.assert_allclose(out, ref_xy, atol=1e-6)


def test_the_rest_face_is_the_closed_mouth_not_the_first_frame():
    # the clip starts mid-word; the mouth is closed most of the time after that
    openings = [0.3, 0.2, 0.0, 0.0, 0.05, 0.0, 0.0, 0.25, 0.0, 0.0]
    drv = [place(face(**DRIVER, mouth=o), DRV_SCALE, DRV_CENTRE) for o in openings]
    result = run(drv)
    assert set(result.rest_frames) <= {i for i, o in enumerate(openings) if o == 0.0}
    ref_xy, _ = reference()
    assert lip_gap(result.faces[2]) == pytest.approx(lip_gap(ref_xy), abs=0.05)
    assert lip_gap(result.faces[0]) > lip_gap(result.faces[1]) > lip_gap(result.faces[2]) + 2.0


def test_eyes_close_by_ratio_and_lids_never_cross():
    eyes = [1.0] * 5 + [0.5, 0.0, -0.3]           # half closed, closed, a detector error past closed
    drv = [place(face(**DRIVER, eye_h=0.18, eyes=e), DRV_SCALE, DRV_CENTRE) for e in eyes]
    result = run(drv)
    ref_xy, _ = reference()

    def opening(xy):
        return np.mean([xy[b, 1] - xy[a, 1] for a, b in ex.EYE_PAIRS])

    assert opening(result.faces[0]) == pytest.approx(opening(ref_xy), rel=1e-3)
    # half the reference's opening (not the driver's larger eyes' absolute motion), then shut, never inverted
    assert opening(result.faces[5]) == pytest.approx(0.5 * opening(ref_xy), rel=0.02)
    assert opening(result.faces[6]) == pytest.approx(0.0, abs=0.02)
    assert opening(result.faces[7]) == pytest.approx(0.0, abs=0.02)


def test_missing_points_stay_missing_and_unsure_ones_keep_their_scores():
    drv = [place(face(**DRIVER), DRV_SCALE, DRV_CENTRE) for _ in range(6)]
    scores = [np.full(FACE, 0.8) for _ in drv]
    drv[2][5:9], scores[2][5:9] = 0.0, 0.0                 # chin without coordinates (another pack's "missing")
    drv[3][42:48], scores[3][42:48] = 0.0, 0.0             # a whole eye missing
    scores[4][48:68] = 0.1                                 # a mouth DWPose is unsure of
    drv[4][48:68, 1] += 15.0                               # ... and placed badly
    ref_xy, ref_sc = reference()
    frames = [PoseFrame(*REF_CANVAS, [Person(body=np.zeros((18, 2)), body_score=np.zeros(18),
                                             face=f / np.array(REF_CANVAS), face_score=s)]) for f, s in zip(drv, scores)]
    ref = PoseFrame(*REF_CANVAS, [Person(body=np.zeros((18, 2)), body_score=np.zeros(18),
                                         face=ref_xy / np.array(REF_CANVAS), face_score=ref_sc)])
    out, notes = ex.transfer_video(ref, frames)
    back = from_pose_keypoint(to_pose_keypoint(out))       # through the POSE_KEYPOINT format as the graph does
    p2, p3, p4 = back[2].people[0], back[3].people[0], back[4].people[0]
    np.testing.assert_array_equal(p2.face[5:9], 0.0)
    np.testing.assert_array_equal(p2.face_score[5:9], 0.0)
    assert (p2.face[[4, 9]] != 0).all()
    np.testing.assert_array_equal(p3.face[42:48], 0.0)
    assert (p3.face[36:42] != 0).all()
    np.testing.assert_allclose(p4.face_score[48:68], 0.1)   # scores are the driver's
    # an unsure point carries no expression: the reference's closed mouth, where frame 0 has it
    np.testing.assert_allclose(p4.face[48:68], back[0].people[0].face[48:68], atol=1e-9)
    assert notes and notes[0].startswith("face: reference_shape")


def test_other_people_keep_their_faces():
    drv = place(face(**DRIVER), DRV_SCALE, DRV_CENTRE)
    other = place(face(width=0.8), 30.0, (100.0, 100.0))
    ref_xy, ref_sc = reference()
    body = dict(body=np.zeros((18, 2)), body_score=np.zeros(18))
    people = [Person(**body, face=drv / np.array(REF_CANVAS), face_score=np.full(FACE, 0.8)),
              Person(**body, face=other / np.array(REF_CANVAS), face_score=np.full(FACE, 0.8))]
    frames = [PoseFrame(*REF_CANVAS, list(people)) for _ in range(3)]
    ref = PoseFrame(*REF_CANVAS, [Person(**body, face=ref_xy / np.array(REF_CANVAS), face_score=ref_sc)])
    out, _ = ex.transfer_video(ref, frames, driving_person=0)
    assert iod(out[0].people[0].face * np.array(REF_CANVAS)) == pytest.approx(iod(ref_xy), rel=5e-3)
    np.testing.assert_array_equal(out[0].people[1].face, people[1].face)


def test_a_reference_without_a_face_is_refused_with_what_to_do():
    from test_keypoints_skeleton import body
    from identity_animator.nodes import pose as nodes_pose
    from identity_animator.nodes.validation import InputError

    xy, sc = body()
    ref = to_pose_keypoint([PoseFrame(2160, 3240, [Person(body=xy, body_score=sc)])])
    drv_face = place(face(**DRIVER), 40.0, (1080.0, 560.0)) / np.array([2160, 3240])
    drv = to_pose_keypoint([PoseFrame(2160, 3240, [Person(body=xy, body_score=sc, face=drv_face,
                                                          face_score=np.full(FACE, 0.9))])] * 2)
    with pytest.raises(InputError, match=r"^Pose Align: face is reference_shape, but the reference pose "
                                         r"\(reference_pose, person 0\) has no face points.*set face to driver"):
        nodes_pose.PoseAlign.execute(ref, drv, "similarity", False, 8, 0, 0, face="reference_shape")
    hidden = Person(body=xy, body_score=sc, face=drv_face, face_score=np.where(np.arange(FACE) < 20, 0.9, 0.1))
    ref = to_pose_keypoint([PoseFrame(2160, 3240, [hidden])])
    with pytest.raises(InputError, match=r"shows only 20 of its 68 face points clearly"):
        nodes_pose.PoseAlign.execute(ref, drv, "similarity", False, 8, 0, 0, face="reference_shape")
    # the default, and driver, draw the driver's face exactly as before the option existed
    before, _ = nodes_pose.PoseAlign.execute(ref, drv, "similarity", False, 8, 0, 0).result
    as_driver, _ = nodes_pose.PoseAlign.execute(ref, drv, "similarity", False, 8, 0, 0, face="driver").result
    assert json.dumps(before) == json.dumps(as_driver)


def _pose_json(faces, scores, canvas):
    body = np.array([[256, 150], [256, 260], [200, 265], [190, 350], [185, 430], [312, 265], [322, 350],
                     [327, 430], [225, 450], [222, 580], [220, 700], [287, 450], [290, 580], [292, 700],
                     [240, 135], [272, 135], [225, 140], [287, 140]], float)
    frames = [PoseFrame(*canvas, [Person(body=body / np.array(canvas), body_score=np.full(18, 0.9),
                                         face=f / np.array(canvas), face_score=s)]) for f, s in zip(faces, scores)]
    return to_pose_keypoint(frames)


def test_pose_align_transfers_the_face_through_the_server(server):
    ref_xy, ref_sc = reference()
    openings = [0.0] * 4 + [0.1, 0.2, 0.3]
    # the driving body is the reference's, so the fit is the identity and the face comparison is direct
    drv = [place(face(**DRIVER, mouth=o), DRV_SCALE, DRV_CENTRE) for o in openings]
    inputs = server.base_dir / "input"
    (inputs / "expression_reference.json").write_text(json.dumps(_pose_json([ref_xy], [ref_sc], REF_CANVAS)))
    (inputs / "expression_driving.json").write_text(json.dumps(_pose_json(drv, [np.full(FACE, 0.8)] * len(drv),
                                                                          REF_CANVAS)))
    prompt = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "expression_reference.json"}},
        "2": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "expression_driving.json"}},
        "3": {"class_type": "IDA_PoseAlign", "inputs": {
            "reference_pose": ["1", 0], "driving_pose": ["2", 0], "mode": "similarity", "allow_rotation": False,
            "fit_frames": 8, "reference_person": 0, "driving_person": 0, "face": "reference_shape"}},
        "4": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["3", 0], "edits": "{}"}},
    }
    result = server.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    ui = result.outputs["3"]
    assert "face: reference_shape" in ui["ida_report"][0]
    frames = from_pose_keypoint(json.loads(result.outputs["4"]["openpose_json"][0]))
    faces = [f.people[0].face * np.array(REF_CANVAS) for f in frames]
    for out in faces:
        assert iod(out) == pytest.approx(iod(ref_xy), rel=5e-3)
        assert face_width(out) == pytest.approx(face_width(ref_xy), rel=5e-3)
    gaps = [lip_gap(f) for f in faces]
    assert all(b > a + 1.0 for a, b in zip(gaps[3:], gaps[4:]))
    np.testing.assert_allclose(frames[0].people[0].face_score, 0.8)
