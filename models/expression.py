"""Expression transfer: the driving face's motion on the reference face's shape.

X-Dyna's observation, without its trained module: DWPose's 68 face points carry the *shape* of the
face they were read from (eye distance, face width, where the mouth and brows sit), not only its
expression. Pose Align moves the driver's face points with the body, so PoseNet is shown a foreign
face; StableAnimator was trained on poses and references of the same person, whose face points always
had the reference's shape. Here the reference's face points are kept and only the driver's motion is
applied to them:

1. **Rest face** of the driver: each frame is brought onto a template by a similarity fitted on the
   face's rigid points (nose, eye corners, the top of the jaw), then the per-point median is taken
   over the quarter of the clip with the most closed mouth (:func:`rest_face`). A median over the
   whole clip would be a half-open mouth for a driver who talks or sings throughout (closing the
   mouth would then press the reference's lips into each other); the first frame alone is one noisy
   sample that may be mid-blink or mid-word.
2. **Head motion** per frame: a similarity (rotation, scale, translation) from the rest face to the
   frame, fitted on the rigid points (:data:`RIGID`), so mouth, eyes and brows do not move the head.
3. **Expression** per frame: what is left once the head motion is undone, a displacement per point
   in the face's own upright frame (eye line horizontal), scaled per axis from the driver's face size
   to the reference's (:class:`FaceFit`: width and height of the two rest faces), so a mouth that
   opens by 10 % of the driver's face height opens by 10 % of the reference's. Eyelids are moved by
   *ratio* (an eye half closed in the driver is half closed in the reference, whatever the eyes'
   sizes); lips and lids never cross.
4. **Placement**: the reference's face (its size and proportions, in reference pixels) turned like the
   driver's rest face and centred on its rigid points, then moved by that frame's head motion. The
   aligned driver face is already where the aligned skeleton's head is, so the result follows the
   aligned body.

Missing and unsure points: a driver point without coordinates stays without coordinates; a driver
point at or below ``threshold`` keeps its low score and carries no expression (it sits at the
reference's rest place, moved with the head), since its displacement is mostly detector noise. A
reference point the detector is unsure of is taken from the driver's rest face, scaled to the
reference's face size. Scores are always the driver's: the skeleton is drawn as confidently as the
driver's face was read. A frame whose face shows too few rigid points to find the head keeps the
driver's points (and is counted).

All coordinates here are pixels of the reference canvas (so a scale is the same in x and y); Pose
Align's frames are already on it. Pure numpy.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .keypoints import FACE, PoseFrame, known
from .pose_align import AlignmentError, Transform2D, weighted_umeyama

logger = logging.getLogger(__name__)

FACE_MODES = ("driver", "reference_shape")
THRESHOLD = 0.3          # the pack's "detected" cut (keypoints.THRESHOLD)

# the 68 face points in iBUG order (DWPose follows it); "right" is the person's right (image left)
RIGHT_EYE, LEFT_EYE = tuple(range(36, 42)), tuple(range(42, 48))
# points that move with the skull and hardly with the expression: jaw top (near the ears, where the
# jaw hinges), nose bridge and nostrils, the four eye corners
RIGID = (0, 1, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
EYE_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))      # (upper lid, lower lid)
LIP_PAIRS = ((61, 67), (62, 66), (63, 65))                # (upper inner lip, lower inner lip)
REST_QUANTILE = 0.25     # the rest face is the median over this share of frames with the most closed mouth
REST_ITERATIONS = 3      # template -> median -> template: the median no longer moves after two
MIN_FIT_POINTS = 3       # rigid points for a head fit: two fix a similarity, a third checks it
MIN_REFERENCE_POINTS = FACE // 2   # below this the reference's face shape is mostly guessed
MAX_EYE_RATIO = 2.0      # an eye opened wider than twice its rest opening is a detector error
GAP_EPS = 0.01           # an opening under 1 % of the face size counts as closed (no ratio from it)


class ExpressionError(ValueError):
    """The reference face cannot give its shape; the message says which input and what to do."""


def _rot(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _inverse(t: Transform2D) -> Transform2D:
    inv = np.linalg.inv(t.matrix)
    return Transform2D(inv, -inv @ t.translation)


def _size(xy: np.ndarray) -> float:
    """RMS distance of the points from their centroid (0 for fewer than two)."""
    if len(xy) < 2:
        return 0.0
    return float(np.sqrt(((xy - xy.mean(0)) ** 2).sum(1).mean()))


def fit_weights(score: np.ndarray, has: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Weights of the rigid points for a head fit: their scores where they are sure; when fewer than
    :data:`MIN_FIT_POINTS` are, every rigid point with coordinates (a face drawn dim everywhere still
    has a head that turns)."""
    w = np.zeros(FACE)
    rigid = list(RIGID)
    sure = has[rigid] & (score[rigid] > threshold)
    if sure.sum() >= MIN_FIT_POINTS:
        w[rigid] = np.where(sure, score[rigid], 0.0)
    else:
        w[rigid] = np.where(has[rigid], np.maximum(score[rigid], 1e-3), 0.0)
    return w


