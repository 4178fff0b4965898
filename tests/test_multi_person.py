"""Pose Align with several people (issue 15 part 3): each dancer fitted to their own reference person,
matched left to right or by people_mapping, followed through the video so that two dancers never swap
when DWPose's largest-first order flips; the default (people one) is unchanged. Face refinement of two
people: each face pulled towards its own person's reference embedding."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from identity_animator.models.face_refine import (FaceRefiner, MultiFaceRefiner, RefineSchedule, face_crops,
                                                  identity_loss)
from identity_animator.models.keypoints import Person, PoseFrame, from_pose_keypoint, to_pose_keypoint
from identity_animator.models.pose_align import AlignmentError
from identity_animator.models.pose_pipeline import (align_people, align_video, parse_people_mapping, person_size,
                                                     track_people)
from identity_animator.nodes import pose as nodes_pose
from identity_animator.nodes.validation import InputError

# a standing OpenPose-18 body, centred on its hips' midpoint (pixels at scale 1)
BODY = np.array([[256, 120], [256, 180], [210, 185], [190, 260], [185, 330], [302, 185], [322, 260],
                 [327, 330], [225, 350], [222, 480], [220, 600], [287, 350], [290, 480], [292, 600],
                 [246, 110], [266, 110], [236, 115], [276, 115]], float) - np.array([256, 350])
REF, DRV = (1024, 768), (1280, 720)


def person(cx, cy, scale, canvas, rank=None) -> Person:
    px = BODY * scale + np.array([cx, cy])
    return Person(body=px / np.array(canvas, float), body_score=np.full(18, 0.9), rank=rank)


def largest_first(people):
    return sorted(people, key=person_size, reverse=True)


def reference(n=2) -> PoseFrame:
    # the larger person stands on the right, so reference person 0 (largest first) is the right one
    people = [person(300, 400, 0.6, REF), person(760, 380, 0.9, REF), person(520, 420, 0.4, REF)][:n]
    return PoseFrame(*REF, largest_first(people))


def dancers(frames=8):
    """Left dancer walks right and shrinks (0.8 -> 0.5); right dancer rises and grows (0.55 -> 0.85).
    DWPose's order flips half way: the left one is driving person 0 in the first frame."""
    out = []
    for f in range(frames):
        t = f / (frames - 1)
        left = person(350 + 10 * f, 400, 0.8 - 0.3 * t, DRV)
        right = person(950, 420 - 8 * f, 0.55 + 0.3 * t, DRV)
        out.append(PoseFrame(*DRV, largest_first([left, right])))
    return out


def centre_px(p: Person, canvas) -> np.ndarray:
    """The hips' midpoint: where person() puts the body, whatever its scale."""
    return p.body[[8, 11]].mean(0) * np.array(canvas, float)


def test_dancers_are_matched_left_to_left_and_fitted_each_to_their_own_person():
    ref, drv = reference(), dancers()
    out, report, pairs = align_people(ref, drv, "similarity", fit_frames=1, allow_rotation=False)
    # driving 0 (left, larger in the first frame) -> reference 1 (left); output sorted by reference person
    assert pairs == [(1, 0), (0, 1)]
    assert all(len(fr.people) == 2 for fr in out)
    for slot, r in enumerate((0, 1)):   # fitted on frame 0 only: frame 0 lands exactly on that reference person
        np.testing.assert_allclose(out[0].people[slot].body * np.array(REF), ref.people[r].body * np.array(REF), atol=1e-6)
    left, right = out[0].people[1], out[0].people[0]
    assert centre_px(left, REF)[0] < centre_px(right, REF)[0]
    assert "driving 1 -> reference 0, driving 0 -> reference 1" in report.text()


