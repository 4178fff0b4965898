"""The learnable aligner's guard: outside the range its checkpoint was trained on (a driving torso
rotated beyond it, a reference without knees and ankles, an outsized correction) the learnt
correction falls back to, or is shrunk towards, the similarity fit, and says why; inside it the
result is the model's, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from identity_animator.models import pose_align_learnable as pal
from identity_animator.models.keypoints import Person, PoseFrame
from identity_animator.models.pose_pipeline import align_video
from identity_animator.nodes.pose import LEARNABLE_CKPT

K = 8


@pytest.fixture(scope="module")
def model():
    return pal.load(str(LEARNABLE_CKPT))


def _guide(clips, b):
    return pal.guide_fits(clips["ref"][b:b + 1], clips["ref_conf"][b:b + 1], clips["drv"][b:b + 1, :K],
                          clips["drv_conf"][b:b + 1, :K])[0]


def _refine(model, clips, b, **kw):
    return pal.refine(model, clips["ref"][b], clips["ref_conf"][b], clips["drv"][b, :K], clips["drv_conf"][b, :K],
                      _guide(clips, b), **kw)


def _dis(t, clips, b):
    return float(np.linalg.norm(t.apply(clips["drv"][b]) - clips["truth"][b], axis=-1).mean())


def _rotated_clips(n=64):
    clips = pal.synthetic_clips(np.random.default_rng(77), n, rotation_deg=40.0)
    torso = np.abs(pal.driving_torso_angle(clips["drv"][:, :K], clips["drv_conf"][:, :K]))
    return clips, np.flatnonzero(torso > pal.GUARD.max_torso_deg)


def test_rotated_driving_clip_falls_back_to_similarity(model):
    clips, out = _rotated_clips()
    assert len(out) >= 5
    for b in out[:5]:
        guide = _guide(clips, b)
        t = _refine(model, clips, b)
        np.testing.assert_array_equal(t.matrix, guide.matrix)
        np.testing.assert_array_equal(t.translation, guide.translation)
        assert any("fell back to similarity" in n and "torso is rotated" in n for n in t.notes), t.notes
    res = pal.evaluate(model, {k: (v[out] if isinstance(v, np.ndarray) else v) for k, v in clips.items()})
    assert res["fallback"] == 1.0 and res["guarded"] == pytest.approx(res["similarity"], rel=1e-9)


def test_half_body_reference_shrinks_the_correction_and_is_no_worse_than_similarity(model):
    clips = pal.synthetic_clips(np.random.default_rng(78), 300, half_body=1.0)
    res = pal.evaluate(model, clips)
    assert res["shrunk"] == 1.0 and res["guarded"] <= res["similarity"] and res["guarded"] <= res["learnable"]
    t, raw = _refine(model, clips, 0), _refine(model, clips, 0, limits=None)
    assert any("knees and ankles" in n for n in t.notes) and not raw.notes
    guide = _guide(clips, 0)
    # halfway (in the residual's parameters) between the similarity fit and the raw learnt transform
    assert abs(np.log(t.scale / guide.scale)) == pytest.approx(abs(np.log(raw.scale / guide.scale)) / 2, rel=1e-3, abs=1e-6)


def test_outsized_correction_is_shrunk_into_the_trained_range():
    delta = np.array([[0.0, 0.82, 0.0, 0.0], [0.01, 0.1, 0.02, 0.01]], np.float32)
    ref_conf = np.ones((2, 18))
    drv = pal.synthetic_clips(np.random.default_rng(1), 2)
    out, fallback, reasons = pal.guard(delta, ref_conf, drv["drv"][:, :K], np.ones((2, K, 18)))
    assert not fallback.any()
    assert out[0, 1] == pytest.approx(pal.GUARD.max_correction[1]) and "rotation part" in reasons[0][0]
    np.testing.assert_array_equal(out[1], delta[1])
    assert not reasons[1]


def test_in_distribution_clips_are_untouched_bit_for_bit(model):
    clips = pal.synthetic_clips(np.random.default_rng(424242), 200)
    res = pal.evaluate(model, clips)
    assert res["fallback"] == 0.0 and res["shrunk"] == 0.0 and res["guarded"] == res["learnable"]
    for b in range(3):
        t = _refine(model, clips, b)
        assert t.notes == ()
        # what refine computed before the guard existed
        guide = _guide(clips, b)
        batch = pal.prepare(clips["ref"][b][None], clips["ref_conf"][b][None], clips["drv"][b, :K][None],
                            clips["drv_conf"][b, :K][None], [guide])
        with torch.no_grad():
            m, tr = pal.compose(batch, model(batch.ref_tok, batch.drv_tok, batch.guide))
        np.testing.assert_array_equal(t.matrix, m[0].double().numpy())
        np.testing.assert_array_equal(t.translation, tr[0].double().numpy())


def test_every_evaluation_row_guarded_is_no_worse_than_similarity(model):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from pose_align_learnable import CASES

    for name, kw in CASES.items():
        res = pal.evaluate(model, pal.synthetic_clips(np.random.default_rng(31337), 150, **kw))
        assert res["guarded"] <= res["similarity"], (name, res)


def _frames(clips, b):
    ref = PoseFrame(*pal.REF_SIZE, [Person(body=clips["ref"][b] / np.array(pal.REF_SIZE), body_score=clips["ref_conf"][b])])
    drv = [PoseFrame(*pal.DRV_SIZE, [Person(body=clips["drv"][b, f] / np.array(pal.DRV_SIZE),
                                            body_score=clips["drv_conf"][b, f])]) for f in range(clips["drv"].shape[1])]
    return ref, drv


def test_pipeline_result_carries_the_reason(model):
    clips, out = _rotated_clips()
    ref, drv = _frames(clips, out[0])
    _, report = align_video(ref, drv, "learnable", learnable=model, fit_frames=K)
    assert any("fell back to similarity" in n for n in report.transform.notes)
    sim_out, sim_report = align_video(ref, drv, "similarity", fit_frames=K, allow_rotation=True)
    np.testing.assert_allclose(report.transform.matrix, sim_report.transform.matrix, rtol=0, atol=1e-9)
    np.testing.assert_allclose(report.transform.translation, sim_report.transform.translation, rtol=0, atol=1e-6)


def test_pose_align_report_names_the_reason(model):
    clips, out = _rotated_clips()
    ref, drv = _frames(clips, out[0])
    _, report = align_video(ref, drv, "learnable", learnable=model, fit_frames=K)
    assert "fell back to similarity on this clip because the driving torso is rotated" in report.text()
    half = pal.synthetic_clips(np.random.default_rng(78), 1, half_body=1.0)
    _, report = align_video(*_frames(half, 0), "learnable", learnable=model, fit_frames=K)
    assert "reference shows 0 of its knees and ankles" in report.text()
