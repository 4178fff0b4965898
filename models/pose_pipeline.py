"""From detector output to aligned driving poses: person ordering, frame selection, one fit per video.

Pure numpy on :mod:`keypoints` frames; the node layer only converts types and reports progress.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .keypoints import Person, PoseFrame
from .pose_align import AlignmentError, Transform2D, apply_normalised, fit_official, fit_similarity, VISIBLE

logger = logging.getLogger(__name__)

MODES = ("none", "official", "similarity", "learnable")


def person_size(p: Person) -> float:
    vis = p.body_score > VISIBLE
    if vis.sum() < 2:
        return 0.0
    span = p.body[vis].max(0) - p.body[vis].min(0)
    return float(span[0] * span[1]) + float(span.max()) * 1e-3


def credible(p: Person) -> bool:
    """A person the pose model actually found: at least one body joint above the visibility
    threshold. DWPose's whole-image fallback (nobody detected) can give a "person" with none, and
    so can another pack's empty entry; the official pipeline would draw and fit such a person
    anyway, but there is nothing in it to align to."""
    return bool((p.body_score > VISIBLE).any())


def frame_from_wholebody(xy: np.ndarray, score: np.ndarray, width: int, height: int) -> PoseFrame:
    """DWPose's 134 points per person -> a frame with people ordered largest first.

    Each person keeps its position in the detector's order as ``rank``: the official drawing stacks
    people in that order."""
    people = [Person(body=xy[i, :18], body_score=score[i, :18], face=xy[i, 24:92], face_score=score[i, 24:92],
                     hand_left=xy[i, 92:113], hand_left_score=score[i, 92:113],
                     hand_right=xy[i, 113:134], hand_right_score=score[i, 113:134], rank=i) for i in range(len(xy))]
    people.sort(key=person_size, reverse=True)
    return PoseFrame(width, height, people)


@dataclass
class AlignReport:
    mode: str
    transform: Transform2D | None
    fit_frames: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"mode: {self.mode}"]
        if self.transform is not None:
            t = self.transform
            lines.append(f"scale {t.scale:.3f}, rotation {t.rotation_degrees:.1f} deg, "
                         f"translation ({t.translation[0]:.1f}, {t.translation[1]:.1f}) px")
            lines.append(f"fitted on {len(self.fit_frames)} frame(s): {self.fit_frames[:12]}{' ...' if len(self.fit_frames) > 12 else ''}")
        lines += self.notes
        return "\n".join(lines)


def _body_arrays(frames: list[PoseFrame], idx: list[int], person: int):
    xy = np.stack([frames[i].people[person].body for i in idx])
    sc = np.stack([frames[i].people[person].body_score for i in idx])
    return xy, sc


def align_video(ref: PoseFrame, driving: list[PoseFrame], mode: str, *, reference_person: int = 0,
                driving_person: int = 0, fit_frames: int = 8, allow_rotation: bool = True,
                learnable=None) -> tuple[list[PoseFrame], AlignReport]:
    """Fit one transform for the whole video and apply it to every person of every frame.

    Output frames live on the reference canvas (the official pipeline draws poses at the reference's
    size). ``fit_frames`` limits the similarity/learnable fit to the first N frames that show the
    followed person credibly (0 = all); the official fit uses every single-person frame and every
    reference-visible joint in it, whatever its driving score, as the original does.

    No credible person (:func:`credible`) in the reference, or in any driving frame, is an
    :class:`AlignmentError`. The original stops there too when the reference has no visible joint
    (numpy fails on an empty fit); with no credible dancer anywhere it would fit on the whole-image
    guesses and draw noise, which is worse than a clear message.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown alignment mode {mode!r}; choose one of {MODES}.")
    if not driving:
        raise AlignmentError("The driving pose sequence is empty.")
    ref_size = (ref.width, ref.height)
    report = AlignReport(mode, None)
    if mode == "none":
        out = [PoseFrame(ref.width, ref.height, [p.mapped(lambda xy: xy) for p in fr.people]) for fr in driving]
        return out, report
    if not any(credible(p) for p in ref.people):
        raise AlignmentError("No person was found in the reference image; pose alignment needs one. "
                             "Use a reference where the whole upper body is visible, or mode 'none'.")
    if reference_person >= len(ref.people):
        raise AlignmentError(f"reference_person={reference_person} but the reference shows {len(ref.people)} person(s).")
    rp = ref.people[reference_person]
    if not credible(rp):
        raise AlignmentError(f"Reference person {reference_person} has no body joint the pose model is sure of; "
                             "pick another reference_person, or mode 'none'.")
    if len(ref.people) > 1:
        report.notes.append(f"reference shows {len(ref.people)} people; following person {reference_person} (largest first)")
    drv_size = (driving[0].width, driving[0].height)
    with_person = [i for i, fr in enumerate(driving)
                   if len(fr.people) > driving_person and credible(fr.people[driving_person])]
    if not with_person:
        raise AlignmentError(f"No driving frame shows person {driving_person}; no person was detected, or lower driving_person.")
    skipped = sum(len(fr.people) > driving_person for fr in driving) - len(with_person)
    if skipped and mode != "official":
        report.notes.append(f"{skipped} frame(s) where person {driving_person} has no sure body joint are not fitted on")
    if mode == "official":
        # the original's "single person" test is the person count alone, credible or not
        idx, person = [i for i, fr in enumerate(driving) if len(fr.people) == 1], 0
        if not idx:
            idx, person = with_person, driving_person
            report.notes.append(f"no driving frame shows exactly one person; fitted on person {driving_person} "
                                "of every frame instead (the original code stops with an error here)")
        unsure = [i for i in idx if not credible(driving[i].people[person])]
        if unsure:
            report.notes.append(f"{len(unsure)} fitted frame(s) show no body joint above {VISIBLE} (nobody detected, "
                                f"e.g. {unsure[:5]}); the original fits on them too. Try 'similarity' if the "
                                "skeleton lands in the wrong place")
        xy, sc = _body_arrays(driving, idx, person)
        transform = fit_official(rp.body, rp.body_score, xy, sc, ref_size, drv_size)
    else:
        idx = with_person[: fit_frames] if fit_frames > 0 else with_person
        xy, sc = _body_arrays(driving, idx, driving_person)
        transform = fit_similarity(rp.body, rp.body_score, xy, sc, ref_size, drv_size,
                                   allow_rotation=allow_rotation or mode == "learnable")
        if mode == "learnable":
            if learnable is None:
                raise AlignmentError("Mode 'learnable' needs the learnable-alignment checkpoint; it was not found.")
            from .pose_align_learnable import refine

            to_px = lambda a, size: a * np.array(size, float)
            transform = refine(learnable, to_px(rp.body, ref_size), rp.body_score, to_px(xy, drv_size), sc, transform)
            report.notes += list(getattr(transform, "notes", ()))   # the guard's reason, when it stepped in
    report.transform, report.fit_frames = transform, idx
    fn = lambda pts: apply_normalised(transform, pts, drv_size, ref_size)
    out = [PoseFrame(ref.width, ref.height, [p.mapped(fn) for p in fr.people]) for fr in driving]
    return out, report