def test_an_explicit_mapping_swaps_them():
    ref, drv = reference(), dancers()
    out, report, pairs = align_people(ref, drv, "similarity", mapping="0:0, 1:1", fit_frames=1, allow_rotation=False)
    assert pairs == [(0, 0), (1, 1)] and "by people_mapping" in report.text()
    np.testing.assert_allclose(out[0].people[0].body * np.array(REF), ref.people[0].body * np.array(REF), atol=1e-6)
    # slot 0 is now the left dancer (who walks right) on the right reference person: it moves sideways, not up
    move = centre_px(out[-1].people[0], REF) - centre_px(out[0].people[0], REF)
    assert move[0] > 20 and abs(move[1]) < 1e-6
    move = centre_px(out[-1].people[1], REF) - centre_px(out[0].people[1], REF)
    assert move[1] < -20 and abs(move[0]) < 1e-6


def test_identities_do_not_swap_when_the_size_order_flips():
    drv = dancers()
    first = [fr.people[0].body[:, 0].mean() < 0.5 for fr in drv]        # is list entry 0 the left dancer?
    assert first[0] and not first[-1]                                   # DWPose's order really flips
    tracks = track_people(drv)
    assert len(tracks) == 2
    for f, fr in enumerate(drv):
        assert fr.people[tracks[0][f]].body[:, 0].mean() < 0.5 < fr.people[tracks[1][f]].body[:, 0].mean()
    out, _, _ = align_people(reference(), drv, "similarity", fit_frames=0, allow_rotation=False)
    xs = [[centre_px(p, REF)[0] for p in fr.people] for fr in out]
    assert all(x_right > 600 and x_left < 500 for x_right, x_left in xs)


def test_a_count_mismatch_without_mapping_says_what_to_do():
    ref = reference(2)
    drv = [PoseFrame(*DRV, largest_first(fr.people + [person(640, 430, 0.3, DRV)])) for fr in dancers()]
    with pytest.raises(InputError) as err:
        nodes_pose.PoseAlign.execute(to_pose_keypoint([ref]), to_pose_keypoint(drv), "similarity", False, 8, 0, 0,
                                     people="all")
    text = str(err.value)
    assert text.startswith("Pose Align: ")
    assert "the reference shows 2 people and the driving video 3" in text
    assert "people_mapping" in text and "driving_person" in text and "0:0, 1:1" in text
    # with a mapping the third dancer is simply left out
    out, report, pairs = align_people(ref, drv, "similarity", mapping="0:1, 1:0")
    assert len(pairs) == 2 and all(len(fr.people) == 2 for fr in out) and "[2] are not in people_mapping" in report.text()


def test_mapping_mistakes_are_refused_before_the_run_and_name_the_input():
    assert parse_people_mapping(" 0:1; 1:0 ") == [(0, 1), (1, 0)] and parse_people_mapping("") == []
    message = nodes_pose.PoseAlign.validate_inputs(people_mapping="0-1")
    assert isinstance(message, str) and "people_mapping" in message and "0:1, 1:0" in message
    assert "named twice" in nodes_pose.PoseAlign.validate_inputs(people_mapping="0:1, 1:1")
    assert nodes_pose.PoseAlign.validate_inputs(people_mapping="0:1, 1:0") is True
    with pytest.raises(AlignmentError, match="names driving person 5.*Fix the pair in people_mapping"):
        align_people(reference(), dancers(), "similarity", mapping="5:0")
    with pytest.raises(AlignmentError, match="names reference person 4"):
        align_people(reference(), dancers(), "similarity", mapping="0:4")


