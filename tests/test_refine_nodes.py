"""The refinement sampler on ComfyUI objects: the gradient decoder equals ComfyUI's decoder, works under
inference mode, runs in fp32 unless told otherwise, frames faces by Face Boxes' landmarks, and
refinement through the real-size (random) SVD decoder lowers the identity loss."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import comfy.latent_formats
from identity_animator.models.face import FaceLandmarks, FaceResult
from identity_animator.models.face_refine import FaceRefiner, RefineSchedule, face_crops, identity_loss
from conftest import decode_with_gradients
from identity_animator.nodes.refine import FaceRefineSampler, GradDecoder, checkpointed_decode


@pytest.fixture(scope="module")
def vae(svd_vae):
    return svd_vae


@pytest.fixture(scope="module")
def arcface(comfy_folders):
    from identity_animator.nodes.loaders import LoadArcFace

    with torch.inference_mode():
        return LoadArcFace.execute(glintr100_name="glintr100_torch.pth").result[0]


def test_checkpointed_decode_equals_comfyui_and_has_gradients(vae):
    z = torch.randn(3, 4, 6, 5)
    with torch.no_grad():
        ref = vae.first_stage_model.decoder(z)
    dec, out, zz = decode_with_gradients(vae, z)
    assert torch.allclose(out.detach(), ref, atol=1e-4)
    assert zz.grad is not None and zz.grad.abs().sum() > 0


def test_refinement_through_the_svd_decoder_lowers_the_loss(vae, arcface):
    latent_out = comfy.latent_formats.SD15().process_out
    with torch.inference_mode():
        dec = GradDecoder(vae, latent_out, torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 4, 8, 8, generator=g) * 0.18215
    boxes = [(16, 16, 48, 48), None, (12, 20, 44, 52)]
    with torch.no_grad():
        ref = arcface(face_crops(dec(target).clamp(-1, 1), boxes[:1], [(0, 0)]))
    x0 = torch.randn(3, 4, 8, 8, generator=g) * 0.18215
    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 20, 2, 0.05), margin=16, chunk=2)
    x = x0
    for step in range(2):
        x = refiner(x, step, 25)
    assert torch.equal(x[1], x0[1])                          # no face box: untouched
    faces = [0, 2]
    loss = lambda lat: float(identity_loss(arcface(face_crops(dec(lat[faces]).clamp(-1, 1), [boxes[k] for k in faces],
                                                              [(0, 0)] * 2)), ref))
    with torch.no_grad():
        assert loss(x) < loss(x0)
    assert all(p.grad is None for p in arcface.parameters())   # only the latent was optimised


def test_load_arcface_gives_frozen_weights_and_the_gradient_reaches_the_latent_only(arcface):
    """Load ArcFace's network trains nothing: a refinement pass gives the latent its gradient and leaves
    every ArcFace weight without one (trainable weights had theirs computed and accumulated, never zeroed)."""
    assert not any(p.requires_grad for p in arcface.parameters())
    torch.manual_seed(0)
    dec = torch.nn.Sequential(torch.nn.Conv2d(4, 3 * 64, 3, padding=1), torch.nn.PixelShuffle(8), torch.nn.Tanh())
    boxes = [(8, 8, 56, 56), (4, 12, 52, 60)]
    with torch.no_grad():
        ref = arcface(face_crops(dec(torch.randn(1, 4, 8, 8)), boxes[:1], [(0, 0)]))
    refiner = FaceRefiner(dec.requires_grad_(False), arcface, ref, boxes, RefineSchedule(0, 20, 2, 0.1), margin=8)
    z = torch.randn(2, 4, 8, 8).requires_grad_(True)
    refiner.loss_and_grad(z)
    assert z.grad is not None and z.grad.abs().sum() > 0
    with torch.inference_mode():                                   # as ComfyUI samples
        refiner(torch.randn(2, 4, 8, 8), 0, 25)
    assert all(p.grad is None for p in arcface.parameters())


# --- the node's refiner: precision and framing ----------------------------------------------------

FIVE = np.array([[20.0, 22.0], [34.0, 21.5], [27.0, 30.0], [21.5, 38.0], [33.0, 37.5]])   # in a 64x64 frame


def sampler_opts(vae, arcface, landmarks=True, size=(64, 64), **extra):
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 80, 72, 3, generator=g)
    face = FaceResult(np.ones(512, np.float32), np.array([12.0, 15.0, 44.0, 50.0]), FIVE + [2.0, 4.0], 0.9,
                      np.zeros((112, 112, 3), np.uint8), 72, 80)
    masks = torch.zeros(3, 64, 64)
    masks[[0, 2], 10:45, 12:42] = 1
    marks = FaceLandmarks((FIVE, FIVE, FIVE + 1.5), *size) if landmarks else None
    (ks,) = FaceRefineSampler.execute(vae, arcface, reference, face, masks, True, "euler", 0, 20, 3, 0.1, 32, True, 4,
                                      0.0, 0.0, 1000.0, 1.0, **({"face_landmarks": marks} if landmarks else {}),
                                      **extra).result
    return ks.sampler_function


FAKE_MODEL = SimpleNamespace(inner_model=SimpleNamespace(inner_model=SimpleNamespace(process_latent_out=lambda z: z)))


def test_refinement_decoder_is_fp32_by_default_whatever_the_vae_dtype(vae, arcface, monkeypatch):
    inputs = {i.id: i for i in FaceRefineSampler.define_schema().inputs}
    assert inputs["decode_precision"].default == "fp32" and inputs["decode_precision"].options == ["fp32", "bf16", "fp16"]
    monkeypatch.setattr(vae, "vae_dtype", torch.bfloat16)          # e.g. a VAE ComfyUI keeps in bf16
    x = torch.zeros(3, 4, 8, 8)
    with torch.inference_mode():
        refiner = sampler_opts(vae, arcface).build(FAKE_MODEL, x)
    assert refiner.decode.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in refiner.decode.decoder.parameters())
    with torch.inference_mode():
        half = sampler_opts(vae, arcface, decode_precision="bf16").build(FAKE_MODEL, x)
    assert all(p.dtype == torch.bfloat16 for p in half.decode.decoder.parameters())
    with torch.inference_mode(False), torch.enable_grad():          # and it still backpropagates
        z = (torch.randn(1, 4, 2, 2) * 0.2).requires_grad_(True)
        half.decode(z).square().mean().backward()
    assert z.grad is not None and z.grad.dtype == torch.float32 and z.grad.abs().sum() > 0


def test_node_frames_faces_by_the_landmarks_and_falls_back_to_boxes(vae, arcface, caplog):
    x = torch.zeros(3, 4, 8, 8)
    with torch.inference_mode():
        aligned = sampler_opts(vae, arcface).build(FAKE_MODEL, x)
    t0, t1, t2 = aligned.targets
    assert t0.matrix is not None and t1 is None and t2.matrix is not None   # frame 1 has no mask: not refined
    with torch.inference_mode():
        official = sampler_opts(vae, arcface, framing="official").build(FAKE_MODEL, x)
    assert official.targets[0].matrix is None and official.targets[0].box != (12, 10, 42, 45)   # carried, not the mask
    with caplog.at_level(logging.WARNING, logger="identity_animator.nodes.refine"), torch.inference_mode():
        boxes = sampler_opts(vae, arcface, landmarks=False).build(FAKE_MODEL, x)
    assert "face_landmarks is not connected" in caplog.text
    assert boxes.targets[0].matrix is None and boxes.targets[0].box == (12, 10, 42, 45)
    with pytest.raises(ValueError, match="face_landmarks are 3 frames of 72x64 but the video is 3 frames of 64x64"):
        sampler_opts(vae, arcface, size=(72, 64)).build(FAKE_MODEL, x)