def _fit(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> Transform2D | None:
    """Similarity ``dst ≈ H(src)`` on the weighted points, or None when they cannot fix one."""
    if np.count_nonzero(w) < MIN_FIT_POINTS:
        return None
    sel = w > 0
    try:
        t = weighted_umeyama(src[sel], dst[sel], w[sel], allow_rotation=True)
    except AlignmentError:
        return None
    return t if t.scale > 1e-9 else None


def _lip_gap(xy: np.ndarray, sure: np.ndarray) -> float:
    gaps = [np.linalg.norm(xy[b] - xy[a]) for a, b in LIP_PAIRS if sure[a] and sure[b]]
    return float(np.mean(gaps)) if gaps else np.nan


def _masked_median(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-point median ``[N, 2]`` of ``v [F, N, 2]`` over the frames ``mask [F, N]`` selects (NaN where none)."""
    x = np.where(mask[..., None], v, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "All-NaN slice": a point no frame selects
        return np.nanmedian(x, axis=0) if len(v) else np.full(v.shape[1:], np.nan)


@dataclass
class RestFace:
    xy: np.ndarray           # [68, 2] pixels, in the pose of the first fitted frame
    has: np.ndarray          # [68] bool: the driver showed the point in some fitted frame
    frames: list[int]        # the frames the median was taken over


def rest_face(xy: np.ndarray, score: np.ndarray, has: np.ndarray, threshold: float = THRESHOLD) -> RestFace | None:
    """The driver's rest face from ``xy [F, 68, 2]`` (pixels), ``score [F, 68]``, ``has [F, 68]``
    (points with coordinates), or None when no frame shows enough rigid points to be fitted.

    Each frame is mapped onto a template by a similarity on its rigid points; the template starts as
    the first fittable frame and becomes the per-point median, twice more. The median is taken over
    the frames whose inner lips are closest together (the lowest :data:`REST_QUANTILE` of the lip
    gap; all fitted frames when no frame shows the lips), using a point's sure sightings first and
    any sighting only for a point never sure.
    """
    weights = [fit_weights(score[t], has[t], threshold) for t in range(len(xy))]
    fittable = [t for t, w in enumerate(weights) if np.count_nonzero(w) >= MIN_FIT_POINTS]
    if not fittable:
        return None
    template, t_has = xy[fittable[0]].copy(), has[fittable[0]].copy()
    chosen: list[int] = []
    for _ in range(REST_ITERATIONS):
        moved, used = [], []
        for t in fittable:
            g = _fit(xy[t], template, weights[t] * t_has)
            if g is not None:
                moved.append(g.apply(xy[t]))
                used.append(t)
        if not used:
            break
        v = np.stack(moved)
        sure = np.stack([has[t] & (score[t] > threshold) for t in used])
        seen = np.stack([has[t] for t in used])
        gaps = np.array([_lip_gap(v[k], sure[k]) for k in range(len(used))])
        if np.isfinite(gaps).any():
            cut = np.nanquantile(gaps, REST_QUANTILE)
            rest = np.isfinite(gaps) & (gaps <= cut)
        else:
            rest = np.ones(len(used), bool)
        med = np.full((FACE, 2), np.nan)
        # a point's sure sightings in the rest frames first, then anywhere, then unsure sightings
        for mask in (sure & rest[:, None], sure, seen & rest[:, None], seen):
            cand = _masked_median(v, mask)
            fill = np.isnan(med[:, 0]) & ~np.isnan(cand[:, 0])
            med[fill] = cand[fill]
        t_has = ~np.isnan(med[:, 0])
        template = np.where(t_has[:, None], med, 0.0)
        chosen = [used[k] for k in np.flatnonzero(rest)]
    return RestFace(template, t_has, chosen)


@dataclass
class FaceFit:
    """How the reference's face stands to the driver's rest face, in their upright frames."""

    ref_upright: np.ndarray   # [68, 2] the reference face turned eye line horizontal (filled where unsure)
    ref_has: np.ndarray       # [68] bool: a place for the point (the reference's own, or filled)
    theta_rest: float         # the driver's rest face's eye-line angle (radians, image axes)
    k: np.ndarray             # [2] per-axis scale driver -> reference (upright width, height)
    ref_centre: np.ndarray    # [2] the reference's rigid centroid (upright)
    rest_centre: np.ndarray   # [2] the driver rest face's rigid centroid (canvas)
    filled: int               # reference points taken from the driver's rest face

    def place(self, upright: np.ndarray) -> np.ndarray:
        """Upright reference-shaped points -> the canvas, turned and centred like the driver's rest face."""
        return (upright - self.ref_centre) @ _rot(self.theta_rest).T + self.rest_centre


def _eye_line_angle(xy: np.ndarray, sure: np.ndarray) -> float | None:
    right, left = [i for i in RIGHT_EYE if sure[i]], [i for i in LEFT_EYE if sure[i]]
    if right and left:
        d = xy[left].mean(0) - xy[right].mean(0)
    elif sure[0] and sure[16]:
        d = xy[16] - xy[0]
    else:
        return None
    return float(np.arctan2(d[1], d[0]))


def reference_problem(ref_xy, ref_score, threshold: float = THRESHOLD) -> str | None:
    """Why the reference face cannot give its shape (None when it can)."""
    if ref_xy is None or ref_score is None:
        return "has no face points at all"
    sure = known(ref_xy, ref_score) & (np.asarray(ref_score) > threshold)
    n, rigid = int(sure.sum()), int(sure[list(RIGID)].sum())
    if n < MIN_REFERENCE_POINTS or rigid < MIN_FIT_POINTS:
        return (f"shows only {n} of its {FACE} face points clearly (score above {threshold}), {rigid} of them on the "
                f"nose, eye corners and jaw top; the face shape needs at least {MIN_REFERENCE_POINTS}, "
                f"{MIN_FIT_POINTS} of them there")
    if _size(np.asarray(ref_xy, float)[sure]) < 1.0:
        return "has all its face points on one spot, so it has no shape to keep"
    return None


def fit_faces(ref_xy: np.ndarray, ref_score: np.ndarray, rest: RestFace, threshold: float = THRESHOLD) -> FaceFit | None:
    """The reference face against the driver's rest face (pixels of one canvas), or None when they
    share too few points to be compared."""
    ref_xy, ref_score = np.asarray(ref_xy, float), np.asarray(ref_score, float)
    r_ok = known(ref_xy, ref_score) & (ref_score > threshold)
    common = r_ok & rest.has
    if common.sum() < MIN_FIT_POINTS:
        return None
    rigid = np.zeros(FACE, bool)
    rigid[list(RIGID)] = True
    on = common & rigid if (common & rigid).sum() >= MIN_FIT_POINTS else common
    # the relative turn of the two faces; the reference's own eye line gives the upright frame, so the
    # driver's follows from it even where the driver's eyes are unsure
    rel = _fit(ref_xy, rest.xy, np.where(on, ref_score, 0.0))
    if rel is None:
        return None
    theta_ref = _eye_line_angle(ref_xy, r_ok)
    theta_ref = 0.0 if theta_ref is None else theta_ref
    theta_rest = theta_ref + np.radians(rel.rotation_degrees)
    ref_u = ref_xy @ _rot(-theta_ref).T
    rest_u = rest.xy @ _rot(-theta_rest).T
    sd_r, sd_s = ref_u[common].std(0), rest_u[common].std(0)
    iso = _size(ref_u[common]) / max(_size(rest_u[common]), 1e-9)
    # per axis where both faces have an extent on it; the overall size ratio where one is flat
    k = np.where((sd_r > 1e-6) & (sd_s > 1e-6), sd_r / np.maximum(sd_s, 1e-12), iso)
    b = ref_u[common].mean(0) - k * rest_u[common].mean(0)
    fill = ~r_ok & rest.has
    ref_u = np.where(fill[:, None], k * rest_u + b, np.where(r_ok[:, None], ref_u, np.nan))
    return FaceFit(ref_u, r_ok | rest.has, theta_rest, k, ref_u[on].mean(0), rest.xy[on].mean(0), int(fill.sum()))


def _retarget(fit: FaceFit, rest_u: np.ndarray, frame_u: np.ndarray, sure: np.ndarray, scale_rest: float,
              scale_ref: float) -> np.ndarray:
    """Upright reference-shaped points for one frame: the reference plus the scaled expression."""
    out = fit.ref_upright + np.where(sure[:, None], fit.k * (frame_u - rest_u), 0.0)
    ref = fit.ref_upright
    for pairs, by_ratio in ((EYE_PAIRS, True), (LIP_PAIRS, False)):
        for a, b in pairs:
            if not (sure[a] and sure[b]):
                continue
            g_rest, g_now, g_ref = rest_u[b, 1] - rest_u[a, 1], frame_u[b, 1] - frame_u[a, 1], ref[b, 1] - ref[a, 1]
            if by_ratio and g_rest > GAP_EPS * scale_rest and g_ref > GAP_EPS * scale_ref:
                # an eye a third closed in the driver is a third closed in the reference, whatever their sizes
                gap = g_ref * float(np.clip(g_now / g_rest, 0.0, MAX_EYE_RATIO))
            else:
                # the lips (closed at rest: no ratio to take) open by the scaled amount, and never cross
                gap = max(g_ref + fit.k[1] * (g_now - g_rest), min(g_ref, 0.0))
            mid = (out[a, 1] + out[b, 1]) / 2
            out[a, 1], out[b, 1] = mid - gap / 2, mid + gap / 2
    return out


@dataclass
class TransferResult:
    faces: list[np.ndarray | None]   # per frame: [68, 2] pixels, or None where the frame had no face
    kept: list[int]                  # frames that kept the driver's points (too few rigid points)
    rest_frames: list[int]
    fit: FaceFit | None
    notes: list[str] = field(default_factory=list)


def transfer(ref_xy: np.ndarray, ref_score: np.ndarray, faces: list[tuple[np.ndarray, np.ndarray] | None],
             threshold: float = THRESHOLD) -> TransferResult:
    """The driver's face motion on the reference's face shape, frame by frame.

    ``ref_xy [68, 2]`` and ``ref_score [68]`` (pixels); ``faces``: per frame ``(xy [68, 2], score [68])``
    of the followed driving person, aligned onto the same canvas, or None (no face). Returns the new
    points per frame (pixels, ``(0, 0)`` where the driver's point has no coordinates); scores are the
    driver's and are not returned. Raises :class:`ExpressionError` when the reference face cannot
    give a shape (:func:`reference_problem`).
    """
    problem = reference_problem(ref_xy, ref_score, threshold)
    if problem:
        raise ExpressionError(problem)
    present = [t for t, f in enumerate(faces) if f is not None]
    out: list[np.ndarray | None] = [None if f is None else np.asarray(f[0], float).copy() for f in faces]
    if not present:
        return TransferResult(out, [], [], None, ["the followed driving person shows no face in any frame; nothing to transfer"])
    xy = np.stack([np.asarray(faces[t][0], float) for t in present])
    sc = np.stack([np.asarray(faces[t][1], float) for t in present])
    has = known(xy, sc)
    rest = rest_face(xy, sc, has, threshold)
    fit = None if rest is None else fit_faces(ref_xy, ref_score, rest, threshold)
    if fit is None:
        return TransferResult(out, present, [], None, ["the driving face never shows enough of the nose, eye corners and "
                                                       "jaw top to follow the head; the driver's face points are kept"])
    rest_u = rest.xy @ _rot(-fit.theta_rest).T
    scale_rest, scale_ref = _size(rest_u[rest.has]), _size(fit.ref_upright[fit.ref_has])
    kept = []
    for k, t in enumerate(present):
        head = _fit(rest.xy, xy[k], fit_weights(sc[k], has[k], threshold) * rest.has)
        if head is None:
            kept.append(t)
            continue
        frame_u = _inverse(head).apply(xy[k]) @ _rot(-fit.theta_rest).T
        sure = has[k] & (sc[k] > threshold) & rest.has
        face = head.apply(fit.place(_retarget(fit, rest_u, frame_u, sure, scale_rest, scale_ref)))
        # never invent a point: one without coordinates in the driver stays without
        out[t] = np.where(has[k][:, None] & fit.ref_has[:, None], face, np.where(has[k][:, None], xy[k], 0.0))
    rest_frames = [present[i] for i in rest.frames]
    notes = [f"rest face: median of {len(rest_frames)} frame(s) with the most closed mouth (e.g. {rest_frames[:5]})"]
    if fit.filled:
        notes.append(f"{fit.filled} reference face point(s) the detector was unsure of were taken from the driver's rest "
                     "face, scaled to the reference's face")
    if kept:
        notes.append(f"{len(kept)} frame(s) show too few sure face points to follow the head and keep the driver's face "
                     f"points (e.g. {kept[:5]})")
    return TransferResult(out, kept, rest_frames, fit, notes)


def transfer_video(ref: PoseFrame, frames: list[PoseFrame], reference_person: int = 0, driving_person: int = 0,
                   threshold: float = THRESHOLD) -> tuple[list[PoseFrame], list[str]]:
    """Pose Align's output with the followed driving person's face points on the reference's face shape.

    ``frames`` are on the reference canvas (Pose Align's output); other people keep their faces (the
    reference shows one identity). Raises :class:`ExpressionError` with what is wrong with the
    reference face.
    """
    if reference_person >= len(ref.people):
        raise ExpressionError(f"shows {len(ref.people)} person(s), so reference_person {reference_person} has no face")
    rp = ref.people[reference_person]
    ref_px = None if rp.face is None else rp.face * np.array([ref.width, ref.height], float)
    faces = []
    for fr in frames:
        p = fr.people[driving_person] if len(fr.people) > driving_person else None
        if p is None or p.face is None:
            faces.append(None)
        else:
            faces.append((p.face * np.array([fr.width, fr.height], float), p.face_score))
    result = transfer(ref_px, rp.face_score, faces, threshold)
    out = []
    for fr, face in zip(frames, result.faces):
        if face is None or len(fr.people) <= driving_person:
            out.append(fr)
            continue
        people = list(fr.people)
        p = people[driving_person]
        people[driving_person] = replace(p, face=face / np.array([fr.width, fr.height], float),
                                         face_score=p.face_score.copy())
        out.append(PoseFrame(fr.width, fr.height, people))
    if result.fit is not None:
        f = result.fit
        result.notes.insert(0, f"face: reference_shape: the reference's face shape with the driver's expression and "
                               f"head motion (the driver's face is {1 / f.k[0]:.2f}x as wide and {1 / f.k[1]:.2f}x as "
                               "high as the reference's; its expressions are scaled to the reference's)")
    return out, result.notes
