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
    report.transform, report.fit_frames = transform, idx
    fn = lambda pts: apply_normalised(transform, pts, drv_size, ref_size)
    out = [PoseFrame(ref.width, ref.height, [p.mapped(fn) for p in fr.people]) for fr in driving]
    return out, report
