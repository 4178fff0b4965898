"""Alignment of whole videos: frame and person selection, modes, and the robustness cases."""
from __future__ import annotations

import numpy as np
import pytest

from identity_animator.models.keypoints import Person, PoseFrame
from identity_animator.models.pose_align import AlignmentError
from identity_animator.models.pose_pipeline import align_video, frame_from_wholebody
from test_pose_align import BODY_PX, DRV_SIZE, REF_SIZE, driving_from_reference, similarity


def person_from_px(px, size, score=None):
    return Person(body=px / np.array(size, float), body_score=np.ones(18) if score is None else score,
                  hand_left=np.full((21, 2), 0.5), hand_left_score=np.full(21, 0.9))


def reference():
    return PoseFrame(*REF_SIZE, [person_from_px(BODY_PX, REF_SIZE)])


def driving(true, frames=6, extra_people=()):
    norm = driving_from_reference(true, frames)                                  # [F, 18, 2] normalised
    out = []
    for f in range(frames):
        people = [Person(body=norm[f], body_score=np.ones(18))]
        for other in extra_people:
            people.append(Person(body=other, body_score=np.ones(18)))
        out.append(PoseFrame(*DRV_SIZE, people))
    return out


@pytest.mark.parametrize("mode", ["official", "similarity"])
def test_recovers_the_true_alignment(mode):
    true = similarity(0.6, 0.0, (40, 30))
    out, report = align_video(reference(), driving(true), mode)
    assert (out[0].width, out[0].height) == REF_SIZE
    got = out[0].people[0].body * np.array(REF_SIZE)
    np.testing.assert_allclose(got, BODY_PX, atol=1e-6)
    assert abs(report.transform.scale - 0.6) < 1e-9 and "scale 0.600" in report.text()


def test_one_transform_keeps_real_motion():
    true = similarity(0.6, 0.0, (40, 30))
    frames = driving(true, frames=3)
    frames[2].people[0].body = frames[2].people[0].body + np.array([0.05, 0.0])   # the dancer steps right
    out, _ = align_video(reference(), frames, "similarity", fit_frames=2)
    moved = (out[2].people[0].body - out[0].people[0].body) * np.array(REF_SIZE)
    np.testing.assert_allclose(moved, np.tile([0.05 * DRV_SIZE[0] * 0.6, 0.0], (18, 1)), atol=1e-6)


def test_every_part_moves_and_scores_are_kept():
    true = similarity(0.5, 0.0, (0, 0))
    frames = driving(true, frames=2)
    frames[0].people[0].hand_left = np.full((21, 2), 0.5)
    frames[0].people[0].hand_left_score = np.full(21, 0.7)
    out, _ = align_video(reference(), frames, "similarity")
    hand = out[0].people[0].hand_left * np.array(REF_SIZE)
    np.testing.assert_allclose(hand, np.full((21, 2), 0.5) * np.array(DRV_SIZE) * 0.5, atol=1e-6)
    assert np.all(out[0].people[0].hand_left_score == 0.7)


def test_no_person_in_the_reference_is_a_clear_error():
    with pytest.raises(AlignmentError, match="No person was found in the reference"):
        align_video(PoseFrame(*REF_SIZE, []), driving(similarity(1, 0, (0, 0))), "similarity")


def test_no_single_person_frame_falls_back_and_says_so():
    true = similarity(0.6, 0.0, (40, 30))
    other = np.full((18, 2), 0.1)
    out, report = align_video(reference(), driving(true, extra_people=[other]), "official")
    assert any("no driving frame shows exactly one person" in n for n in report.notes)
    np.testing.assert_allclose(out[0].people[0].body * np.array(REF_SIZE), BODY_PX, atol=1e-6)


def test_followed_person_absent_everywhere():
    with pytest.raises(AlignmentError, match="No driving frame shows person 1"):
        align_video(reference(), driving(similarity(1, 0, (0, 0))), "similarity", driving_person=1)
    with pytest.raises(AlignmentError, match="empty"):
        align_video(reference(), [], "similarity")


def test_reference_without_visible_hips_still_aligns():
    score = np.ones(18)
    score[[8, 9, 10, 11, 12, 13]] = 0.0   # cropped at the waist
    ref = PoseFrame(*REF_SIZE, [person_from_px(BODY_PX, REF_SIZE, score)])
    true = similarity(0.7, 0.0, (10, 20))
    out, _ = align_video(ref, driving(true), "similarity")
    np.testing.assert_allclose(out[0].people[0].body * np.array(REF_SIZE), BODY_PX, atol=1e-6)
    out, _ = align_video(ref, driving(true), "official")
    np.testing.assert_allclose(out[0].people[0].body[:8] * np.array(REF_SIZE), BODY_PX[:8], atol=1e-6)


