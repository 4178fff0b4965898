"""HJB face refinement and Algorithm 1's sampler, on tiny models where the target is known: the
framing (ArcFace's five-point alignment against insightface's own, one rule on both sides), crop
windows, faces at the image edge, skipped frames and the logged similarity."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from identity_animator.models.checkpoint import load_state_dict
from identity_animator.models.face import five_points
from torch.utils._python_dispatch import TorchDispatchMode

from identity_animator.models.face_refine import (ARCFACE_SIZE, ChunkCrops, FaceRefiner, FaceTarget, RefineSchedule,
                                                  arcface_matrix, as_target, boxes_from_masks, carried_box, clip_box,
                                                  crop_window, face_crops, frame_targets, identity_loss,
                                                  reference_embedding, reference_target)
from identity_animator.models.iresnet import IResNet
from identity_animator.models.samplers import sample_euler, sample_heun_churn


class ToyDecoder(torch.nn.Module):
    """A small differentiable latent -> pixel map with the VAE's 8x upscale (a stand-in decoder);
    ``kernel=1`` makes every 8x8 pixel block depend on its own latent only."""

    def __init__(self, kernel: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3 * 64, kernel, padding=kernel // 2)

    def forward(self, z):
        return torch.tanh(F.pixel_shuffle(self.conv(z), 8))


class Recording(torch.nn.Module):
    """Wraps a decoder and keeps every latent it was asked to decode."""

    def __init__(self, dec):
        super().__init__()
        self.dec, self.seen = dec, []

    def forward(self, z):
        self.seen.append(z.detach().clone())
        return self.dec(z)


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


# five landmarks of a frontal face (insightface order) in a 128x128 frame, and a similarity copy
FACE5 = np.array([[50.0, 52.0], [78.0, 51.0], [64.0, 68.0], [53.0, 84.0], [76.0, 83.0]])


def similarity(points, scale, angle_deg, shift):
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ (scale * rot).T + np.asarray(shift, float)


def astronaut():
    """A real photograph with a face (shipped with scikit-image, no download)."""
    import skimage.data

    return skimage.data.astronaut()


ASTRONAUT_FACES = [   # five landmarks on the astronaut's face; a rolled set; crops running off two corners
    np.array([[192.0, 112.0], [238.0, 108.0], [216.0, 140.0], [196.0, 170.0], [236.0, 168.0]]),
    np.array([[180.3, 120.7], [240.1, 100.2], [214.5, 141.9], [200.2, 175.5], [245.8, 160.1]]),
    np.array([[10.0, 20.0], [50.0, 14.0], [28.0, 45.0], [14.0, 70.0], [48.0, 66.0]]),
    np.array([[480.0, 470.0], [505.0, 478.0], [490.0, 490.0], [478.0, 505.0], [500.0, 509.0]]),
]


# --- framing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kps", ASTRONAUT_FACES, ids=["frontal", "rolled", "top_left_edge", "bottom_right_edge"])
def test_aligned_crop_equals_insightface_norm_crop(kps):
    """The differentiable kornia crop is insightface's ``norm_crop`` (cv2) on the same image and landmarks."""
    from insightface.utils import face_align

    img = astronaut()
    np.testing.assert_allclose(arcface_matrix(kps).numpy(), face_align.estimate_norm(kps), atol=1e-4)
    expected = face_align.norm_crop(img, kps).astype(np.float32) / 255.0          # uint8, zero outside the image
    target = FaceTarget.aligned(kps, img.shape[1], img.shape[0])
    ours = target.crop(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
    assert ours.shape == (1, 3, ARCFACE_SIZE, ARCFACE_SIZE)
    err = np.abs(ours[0].permute(1, 2, 0).numpy() - expected).max()
    assert err <= 1.0 / 255.0, err          # measured: 0.50/255, the rounding of cv2's uint8 output


def test_aligned_frames_are_framed_like_the_reference():
    """A frame that is the reference turned, scaled and moved gives the same 112x112 face in both
    framings, because both sides are cut by one rule."""
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255.0
    kps = ASTRONAUT_FACES[0]
    box = (176.0, 70.0, 256.0, 196.0)                                       # a detector-like box around that face
    for scale, angle, framing in ((0.7, 15.0, "arcface"), (0.7, 0.0, "official")):
        m = torch.from_numpy(np.hstack([scale * np.array([[math.cos(math.radians(angle)), -math.sin(math.radians(angle))],
                                                          [math.sin(math.radians(angle)), math.cos(math.radians(angle))]]),
                                        [[60.0], [-20.0]]]))
        from kornia.geometry.transform import warp_affine

        frame = warp_affine(img[None].double(), m[None], (512, 512), align_corners=True)[0].float()
        pts = similarity(kps, scale, angle, (60.0, -20.0))
        ref = reference_target(box, kps, framing, 512, 512).crop(img)
        (tgt,) = frame_targets([(0, 0, 512, 512)], [pts], framing, box, kps, 512, 512)
        got = tgt.crop(frame)
        assert (got - ref).abs().mean() < 0.02, framing
    # the box the official framing puts on the reference itself is its detector box
    np.testing.assert_allclose(carried_box(box, kps, kps), box, atol=1e-6)


def test_a_turned_away_face_is_skipped_with_a_log_line(arcface, caplog):
    dec, ref, _, x0 = setup(arcface)
    face = np.stack([np.linspace(0.3, 0.7, 68), np.linspace(0.3, 0.7, 68)], -1) * 128
    turned = np.ones(68)
    turned[42:48] = 0.1                                    # one eye not seen
    points = [five_points(face, np.ones(68)), five_points(face, turned), FACE5]
    assert points[1] is None
    boxes = [(32, 32, 96, 96)] * 3
    with caplog.at_level(logging.WARNING, logger="identity_animator.models.face_refine"):
        targets = frame_targets(boxes, points, "arcface", None, None, 128, 128)
    assert targets[1] is None and targets[0] is not None and targets[2] is not None
    assert "skips 1 frame(s) (1): too few face points" in caplog.text
    out = FaceRefiner(dec, arcface, ref, targets, RefineSchedule(0, 10, 2, 0.1), margin=8)(x0, 0, 25)
    assert torch.equal(out[1], x0[1]) and not torch.equal(out[0], x0[0]) and not torch.equal(out[2], x0[2])


def test_gradients_reach_the_latent_through_the_aligned_crop(arcface):
    dec, ref, _, x0 = setup(arcface)
    targets = [FaceTarget.aligned(FACE5, 128, 128), None, FaceTarget.aligned(similarity(FACE5, 0.8, -20, (20, 10)), 128, 128)]
    refiner = FaceRefiner(dec, arcface, ref, targets, RefineSchedule(), margin=8, chunk=2)
    z = x0.clone().requires_grad_(True)
    loss = refiner.loss_and_grad(z)
    assert loss > 0 and z.grad is not None
    assert z.grad[0].abs().sum() > 0 and z.grad[2].abs().sum() > 0 and z.grad[1].abs().sum() == 0


# --- faces at the image edge ----------------------------------------------------------------------

@pytest.mark.parametrize("box", [(-3.2, 10.0, 60.0, 70.0), (10.0, -6.0, 60.0, 70.0), (40.0, 30.0, 130.0, 95.0)])
def test_reference_box_sticking_out_of_the_image_is_clipped(arcface, box):
    image = torch.rand(80, 100, 3, generator=torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = clip_box(box, 100, 80)
    assert (x1, y1) == (max(0, round(box[0])), max(0, round(box[1]))) and x2 <= 100 and y2 <= 80
    expected_crop = F.interpolate(image[y1:y2, x1:x2].movedim(-1, 0)[None] * 2 - 1, size=(112, 112), mode="bilinear",
                                  align_corners=False)
    with torch.no_grad():
        expected = arcface(expected_crop)
    assert torch.allclose(reference_embedding(arcface, image, box), expected, atol=1e-5)
    t = reference_target(box, FACE5, "official", 100, 80)
    assert torch.allclose(reference_embedding(arcface, image, t), expected, atol=1e-5)
    with pytest.raises(ValueError, match="lies outside"):
        reference_target((120.0, 10.0, 150.0, 40.0), FACE5, "official", 100, 80)


# --- crop windows ---------------------------------------------------------------------------------

@pytest.mark.parametrize("margin", [0, 3, 7, 8, 13])
def test_crop_window_always_contains_every_box(margin):
    g = torch.Generator().manual_seed(margin)
    for _ in range(50):
        boxes = []
        for _ in range(3):
            x1, y1 = (int(v) for v in torch.randint(0, 150, (2,), generator=g))
            w, h = (int(v) for v in torch.randint(5, 50, (2,), generator=g))
            boxes.append((x1, y1, min(200, x1 + w), min(160, y1 + h)))
        x0, y0, x1, y1 = crop_window(boxes, 160, 200, margin)
        assert x0 % 8 == 0 and y0 % 8 == 0 and x1 % 8 == 0 and y1 % 8 == 0
        assert 0 <= x0 and 0 <= y0 and x1 <= 200 and y1 <= 160
        for b in boxes:
            assert x0 <= max(0, b[0] - margin) and y0 <= max(0, b[1] - margin)
            assert min(200, b[2] + margin) <= x1 and min(160, b[3] + margin) <= y1


def test_a_chunk_decodes_one_window_for_all_its_frames(arcface):
    """A face moving through a chunk: every frame of the chunk is decoded at the same place (the union
    window), so the temporal decoder mixes aligned regions."""
    dec, ref, _, x0 = setup(arcface, frames=4)
    boxes = [(20 + 13 * k, 30 + 5 * k, 60 + 13 * k, 70 + 5 * k) for k in range(4)]
    rec = Recording(dec)
    refiner = FaceRefiner(rec, arcface, ref, boxes, RefineSchedule(), margin=5, chunk=4)
    refiner.loss_and_grad(x0.clone().requires_grad_(True))
    (seen,) = rec.seen
    x_0, y_0, x_1, y_1 = crop_window(boxes, 128, 128, 5)
    assert (x_0, y_0, x_1, y_1) == (8, 24, 104, 96)
    assert torch.equal(seen, x0[:, :, y_0 // 8:y_1 // 8, x_0 // 8:x_1 // 8])


@pytest.mark.parametrize("margin", [0, 5])
def test_crop_decode_cuts_the_same_faces_as_full_frame_decode(arcface, margin):
    """With a decoder whose pixels depend on their own latent only, decoding the window must give
    exactly the full-frame crops: nothing of a face is cut off, and the crop is placed right."""
    dec = ToyDecoder(kernel=1).requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 16, 16, generator=g)
    targets = [(19, 21, 61, 57), FaceTarget.aligned(similarity(FACE5, 0.9, 25, (9, -3)), 128, 128),
               FaceTarget.aligned(similarity(FACE5, 1.3, -10, (-40, 30)), 128, 128)]   # runs off the frame
    ref = torch.randn(1, 512, generator=g)
    with torch.no_grad():
        full = FaceRefiner(dec, arcface, ref, targets, RefineSchedule(), crop=False).chunk_loss(z, [0, 1, 2])
        crop = FaceRefiner(dec, arcface, ref, targets, RefineSchedule(), crop=True, margin=margin).chunk_loss(z, [0, 1, 2])
    assert torch.allclose(full, crop, atol=1e-6)


# --- a chunk at a time: the same loss and gradient, no host syncs ----------------------------------

class OpLog(TorchDispatchMode):
    """The names of the aten ops run under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def mixed_targets():
    """Aligned faces (one running off the frame), box faces upsampled and downsampled, a skipped frame."""
    return [FaceTarget.aligned(FACE5, 128, 128), (19, 21, 61, 57), None,
            FaceTarget.aligned(similarity(FACE5, 1.3, -10, (-40, 30)), 128, 128), (8, 4, 126, 124),
            FaceTarget.aligned(similarity(FACE5, 0.8, 25, (12, -6)), 128, 128)]


def per_frame_loss_and_grad(dec, arcface, ref, targets, z, chunk, margin, crop):
    """The refiner's loss and gradient re-stated with the per-frame cut (``face_crops``), as the refiner
    computed them before it cut a chunk at once."""
    z = z.clone().requires_grad_(True)
    frames = [k for k, t in enumerate(targets) if t is not None]
    h, w, total = z.shape[-2] * 8, z.shape[-1] * 8, 0.0
    for c in range(0, len(frames), chunk):
        idx = frames[c:c + chunk]
        faces = [as_target(targets[k]) for k in idx]
        x0, y0, x1, y1 = crop_window([t.box for t in faces], h, w, margin) if crop else (0, 0, w, h)
        pixels = dec(z[idx][:, :, y0 // 8:y1 // 8, x0 // 8:x1 // 8]).clamp(-1, 1)
        loss = identity_loss(arcface(face_crops(pixels, faces, [(x0, y0)] * len(idx))), ref) * (len(idx) / len(frames))
        loss.backward()
        total += float(loss)
    return total, z.grad


@pytest.mark.parametrize("chunk,crop", [(2, True), (3, True), (6, True), (3, False)])
def test_chunk_cut_gives_the_per_frame_loss_and_gradient(arcface, chunk, crop):
    """Mixed framings, a skipped frame (chunk 3 gathers frames 0, 1, 3), crop and full-frame decode: the
    latent's gradient is the per-frame cut's bit for bit, the loss (summed on the device in fp32 rather
    than on the host in fp64) within 1e-6."""
    dec, ref, _, _ = setup(arcface)
    z = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    targets = mixed_targets()
    want_loss, want_grad = per_frame_loss_and_grad(dec, arcface, ref, targets, z, chunk, 8, crop)
    refiner = FaceRefiner(dec, arcface, ref, targets, RefineSchedule(), margin=8, chunk=chunk, crop=crop)
    zz = z.clone().requires_grad_(True)
    loss = refiner.loss_and_grad(zz)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    assert float(loss) == pytest.approx(want_loss, rel=1e-6)
    assert torch.equal(zz.grad, want_grad)
    assert zz.grad[2].abs().sum() == 0 and zz.grad[0].abs().sum() > 0
    assert float(refiner.loss(z)) == pytest.approx(want_loss, rel=1e-6)


def test_chunk_cut_is_the_per_frame_cut_bit_for_bit():
    pixels = torch.rand(3, 3, 136, 184, generator=torch.Generator().manual_seed(2)) * 2 - 1   # a 200x160 frame's
    origin = (16, 0)                                                                           # right part
    aligned = [FaceTarget.aligned(similarity(FACE5, s, a, (x, y)), 200, 160)
               for s, a, x, y in ((1.0, 0, 20, 10), (0.7, 30, 40, 30), (1.4, -15, 10, 0))]   # the last runs off the top
    boxes = [FaceTarget(b) for b in ((24, 16, 56, 60), (30, 40, 128, 112), (60, 20, 100, 100))]
    for targets in (aligned, boxes, [aligned[0], boxes[1], aligned[2]]):
        cut = ChunkCrops(targets, origin, 184, 136, pixels.device, pixels.dtype)
        assert torch.equal(cut(pixels), face_crops(pixels, targets, [origin] * 3))
    with pytest.raises(ValueError, match="does not contain the face region"):
        ChunkCrops([FaceTarget((0, 0, 40, 40))], origin, 184, 136, pixels.device, pixels.dtype)


def test_aligned_faces_of_a_chunk_are_cut_by_one_grid_sample_whatever_its_frame_count():
    ops = []
    for n in (1, 4):
        targets = [FaceTarget.aligned(similarity(FACE5, 1.0, 5 * k, (k, 2 * k)), 128, 128) for k in range(n)]
        cut = ChunkCrops(targets, (0, 0), 128, 128, torch.device("cpu"), torch.float32)
        pixels = torch.rand(n, 3, 128, 128).requires_grad_(True)
        with OpLog() as log:
            cut(pixels).sum().backward()
        ops.append([name for name in log.names if name.startswith("grid_sampler")])
    assert ops[0] == ops[1] == ["grid_sampler_2d", "grid_sampler_2d_backward"]


def test_a_refinement_iteration_reads_nothing_back_and_uploads_nothing(arcface):
    """After the first pass has built the chunks' crops, neither the gradient pass nor the forward
    pass reads a device value on the host or copies host data to the device (``lift_fresh``: a tensor
    made from Python numbers or a list index)."""
    dec, ref, _, _ = setup(arcface)
    z = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    refiner = FaceRefiner(dec, arcface, ref, mixed_targets(), RefineSchedule(), margin=8, chunk=3)
    refiner.loss_and_grad(z)
    with OpLog() as log:
        refiner.loss_and_grad(z)
        refiner.loss(z)
    assert "grid_sampler_2d" in log.names
    assert not {"_local_scalar_dense", "lift_fresh", "lift_fresh_copy", "item"} & set(log.names)


def test_arcface_weights_are_frozen_and_get_no_gradients(arcface):
    """Only the latent is optimised: the loader's network has no trainable weight, so a refined step
    leaves every ArcFace ``.grad`` unset while the latent gets its gradient."""
    assert not any(p.requires_grad for p in arcface.parameters())
    dec, ref, boxes, x0 = setup(arcface)
    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 10, 2, 0.1), margin=8, chunk=2)
    z = x0.clone().requires_grad_(True)
    refiner.loss_and_grad(z)
    assert z.grad is not None and z.grad.abs().sum() > 0
    out = refiner(x0, 0, 25)
    assert not torch.equal(out, x0)
    assert all(p.grad is None for p in arcface.parameters())


# --- refinement -----------------------------------------------------------------------------------

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


def test_logged_similarity_after_is_measured_after_the_last_adam_step(arcface, caplog):
    dec, ref, boxes, x0 = setup(arcface)
    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 10, iterations=2, lr=0.2), crop=False)
    with caplog.at_level(logging.INFO, logger="identity_animator.models.face_refine"):
        out = refiner(x0, 0, 25)
    with torch.no_grad():
        sim_before = 1.0 - float(identity_loss(arcface(face_crops(dec(x0).clamp(-1, 1), boxes, [(0, 0)] * 3)), ref))
        sim_out = 1.0 - float(identity_loss(arcface(face_crops(dec(out).clamp(-1, 1), boxes, [(0, 0)] * 3)), ref))
    _, before, after = refiner.history[-1]
    assert before == pytest.approx(sim_before, abs=1e-5)
    assert after == pytest.approx(sim_out, abs=1e-5)       # the latent the step hands on, not the one before
    assert f"identity similarity {sim_before:.4f} -> {sim_out:.4f} after 2 Adam step(s)" in caplog.text


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


def test_boxes_from_masks():
    masks = torch.zeros(2, 64, 96)
    masks[0, 10:30, 20:40] = 1
    assert boxes_from_masks(masks) == [(20, 10, 40, 30), None]


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
