"""Pose alignment: fit the driving skeleton to the reference body, once per video.

Keypoints are OpenPose-18 body arrays ``[18, 2]`` (or ``[..., 2]``) in *normalised* coordinates of
their own canvas plus confidences ``[18]``. Fits are done in pixels so that a scale is the same in x
and y. A transform is estimated once per video and applied unchanged to every frame: fitting each
frame would erase real motion (a jump, a step towards the camera).

* ``official``: StableAnimator/MimicMotion's global fit — ``y_ref = a_y·y_drv + b_y`` by least squares
  over every single-person frame's joints that are visible in the reference, ``a_x`` from ``a_y`` with
  the aspect-ratio correction ``a_x = a_y·(H_r/W_r)/(H_d/W_d)`` (normalised coordinates), and
  ``b_x = mean(x_ref − a_x·x_drv)``. No rotation. Like the original, the driving joints' scores are
  not looked at: a joint DWPose placed with a low score still counts. Only a driving joint with no
  coordinates at all (``0, 0, 0`` in keypoints from another pack; DWPose always gives coordinates)
  is left out, since the original never sees one and ``(0, 0)`` is not a place on the body.
* ``similarity``: weighted Umeyama / Procrustes via SVD (scale, optional rotation, translation) on
  stable joints pooled over the chosen frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .keypoints import known

# nose, neck, shoulders, hips, knees, ankles, eyes, ears (no elbows or wrists) — the official set
OFFICIAL_JOINTS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
# joints that move least with the limbs: nose, neck, shoulders, hips, eyes, ears
STABLE_JOINTS = (0, 1, 2, 5, 8, 11, 14, 15, 16, 17)
VISIBLE = 0.3  # DWPose body visibility threshold used by the official drawing


class AlignmentError(ValueError):
    """The keypoints do not allow a fit; the message says why and what to change."""


@dataclass(frozen=True)
class Transform2D:
    """``p' = A @ p + t`` in reference pixels; ``A`` is ``s·R`` for similarity fits."""

    matrix: np.ndarray       # [2, 2]
    translation: np.ndarray  # [2]

    def apply(self, points: np.ndarray) -> np.ndarray:
        return points @ self.matrix.T + self.translation

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def rotation_degrees(self) -> float:
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))


def weighted_umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, allow_rotation: bool = True) -> Transform2D:
    """Least-squares similarity ``dst ≈ s·R·src + t`` with per-point weights (Umeyama 1991).

    A reflection is never returned: when the best orthogonal map would flip the body (det < 0),
    the last singular direction is negated, giving the best proper rotation instead.
    """
    src, dst, w = np.asarray(src, float), np.asarray(dst, float), np.asarray(weights, float)
    if w.sum() <= 0 or np.count_nonzero(w) < 2:
        raise AlignmentError("Need at least two weighted joint pairs to fit a similarity transform.")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    var_s = float(w @ (xs ** 2).sum(1))
    if var_s < 1e-12:
        raise AlignmentError("The driving joints used for the fit all lie on one point; no scale can be fitted.")
    if not allow_rotation:
        s = float(w @ (xs * xd).sum(1)) / var_s
        return Transform2D(np.eye(2) * s, mu_d - s * mu_s)
    cov = (xd * w[:, None]).T @ xs                       # [2, 2] Σ w·x_d·x_sᵀ
    u, sv, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ d @ vt
    s = float(np.trace(np.diag(sv) @ d)) / var_s
    return Transform2D(s * rot, mu_d - s * rot @ mu_s)


def _to_pixels(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    return np.asarray(xy, float) * np.array([w, h], float)


def fit_official(ref_xy, ref_conf, drv_xy, drv_conf, ref_size, drv_size, joints=OFFICIAL_JOINTS,
                 threshold: float = VISIBLE) -> Transform2D:
    """The official global scale/offset fit, with the aspect-ratio fix; returns a pixel transform.

    ``ref_xy [18,2]``, ``ref_conf [18]``; ``drv_xy [F,18,2]``, ``drv_conf [F,18]`` for the
    single-person frames; sizes are ``(width, height)``. ``threshold`` applies to the reference
    only; ``drv_conf`` only tells joints without coordinates (score 0 at ``(0, 0)``) apart.
    """
    ref_xy, ref_conf = np.asarray(ref_xy, float), np.asarray(ref_conf, float)
    drv_xy, drv_conf = np.asarray(drv_xy, float), np.asarray(drv_conf, float)
    if drv_xy.shape[0] == 0:
        raise AlignmentError("No driving frame shows exactly one person; the official fit needs at least one.")
    idx = [j for j in joints if ref_conf[j] > threshold]
    if len(idx) < 2:
        raise AlignmentError(f"The reference shows fewer than two of the joints {list(joints)}; use mode 'none'.")
    # every reference-visible joint of every frame, whatever the driving score (the official fit)
    vis = known(drv_xy[:, idx], drv_conf[:, idx])            # [F, J]
    y_drv, y_ref = drv_xy[:, idx, 1][vis], np.broadcast_to(ref_xy[idx, 1], vis.shape)[vis]
    x_drv, x_ref = drv_xy[:, idx, 0][vis], np.broadcast_to(ref_xy[idx, 0], vis.shape)[vis]
    if y_drv.size < 2 or np.ptp(y_drv) < 1e-9:
        raise AlignmentError("Too few joints in the driving frames to fit a vertical scale (or they all lie at "
                             "one height); use mode 'similarity' or 'none'.")
    a_y, b_y = np.polyfit(y_drv, y_ref, 1)
    (wr, hr), (wd, hd) = ref_size, drv_size
    a_x = a_y * (hr / wr) / (hd / wd)
    b_x = float(np.mean(x_ref - a_x * x_drv))
    # normalised-coordinate map -> pixel map from driving pixels to reference pixels
    matrix = np.diag([a_x * wr / wd, a_y * hr / hd])
    return Transform2D(matrix, np.array([b_x * wr, b_y * hr]))


def fit_similarity(ref_xy, ref_conf, drv_xy, drv_conf, ref_size, drv_size, joints=STABLE_JOINTS,
                   allow_rotation: bool = True, threshold: float = VISIBLE) -> Transform2D:
    """One weighted Umeyama transform (driving pixels -> reference pixels) over the given frames."""
    ref_conf, drv_xy, drv_conf = np.asarray(ref_conf, float), np.asarray(drv_xy, float), np.asarray(drv_conf, float)
    if drv_xy.shape[0] == 0:
        raise AlignmentError("No driving frame to fit on; pick frames that show the person.")
    j = list(joints)
    ref_px = _to_pixels(np.asarray(ref_xy, float)[j], ref_size)           # [J, 2]
    drv_px = _to_pixels(drv_xy[:, j], drv_size)                            # [F, J, 2]
    w = np.where(ref_conf[j] > threshold, ref_conf[j], 0.0)[None] * np.where(drv_conf[:, j] > threshold, drv_conf[:, j], 0.0)
    src = drv_px.reshape(-1, 2)
    dst = np.broadcast_to(ref_px, drv_px.shape).reshape(-1, 2)
    return weighted_umeyama(src, dst, w.reshape(-1), allow_rotation=allow_rotation)


def apply_normalised(transform: Transform2D, drv_xy: np.ndarray, drv_size, ref_size) -> np.ndarray:
    """Map driving keypoints (normalised to the driving canvas) into normalised reference coordinates."""
    px = transform.apply(_to_pixels(drv_xy, drv_size))
    return px / np.array(ref_size, float)