def test_a_dancer_missing_for_some_frames_keeps_their_place():
    drv = dancers()
    for f in (3, 4):   # the right dancer leaves the picture for two frames
        drv[f] = PoseFrame(*DRV, [p for p in drv[f].people if p.body[:, 0].mean() < 0.5])
    out, report, pairs = align_people(reference(), drv, "official")
    assert all(len(fr.people) == 2 for fr in out)
    right = [pairs.index(p) for p in pairs if p[1] == 0][0]
    assert not (out[3].people[right].body_score > 0).any() and (out[5].people[right].body_score > 0.3).all()
    assert "not seen in 2 frame(s)" in report.text()
    back = from_pose_keypoint(to_pose_keypoint(out))            # the stand-in survives the format
    assert len(back[3].people) == 2
    nodes_pose.PoseRender.execute(to_pose_keypoint(out), 128, 128)
    # Face Boxes' person k follows output person k: the right dancer's box is on the right, empty while away
    from identity_animator.nodes.face import FaceBoxes

    masks, _ = FaceBoxes.execute(to_pose_keypoint(out), 128, 128, 0.1, right).result
    cols = [np.nonzero(m.sum(0).numpy())[0] for m in masks]
    assert all(c.size == 0 for c in cols[3:5]) and all(c.min() > 64 for k, c in enumerate(cols) if k not in (3, 4))
    masks, _ = FaceBoxes.execute(to_pose_keypoint(out), 128, 128, 0.1, 1 - right).result
    assert all(0 < np.nonzero(m.sum(0).numpy())[0].max() < 64 for m in masks)


@pytest.mark.parametrize("mode", ["none", "official", "similarity", "learnable"])
def test_every_mode_fits_each_person(mode):
    learnable = None
    if mode == "learnable":
        if not nodes_pose.LEARNABLE_CKPT.is_file():
            pytest.skip("the learnable-alignment checkpoint is not in this checkout")
        learnable = nodes_pose._load_learnable()
    out, report, _ = align_people(reference(), dancers(), mode, learnable=learnable)
    assert all(len(fr.people) == 2 for fr in out) and report.text().startswith(f"mode: {mode}")
    if mode != "none":
        assert len(re.findall(r"scale [0-9.]+, rotation", report.text())) == 2   # one fit per pair


def test_people_one_is_todays_behaviour():
    ref, drv = to_pose_keypoint([reference()]), to_pose_keypoint(dancers())
    plain = nodes_pose.PoseAlign.execute(ref, drv, "official", False, 8, 0, 1)
    one = nodes_pose.PoseAlign.execute(ref, drv, "official", False, 8, 0, 1, people="one", people_mapping="")
    frames, report = align_video(from_pose_keypoint(ref)[0], from_pose_keypoint(drv), "official", driving_person=1,
                                 fit_frames=8, allow_rotation=False)
    expected = json.dumps(to_pose_keypoint(frames))
    assert json.dumps(plain.result[0]) == json.dumps(one.result[0]) == expected
    assert plain.result[1] == one.result[1] == report.text()
    ignored = nodes_pose.PoseAlign.execute(ref, drv, "official", False, 8, 0, 1, people="one", people_mapping="0:1")
    assert json.dumps(ignored.result[0]) == expected and "people_mapping is ignored" in ignored.result[1]


def test_the_reference_face_shape_goes_to_each_person():
    from test_expression import DRIVER, FACE, face, place

    def with_face(p: Person, canvas, units, size):
        nose = p.body[0] * np.array(canvas, float)
        xy = place(units, size, nose + np.array([0, 10]))
        return Person(body=p.body, body_score=p.body_score, face=xy / np.array(canvas, float),
                      face_score=np.full(FACE, 0.9), rank=p.rank)

    ref = reference()
    ref = PoseFrame(*REF, [with_face(p, REF, face(width=w), 60 * s) for p, w, s in zip(ref.people, (1.0, 0.8), (1.0, 0.7))])
    drv = [PoseFrame(*DRV, [with_face(p, DRV, face(**DRIVER, mouth=0.1 * (f % 3)), 50) for p in fr.people])
           for f, fr in enumerate(dancers())]
    out = nodes_pose.PoseAlign.execute(to_pose_keypoint([ref]), to_pose_keypoint(drv), "similarity", False, 8, 0, 0,
                                       face="reference_shape", people="all")
    report = out.result[1]
    assert "person 0: face: reference_shape" in report and "person 1: face: reference_shape" in report


