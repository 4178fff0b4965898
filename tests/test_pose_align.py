"""Alignment fits on synthetic keypoints with known transforms."""
from __future__ import annotations

import numpy as np
import pytest

from identity_animator.models.pose_align import (AlignmentError, Transform2D, apply_normalised, fit_official,
                                                 fit_similarity, weighted_umeyama)

# a standing OpenPose-18 body in a 512x768 canvas (pixels)
BODY_PX = np.array([[256, 120], [256, 180], [210, 185], [190, 260], [185, 330], [302, 185], [322, 260],
                    [327, 330], [225, 350], [222, 480], [220, 600], [287, 350], [290, 480], [292, 600],
                    [246, 110], [266, 110], [236, 115], [276, 115]], float)
REF_SIZE, DRV_SIZE = (512, 768), (720, 1280)


def similarity(scale, degrees, t):
    th = np.radians(degrees)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return Transform2D(scale * rot, np.asarray(t, float))


def driving_from_reference(true: Transform2D, frames=5, jitter=0.0, seed=0):
    """Driving frames whose pixels map onto the reference body through ``true``."""
    rng = np.random.default_rng(seed)
    inv = np.linalg.inv(true.matrix)
    px = (BODY_PX - true.translation) @ inv.T
    out = np.stack([px + rng.normal(0, jitter, px.shape) for _ in range(frames)])
    return out / np.array(DRV_SIZE, float)


def test_umeyama_recovers_scale_rotation_translation():
    true = similarity(0.7, 12.0, (40, -25))
    src = np.random.default_rng(1).uniform(0, 500, (30, 2))
    fit = weighted_umeyama(src, true.apply(src), np.ones(30))
    np.testing.assert_allclose(fit.matrix, true.matrix, atol=1e-9)
    np.testing.assert_allclose(fit.translation, true.translation, atol=1e-7)


def test_umeyama_never_returns_a_reflection():
    src = np.random.default_rng(2).uniform(0, 100, (20, 2))
    mirrored = src * np.array([-1.0, 1.0]) + np.array([300.0, 0.0])
    fit = weighted_umeyama(src, mirrored, np.ones(20))
    assert np.linalg.det(fit.matrix) > 0


def test_umeyama_zero_weight_points_are_ignored():
    true = similarity(1.3, -5.0, (10, 10))
    src = np.random.default_rng(3).uniform(0, 100, (12, 2))
    dst = true.apply(src)
    dst[0] += 500.0  # an outlier with no confidence
    w = np.ones(12)
    w[0] = 0.0
    fit = weighted_umeyama(src, dst, w)
    np.testing.assert_allclose(fit.matrix, true.matrix, atol=1e-9)


def test_similarity_fit_over_frames_with_noise():
    true = similarity(0.55, 8.0, (30, 40))
    drv = driving_from_reference(true, frames=8, jitter=1.5)
    conf = np.ones(drv.shape[:2])
    fit = fit_similarity(BODY_PX / np.array(REF_SIZE), np.ones(18), drv, conf, REF_SIZE, DRV_SIZE)
    assert abs(fit.scale - 0.55) < 0.01 and abs(fit.rotation_degrees - 8.0) < 0.5
    aligned = apply_normalised(fit, drv[0], DRV_SIZE, REF_SIZE) * np.array(REF_SIZE)
    assert np.abs(aligned - BODY_PX).mean() < 3.0


def test_similarity_without_rotation_keeps_axes():
    true = similarity(0.8, 0.0, (12, -8))
    drv = driving_from_reference(true, frames=3)
    fit = fit_similarity(BODY_PX / np.array(REF_SIZE), np.ones(18), drv, np.ones(drv.shape[:2]), REF_SIZE, DRV_SIZE,
                         allow_rotation=False)
    np.testing.assert_allclose(fit.matrix, np.eye(2) * 0.8, atol=1e-9)


