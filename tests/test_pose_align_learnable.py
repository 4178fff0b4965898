"""The learnable SVD-guided aligner: starts as the closed-form fit, and the shipped checkpoint beats
the closed-form fit on held-out synthetic clips."""
from __future__ import annotations

import numpy as np
import torch

from identity_animator.models import pose_align_learnable as pal
from identity_animator.models.pose_align import Transform2D
from identity_animator.nodes.pose import LEARNABLE_CKPT


def test_untrained_model_is_exactly_the_closed_form_fit():
    clips = pal.synthetic_clips(np.random.default_rng(3), 32)
    res = pal.evaluate(pal.LearnableAligner(), clips)
    assert abs(res["learnable"] - res["similarity"]) < 1e-3


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = pal.LearnableAligner()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    fixed = pal.synthetic_clips(np.random.default_rng(99), 64)
    before = pal.training_step(model, fixed).item()
    for _ in range(40):
        loss = pal.training_step(model, pal.synthetic_clips(rng, 64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert pal.training_step(model, fixed).item() < before


def test_shipped_checkpoint_beats_similarity_on_held_out_clips(tmp_path):
    model = pal.load(str(LEARNABLE_CKPT))
    res = pal.evaluate(model, pal.synthetic_clips(np.random.default_rng(424242), 400))
    assert res["learnable"] < 0.85 * res["similarity"] < res["official"] < res["none"]
    # the checkpoint format round-trips
    path = tmp_path / "copy.safetensors"
    pal.save(model, str(path))
    assert pal.load(str(path)).config == model.config


def test_refine_returns_a_pixel_transform():
    model = pal.load(str(LEARNABLE_CKPT))
    clips = pal.synthetic_clips(np.random.default_rng(5), 1)
    guide = pal.guide_fits(clips["ref"], clips["ref_conf"], clips["drv"][:, :8], clips["drv_conf"][:, :8])[0]
    t = pal.refine(model, clips["ref"][0], clips["ref_conf"][0], clips["drv"][0, :8], clips["drv_conf"][0, :8], guide)
    assert isinstance(t, Transform2D) and t.matrix.shape == (2, 2)
    err = np.linalg.norm(t.apply(clips["drv"][0]) - clips["truth"][0], axis=-1).mean()
    assert err < np.linalg.norm(guide.apply(clips["drv"][0]) - clips["truth"][0], axis=-1).mean() * 1.5
