"""HJB face refinement and Algorithm 1's sampler, on tiny models where the target is known."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from identity_animator.models.checkpoint import load_state_dict
from identity_animator.models.face_refine import (FaceRefiner, RefineSchedule, boxes_from_masks, crop_window,
                                                  face_crops, identity_loss)
from identity_animator.models.iresnet import IResNet
from identity_animator.models.samplers import sample_euler, sample_heun_churn


class ToyDecoder(torch.nn.Module):
    """A small differentiable latent -> pixel map with the VAE's 8x upscale (a stand-in decoder)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3 * 64, 3, padding=1)

    def forward(self, z):
        return torch.tanh(F.pixel_shuffle(self.conv(z), 8))


@pytest.fixture(scope="module")
def arcface(tiny_set):
    return IResNet.from_state_dict(load_state_dict(str(tiny_set["glintr100_torch.pth"])))


def setup(arcface, frames=3, boxes=None):
    dec = ToyDecoder().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    target = torch.randn(1, 4, 16, 16, generator=g)                      # the identity we want
    boxes = boxes or [(32, 32, 96, 96)] * frames
    with torch.no_grad():
        ref = arcface(face_crops(dec(target), boxes[:1], [(0, 0)]))
    x0 = torch.randn(frames, 4, 16, 16, generator=g)
    return dec, ref, boxes, x0


def test_refinement_lowers_the_identity_loss(arcface):
    dec, ref, boxes, x0 = setup(arcface)
    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 10, iterations=5, lr=0.1), crop=True, margin=8, chunk=2)
    loss0 = float(identity_loss(arcface(face_crops(dec(x0), boxes, [(0, 0)] * 3)), ref))
    x = x0
    for step in range(4):
        x = refiner(x, step, 25)
    loss1 = float(identity_loss(arcface(face_crops(dec(x), boxes, [(0, 0)] * 3)), ref))
    assert loss1 < 0.8 * loss0
    assert all(after >= before for _, before, after in refiner.history)   # similarity rises within each step


def test_frames_without_a_face_box_are_left_alone(arcface):
    dec, ref, _, x0 = setup(arcface)
    boxes = [(32, 32, 96, 96), None, (40, 40, 100, 100)]
    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 10, 2, 0.1), crop=True, margin=8)
    out = refiner(x0, 0, 25)
    assert torch.equal(out[1], x0[1]) and not torch.equal(out[0], x0[0])
    none = FaceRefiner(dec, arcface, ref, [None] * 3, RefineSchedule(0, 10, 2, 0.1))
    assert none(x0, 0, 25) is x0


def test_schedule_follows_the_official_defaults():
    s = RefineSchedule()
    assert (s.start_step, s.end_step, s.iterations, s.lr) == (0, 20, 3, 0.1)
    assert s.active(0) and s.active(20) and not s.active(21)
    assert s.lr_at(0, 25) == pytest.approx(0.1) and s.lr_at(20, 25) == pytest.approx(0.02)


def test_crop_window_and_boxes_from_masks():
    masks = torch.zeros(2, 64, 96)
    masks[0, 10:30, 20:40] = 1
    assert boxes_from_masks(masks) == [(20, 10, 40, 30), None]
    h, w, origins = crop_window([(20, 10, 40, 30), (70, 40, 90, 60)], 64, 96, margin=8)
    assert h % 8 == 0 and w % 8 == 0 and h >= 36 and w >= 36
    for (x0, y0), (x1, y1, x2, y2) in zip(origins, [(20, 10, 40, 30), (70, 40, 90, 60)]):
        assert x0 % 8 == 0 and y0 % 8 == 0 and x0 <= x1 and x2 <= x0 + w and y0 <= y1 and y2 <= y0 + h


def test_cancel_is_checked_inside_the_adam_loop(arcface):
    dec, ref, boxes, x0 = setup(arcface)
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt("cancelled")

    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 10, 5, 0.1), check_cancel=cancel)
    with pytest.raises(KeyboardInterrupt):
        refiner(x0, 0, 25)


def denoiser(x, sigma, **kw):
    """An analytic denoiser: the data distribution is a point at 0.3."""
    s = sigma.view(-1, *[1] * (x.ndim - 1))
    return (x + 0.3 * s ** 2) / (1 + s ** 2)


def test_samplers_match_k_diffusion():
    import comfy.k_diffusion.sampling as kds

    sig = kds.get_sigmas_karras(6, 0.002, 700.0)
    x = torch.randn(3, 4, 2, 2) * 700
    assert torch.allclose(sample_euler(denoiser, x, sig), kds.sample_euler(denoiser, x, sig, disable=True), atol=1e-5)
    assert torch.allclose(sample_heun_churn(denoiser, x, sig), kds.sample_heun(denoiser, x, sig, disable=True), atol=1e-5)


def test_heun_churn_is_seeded_and_refine_is_used_on_the_first_evaluation_only():
    import comfy.k_diffusion.sampling as kds

    sig = kds.get_sigmas_karras(5, 0.002, 700.0)
    x = torch.randn(2, 4, 2, 2) * 700
    a = sample_heun_churn(denoiser, x, sig, s_churn=2.0, seed=3)
    b = sample_heun_churn(denoiser, x, sig, s_churn=2.0, seed=3)
    c = sample_heun_churn(denoiser, x, sig, s_churn=2.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    seen = []
    sample_heun_churn(denoiser, x, sig, refine=lambda d, i, n: seen.append(i) or d)
    assert seen == list(range(5))