def test_official_fit_is_isotropic_in_pixels_across_aspect_ratios():
    true = similarity(0.6, 0.0, (50, 20))
    drv = driving_from_reference(true, frames=4)
    fit = fit_official(BODY_PX / np.array(REF_SIZE), np.ones(18), drv, np.ones(drv.shape[:2]), REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(np.diag(fit.matrix), [0.6, 0.6], atol=1e-9)
    np.testing.assert_allclose(fit.translation, true.translation, atol=1e-6)


def test_official_fit_errors_say_what_to_do():
    with pytest.raises(AlignmentError, match="No driving frame shows exactly one person"):
        fit_official(BODY_PX / 512, np.ones(18), np.zeros((0, 18, 2)), np.zeros((0, 18)), REF_SIZE, DRV_SIZE)
    hidden = np.zeros(18)
    hidden[[3, 4]] = 1.0  # only an elbow and a wrist: none of the fit joints
    with pytest.raises(AlignmentError, match="use mode 'none'"):
        fit_official(BODY_PX / 512, hidden, BODY_PX[None] / 512, np.ones((1, 18)), REF_SIZE, DRV_SIZE)
    with pytest.raises(AlignmentError, match="at least two weighted joint pairs"):
        fit_similarity(BODY_PX / 512, np.zeros(18), BODY_PX[None] / 512, np.ones((1, 18)), REF_SIZE, DRV_SIZE)


def test_official_fit_uses_driving_joints_whatever_their_score():
    """The original fits every reference-visible joint of every single-person frame; the driving
    scores play no part (only joints with no coordinates at all, 0/0/0, are left out)."""
    true = similarity(0.6, 0.0, (50, 20))
    drv = driving_from_reference(true, frames=4, jitter=4.0, seed=5)    # noisy: which joints count matters
    conf = np.ones(drv.shape[:2])
    conf[:, [9, 10, 12]] = 0.1                                          # unsure knees and an ankle
    conf[1, :] = 0.05                                                   # a frame DWPose is unsure of everywhere
    ref = BODY_PX / np.array(REF_SIZE)
    fit = fit_official(ref, np.ones(18), drv, conf, REF_SIZE, DRV_SIZE)
    # least squares written out over all 14 fit joints of all 4 frames, in normalised coordinates
    ids = [0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    y_d, y_r = drv[:, ids, 1].ravel(), np.tile(ref[ids, 1], 4)
    a_y, b_y = np.linalg.lstsq(np.stack([y_d, np.ones_like(y_d)], 1), y_r, rcond=None)[0]
    a_x = a_y * (REF_SIZE[1] / REF_SIZE[0]) / (DRV_SIZE[1] / DRV_SIZE[0])
    b_x = np.mean(np.tile(ref[ids, 0], 4) - a_x * drv[:, ids, 0].ravel())
    np.testing.assert_allclose(np.diag(fit.matrix), [a_x * REF_SIZE[0] / DRV_SIZE[0], a_y * REF_SIZE[1] / DRV_SIZE[1]],
                               rtol=1e-9)
    np.testing.assert_allclose(fit.translation, [b_x * REF_SIZE[0], b_y * REF_SIZE[1]], rtol=1e-9)
    same = fit_official(ref, np.ones(18), drv, np.ones_like(conf), REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(same.matrix, fit.matrix, rtol=1e-12)


def test_official_fit_leaves_out_joints_without_coordinates():
    true = similarity(0.6, 0.0, (50, 20))
    drv = driving_from_reference(true, frames=3)
    conf = np.ones(drv.shape[:2])
    drv[0, 9], conf[0, 9] = 0.0, 0.0                 # controlnet_aux's "missing": no place at all
    fit = fit_official(BODY_PX / np.array(REF_SIZE), np.ones(18), drv, conf, REF_SIZE, DRV_SIZE)
    np.testing.assert_allclose(np.diag(fit.matrix), [0.6, 0.6], atol=1e-9)