# ---- several people (issue 15 part 3): each driving person on its own reference person ----------

PEOPLE = ("one", "all")
TRACK_GATE = 0.35     # farthest a body centre may move between two sightings, in canvas long sides
BRIEF_SHARE = 0.1     # a driving person seen in fewer than this share of the frames is a passing detection


def body_centre(p: Person, width: int, height: int) -> np.ndarray | None:
    """Mean of the sure body joints in units of the canvas's longer side (so x and y count alike)."""
    vis = p.body_score > VISIBLE
    if not vis.any():
        return None
    return p.body[vis].mean(0) * np.array([width, height], float) / max(width, height)


def track_people(frames: list[PoseFrame], gate: float = TRACK_GATE) -> list[list[int | None]]:
    """Follow every credible driving person through the video: ``tracks[k][f]`` is the index of
    driving person ``k`` in ``frames[f].people``, or None where that person is not seen.

    DWPose lists people largest first in every frame, so an index is not an identity: two dancers
    swap places in the list whenever the one behind comes nearer the camera. Here each frame's people
    are matched to the people already followed by the distance of their body centres to where each
    was last seen (Hungarian assignment, so the closest overall pairing wins), at most ``gate`` canvas
    long sides away; anyone left over starts a new person. Numbering: largest first in the first frame
    that shows anybody, then in order of appearance (so person 0 is ``driving_person`` 0 of that frame).
    """
    from scipy.optimize import linear_sum_assignment

    tracks: list[list[int | None]] = []
    last: list[np.ndarray] = []
    for f, fr in enumerate(frames):
        seen = [(i, c) for i, p in enumerate(fr.people)
                if credible(p) and (c := body_centre(p, fr.width, fr.height)) is not None]
        for t in tracks:
            t.append(None)
        unmatched = list(range(len(seen)))
        if tracks and seen:
            cost = np.array([[float(np.linalg.norm(c - prev)) for prev in last] for _, c in seen])
            rows, cols = linear_sum_assignment(cost)
            for r, k in zip(rows, cols):
                if cost[r, k] <= gate:
                    i, c = seen[r]
                    tracks[k][f], last[k] = i, c
                    unmatched.remove(r)
        for r in unmatched:   # already in the detector's largest-first order
            i, c = seen[r]
            tracks.append([None] * f + [i])
            last.append(c)
    return tracks