def test_pose_align_aligns_every_person_through_the_server(server):
    inputs = server.base_dir / "input"
    (inputs / "multi_reference.json").write_text(json.dumps(to_pose_keypoint([reference()])))
    (inputs / "multi_driving.json").write_text(json.dumps(to_pose_keypoint(dancers())))
    prompt = {
        "1": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "multi_reference.json"}},
        "2": {"class_type": "IDA_LoadPoseKeypoints", "inputs": {"file": "multi_driving.json"}},
        "3": {"class_type": "IDA_PoseAlign", "inputs": {
            "reference_pose": ["1", 0], "driving_pose": ["2", 0], "mode": "similarity", "allow_rotation": False,
            "fit_frames": 1, "reference_person": 0, "driving_person": 0, "people": "all",
            "people_mapping": "0:0, 1:1"}},
        "4": {"class_type": "IDA_PoseEdit", "inputs": {"pose_keypoint": ["3", 0], "edits": "{}"}},
    }
    result = server.client.run(prompt, timeout=120)
    assert result.status == "success", result.error
    assert "driving 0 -> reference 0, driving 1 -> reference 1" in result.outputs["3"]["ida_report"][0]
    frames = from_pose_keypoint(json.loads(result.outputs["4"]["openpose_json"][0]))
    assert len(frames) == 8 and all(len(fr.people) == 2 for fr in frames)
    ref = reference()
    np.testing.assert_allclose(frames[0].people[0].body * np.array(REF), ref.people[0].body * np.array(REF), atol=1e-3)
    bad = dict(prompt, **{"3": {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "people_mapping": "zero:one"}}})
    from test_bad_input import refused

    text, errors = refused(server, bad)
    assert "people_mapping" in text and "3" in errors


# ---- face refinement per person: each face pulled towards its own reference ----------------------

def tiny_parts(seed=0):
    """A decoder (latent -> [-1, 1] pixels, 8x up) and an 'ArcFace' (112x112 -> 16-d), frozen, random."""
    torch.manual_seed(seed)
    dec = torch.nn.Sequential(torch.nn.Conv2d(4, 3 * 64, 3, padding=1), torch.nn.PixelShuffle(8), torch.nn.Tanh())
    arc = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 16))
    return dec.requires_grad_(False), arc.requires_grad_(False)


LEFT = [(4, 8, 36, 40), None, (6, 10, 38, 42)]
RIGHT = [(40, 12, 76, 48), (42, 12, 78, 48), None]


def test_each_persons_face_is_compared_with_their_own_reference():
    dec, arc = tiny_parts()
    g = torch.Generator().manual_seed(1)
    refs = [torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)]
    z = torch.randn(3, 4, 8, 10, generator=g)
    refiner = MultiFaceRefiner(dec, arc, refs, [LEFT, RIGHT], RefineSchedule(0, 20, 2, 0.1), margin=8, chunk=2)
    assert refiner.frames() == [0, 1, 2] and refiner.chunks() == [[0, 1], [2]]
    with torch.no_grad():
        pixels = dec(z)
        faces = [(k, p, box) for k in range(3) for p, box in enumerate((LEFT[k], RIGHT[k])) if box is not None]
        emb = arc(face_crops(pixels[[k for k, _, _ in faces]], [b for _, _, b in faces], [(0, 0)] * len(faces)))
        own = identity_loss(emb, torch.cat([refs[p] for _, p, _ in faces]))
        swapped = identity_loss(emb, torch.cat([refs[1 - p] for _, p, _ in faces]))
        got = refiner.loss(z)
    # the mean over all four faces, each against its own person's embedding (crop decoding is exact here:
    # the toy decoder only sees a 3x3 neighbourhood, well inside the margin)
    torch.testing.assert_close(got, own, atol=1e-5, rtol=1e-5)
    assert abs(float(own) - float(swapped)) > 1e-3
    zz = z.clone().requires_grad_(True)
    refiner.loss_and_grad(zz)
    assert zz.grad.abs().sum() > 0 and all(p.grad is None for p in arc.parameters())
    with torch.inference_mode():                                   # as ComfyUI samples
        refined = refiner(z, 0, 25)
    assert refined.shape == z.shape and refiner.history[0][2] > refiner.history[0][1]           # the similarity rose