def test_missing_limbs_in_driving_frames():
    true = similarity(0.8, 0.0, (5, 5))
    frames = driving(true)
    for fr in frames:
        fr.people[0].body_score[[3, 4, 6, 7]] = 0.0
        fr.people[0].body[[3, 4, 6, 7]] = 0.0
    out, _ = align_video(reference(), frames, "similarity")
    np.testing.assert_allclose(out[1].people[0].body[:3] * np.array(REF_SIZE), BODY_PX[:3], atol=1e-6)


def test_mode_none_reinterprets_on_the_reference_canvas():
    frames = driving(similarity(0.5, 0, (0, 0)))
    out, report = align_video(reference(), frames, "none")
    assert report.transform is None and (out[0].width, out[0].height) == REF_SIZE
    np.testing.assert_allclose(out[0].people[0].body, frames[0].people[0].body)


def test_learnable_mode_without_checkpoint_says_so():
    with pytest.raises(AlignmentError, match="needs the learnable-alignment checkpoint"):
        align_video(reference(), driving(similarity(1, 0, (0, 0))), "learnable")


def test_wholebody_frames_put_the_largest_person_first():
    xy = np.zeros((2, 134, 2))
    sc = np.ones((2, 134))
    xy[0, :18] = np.random.default_rng(0).uniform(0.4, 0.5, (18, 2))    # small person
    xy[1, :18] = np.random.default_rng(1).uniform(0.1, 0.9, (18, 2))    # large person
    fr = frame_from_wholebody(xy, sc, 640, 480)
    np.testing.assert_allclose(fr.people[0].body, xy[1, :18])
    assert fr.people[0].face.shape == (68, 2) and fr.people[0].hand_right.shape == (21, 2)


def unsure_person(seed=0):
    """What DWPose's whole-image fallback gives where nobody is: points somewhere, no sure joint."""
    rng = np.random.default_rng(seed)
    return Person(body=rng.uniform(0, 1, (18, 2)), body_score=np.full(18, 0.05),
                  hand_left=rng.uniform(0, 1, (21, 2)), hand_left_score=np.full(21, 0.05))


def test_reference_with_no_sure_joint_is_the_no_person_error():
    ref = PoseFrame(*REF_SIZE, [unsure_person()])
    with pytest.raises(AlignmentError, match="No person was found in the reference"):
        align_video(ref, driving(similarity(1, 0, (0, 0))), "official")
    with pytest.raises(AlignmentError, match="No person was found in the reference"):
        align_video(ref, driving(similarity(1, 0, (0, 0))), "similarity")


def test_driving_video_with_no_sure_person_is_an_error():
    frames = [PoseFrame(*DRV_SIZE, [unsure_person(i)]) for i in range(4)]
    for mode in ("official", "similarity"):
        with pytest.raises(AlignmentError, match="No driving frame shows person 0"):
            align_video(reference(), frames, mode)


def test_similarity_fits_on_frames_that_show_the_dancer():
    true = similarity(0.6, 0.0, (40, 30))
    frames = driving(true, frames=4)
    frames[0].people, frames[1].people = [unsure_person(0)], [unsure_person(1)]   # nobody detected there
    out, report = align_video(reference(), frames, "similarity", fit_frames=2)
    assert report.fit_frames == [2, 3] and any("not fitted on" in n for n in report.notes)
    np.testing.assert_allclose(out[2].people[0].body * np.array(REF_SIZE), BODY_PX, atol=1e-6)


def test_official_fits_on_every_single_person_frame_as_the_original():
    true = similarity(0.6, 0.0, (40, 30))
    frames = driving(true, frames=3)
    frames.append(PoseFrame(*DRV_SIZE, [unsure_person(3)]))
    _, report = align_video(reference(), frames, "official")
    assert report.fit_frames == [0, 1, 2, 3]
    assert any("the original fits on them too" in n for n in report.notes)


def test_official_alignment_survives_pose_keypoint_with_low_score_joints():
    """Pose Extract -> JSON -> Pose Align: the low-score joints the official fit uses must arrive."""
    from identity_animator.models.keypoints import from_pose_keypoint, to_pose_keypoint

    true = similarity(0.6, 0.0, (40, 30))
    frames = driving(true, frames=4)
    rng = np.random.default_rng(0)
    for fr in frames:
        fr.people[0].body = fr.people[0].body + rng.normal(0, 0.01, (18, 2))
        fr.people[0].body_score[[9, 12, 14]] = 0.2
    direct, _ = align_video(reference(), frames, "official")
    trip, _ = align_video(reference(), from_pose_keypoint(to_pose_keypoint(frames)), "official")
    np.testing.assert_allclose(trip[0].people[0].body, direct[0].people[0].body, atol=1e-9)