def parse_people_mapping(text: str | None) -> list[tuple[int, int]]:
    """``"0:1, 1:0"`` -> ``[(0, 1), (1, 0)]``: driving person -> reference person. Empty text = no
    mapping. Pairs are separated by commas, semicolons or spaces; each side at most once.
    Raises :class:`AlignmentError` with what is wrong and how to write it."""
    pairs: list[tuple[int, int]] = []
    for token in (text or "").replace(";", ",").replace(",", " ").split():
        d, sep, r = token.partition(":")
        if not sep or not d.strip().isdigit() or not r.strip().isdigit():
            raise AlignmentError(f"{token!r} is not a pair 'driving:reference' of person numbers. Write pairs such as "
                                 "0:1, 1:0 (driving person 0 becomes reference person 1 and 1 becomes 0), or leave it "
                                 "empty to match people by position.")
        pairs.append((int(d), int(r)))
    for side, name in ((0, "driving"), (1, "reference")):
        numbers = [p[side] for p in pairs]
        twice = sorted({n for n in numbers if numbers.count(n) > 1})
        if twice:
            raise AlignmentError(f"{name} person {twice[0]} is named twice; each person may appear once on each side "
                                 "of the pairs (e.g. 0:1, 1:0).")
    return pairs


def _order_left_to_right(centres: dict[int, np.ndarray]) -> list[int]:
    return sorted(centres, key=lambda k: (float(centres[k][0]), k))


def match_by_position(ref: PoseFrame, ref_ids: list[int], driving: list[PoseFrame],
                      tracks: list[list[int | None]], track_ids: list[int]) -> list[tuple[int, int]]:
    """Pairs (driving person, reference person) by left-to-right order of body centres: the
    reference's people, and the driving people where they first stand together (the first frame that
    shows all of them; failing that, each one's first sighting)."""
    ref_c = {i: body_centre(ref.people[i], ref.width, ref.height) for i in ref_ids}
    together = next((f for f in range(len(driving)) if all(tracks[k][f] is not None for k in track_ids)), None)
    drv_c = {}
    for k in track_ids:
        f = together if together is not None else next(f for f, i in enumerate(tracks[k]) if i is not None)
        fr = driving[f]
        drv_c[k] = body_centre(fr.people[tracks[k][f]], fr.width, fr.height)
    return list(zip(_order_left_to_right(drv_c), _order_left_to_right(ref_c)))


def _empty_person(slot: int) -> Person:
    """A stand-in for a person not seen in a frame, so that person ``k`` of the output is the same
    dancer in every frame (Face Boxes' ``person``). Nothing of it is drawn: every score is 0."""
    return Person(body=np.zeros((18, 2)), body_score=np.zeros(18), rank=1000 + slot)