def test_one_person_through_the_multi_refiner_is_the_single_refiner():
    dec, arc = tiny_parts(2)
    ref = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    z = torch.randn(3, 4, 8, 10, generator=torch.Generator().manual_seed(4))
    single = FaceRefiner(dec, arc, ref, LEFT, RefineSchedule(0, 20, 2, 0.1), margin=8, chunk=2)
    multi = MultiFaceRefiner(dec, arc, [ref], [LEFT], RefineSchedule(0, 20, 2, 0.1), margin=8, chunk=2)
    with torch.no_grad():
        torch.testing.assert_close(multi.loss(z), single.loss(z), atol=0, rtol=0)


def test_the_sampler_node_builds_a_refiner_with_each_persons_face_and_boxes(monkeypatch):
    from types import SimpleNamespace

    from identity_animator.models.face import FaceLandmarks, FaceResult
    from identity_animator.nodes import refine as nodes_refine

    dec, arc = tiny_parts()
    monkeypatch.setattr(nodes_refine, "GradDecoder", lambda vae, latent_out, device, dtype: dec)
    five = np.array([[20.0, 22.0], [34.0, 21.5], [27.0, 30.0], [21.5, 38.0], [33.0, 37.5]])
    reference = torch.rand(1, 80, 144, 3, generator=torch.Generator().manual_seed(0))

    def face(dx):
        return FaceResult(np.ones(512, np.float32), np.array([12.0 + dx, 15.0, 44.0 + dx, 50.0]), five + [2.0 + dx, 4.0],
                          0.9, np.zeros((112, 112, 3), np.uint8), 144, 80)

    masks = torch.zeros(2, 64, 128)
    masks[:, 10:45, 12:42] = 1
    masks2 = torch.zeros(2, 64, 128)
    masks2[0, 10:45, 72:102] = 1                                   # the second person: frame 0 only
    marks = FaceLandmarks((five, five + 1.0), 128, 64)
    marks2 = FaceLandmarks((five + [60.0, 0.0], None), 128, 64)
    args = (None, arc, reference, face(0), masks, True, "euler", 0, 20, 1, 0.1, 32, True, 4, 0.0, 0.0, 1000.0, 1.0)
    (ks,) = nodes_refine.FaceRefineSampler.execute(*args, face_landmarks=marks, face_2=face(70), face_masks_2=masks2,
                                                   face_landmarks_2=marks2).result
    model = SimpleNamespace(inner_model=SimpleNamespace(inner_model=SimpleNamespace(process_latent_out=lambda z: z)))
    with torch.inference_mode():
        refiner = ks.sampler_function.build(model, torch.zeros(2, 4, 8, 16))
    assert isinstance(refiner, MultiFaceRefiner)
    assert [[p for p, _ in f] for f in refiner.faces] == [[0, 1], [0]]
    assert refiner.faces[0][1][1].box[0] > 60                     # person 1's face is cut on the right
    assert refiner.ref.shape == (2, 16) and not torch.equal(refiner.ref[0], refiner.ref[1])
    with pytest.raises(InputError, match="face_2 is connected but face_masks_2 is not"):
        nodes_refine.FaceRefineSampler.execute(*args, face_2=face(70))
    (one,) = nodes_refine.FaceRefineSampler.execute(*args, face_landmarks=marks).result
    with torch.inference_mode():
        assert type(one.sampler_function.build(model, torch.zeros(2, 4, 8, 16))) is FaceRefiner