def align_people(ref: PoseFrame, driving: list[PoseFrame], mode: str, *, mapping: str = "", fit_frames: int = 8,
                 allow_rotation: bool = True, learnable=None) -> tuple[list[PoseFrame], AlignReport, list[tuple[int, int]]]:
    """Pose Align's ``people: all``: every driving person on its own reference person, one fit each.

    Driving people are followed through the video (:func:`track_people`), paired with reference
    people by ``mapping`` (``"driving:reference, ..."``) or, without one, by left-to-right order
    (:func:`match_by_position`; the counts must then be equal). Each pair is fitted exactly as
    :func:`align_video` fits one person (same modes, same ``fit_frames``), on the frames where that
    driving person is seen; for ``official`` that is every such frame (with several dancers no
    frame shows exactly one person). Output person ``k`` is the pair with the k-th smallest
    reference number, in every frame (a stand-in with no sure joint where that dancer is not seen);
    unpaired driving people are left out. Returns the frames, the report and the pairs in output order.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown alignment mode {mode!r}; choose one of {MODES}.")
    if not driving:
        raise AlignmentError("The driving pose sequence is empty.")
    pairs = parse_people_mapping(mapping)
    ref_ids = [i for i, p in enumerate(ref.people) if credible(p)]
    if not ref_ids:
        raise AlignmentError("no person was found in the reference pose (reference_pose). Use a reference where the "
                             "whole upper body of every person is visible.")
    tracks = track_people(driving)
    if not tracks:
        raise AlignmentError("no person was found in any driving frame (driving_pose); check the driving video's "
                             "keypoints.")
    brief_min = max(1, int(np.ceil(BRIEF_SHARE * len(driving))))
    seen = [sum(i is not None for i in t) for t in tracks]
    counted = [k for k in range(len(tracks)) if seen[k] >= brief_min]
    notes = []
    brief = [k for k in range(len(tracks)) if k not in counted]
    if pairs:
        for d, r in pairs:
            if d >= len(tracks):
                raise AlignmentError(f"people_mapping names driving person {d}, but the driving video shows "
                                     f"{len(tracks)} people (0-{len(tracks) - 1}: largest first in the first frame, "
                                     "then in order of appearance). Fix the pair in people_mapping.")
            if r >= len(ref.people) or not credible(ref.people[r]):
                shown = len(ref.people)
                raise AlignmentError(f"people_mapping names reference person {r}, but the reference shows "
                                     f"{len(ref_ids)} person(s) with a sure body joint ({', '.join(map(str, ref_ids))}, "
                                     f"largest first, of {shown} found). Fix the pair in people_mapping.")
        how = "by people_mapping"
    else:
        if brief:
            notes.append(f"driving person(s) {brief} seen in fewer than {brief_min} frame(s) are passing detections "
                         "and left out (name one in people_mapping to keep it)")
        if len(counted) != len(ref_ids):
            raise AlignmentError(
                f"people is all, but the reference shows {len(ref_ids)} {'person' if len(ref_ids) == 1 else 'people'} "
                f"and the driving video {len(counted)}; give a mapping such as "
                f"{', '.join(f'{k}:{i}' for k, i in zip(counted, ref_ids)) or '0:0'} in people_mapping, or set people "
                "to one and pick one person with driving_person.")
        pairs = match_by_position(ref, ref_ids, driving, tracks, counted)
        how = "by position, left to right"
    pairs = sorted(pairs, key=lambda p: p[1])
    left_out = [k for k in counted if k not in {d for d, _ in pairs}]
    if left_out:
        notes.append(f"driving person(s) {left_out} are not in people_mapping and are left out")
    report = AlignReport(mode, None)
    report.notes.append(f"people: all, {len(pairs)} pair(s) {how}: "
                        + ", ".join(f"driving {d} -> reference {r}" for d, r in pairs)
                        + f" (output person k is the k-th pair)")
    report.notes += notes
    out_people: list[list[Person]] = [[] for _ in driving]
    for slot, (d, r) in enumerate(pairs):
        frames_of = [f for f, i in enumerate(tracks[d]) if i is not None]
        sub = [PoseFrame(driving[f].width, driving[f].height, [driving[f].people[tracks[d][f]]]) for f in frames_of]
        try:
            aligned, rep = align_video(ref, sub, mode, reference_person=r, driving_person=0, fit_frames=fit_frames,
                                       allow_rotation=allow_rotation, learnable=learnable)
        except AlignmentError as exc:
            raise AlignmentError(f"driving person {d} -> reference person {r}: {exc}") from None
        placed = dict(zip(frames_of, aligned))
        for f in range(len(driving)):
            out_people[f].append(placed[f].people[0] if f in placed else _empty_person(slot))
        lines = rep.text().splitlines()[1:]
        if rep.fit_frames:   # numbered in the whole video, not in this person's frames
            lines = [l for l in lines if not l.startswith("fitted on")]
            real = [frames_of[i] for i in rep.fit_frames]
            lines.append(f"fitted on {len(real)} frame(s): {real[:12]}{' ...' if len(real) > 12 else ''}")
        missing = len(driving) - len(frames_of)
        if missing:
            lines.append(f"not seen in {missing} frame(s)")
        report.notes.append(f"person {slot} (driving {d} -> reference {r}): " + "; ".join(
            l for l in lines if not l.startswith("reference shows")))
    out = [PoseFrame(ref.width, ref.height, people) for people in out_people]
    return out, report, pairs
