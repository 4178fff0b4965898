"""The refinement sampler on ComfyUI objects: the gradient decoder equals ComfyUI's decoder, works under
inference mode, and refinement through the real-size (random) SVD decoder lowers the identity loss."""
from __future__ import annotations

import pytest
import torch

import comfy.latent_formats
from identity_animator.models.face_refine import FaceRefiner, RefineSchedule, face_crops, identity_loss
from identity_animator.nodes.refine import GradDecoder, checkpointed_decode


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
    with torch.inference_mode():                      # how ComfyUI runs a node
        dec = GradDecoder(vae, lambda x: x, torch.device("cpu"), torch.float32)
    with torch.inference_mode(False), torch.enable_grad():
        zz = z.clone().requires_grad_(True)
        out = dec(zz)
        out.square().mean().backward()
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
    refiner = FaceRefiner(dec, arcface, ref, boxes, RefineSchedule(0, 20, 4, 0.05), margin=16, chunk=2)
    x = x0
    for step in range(3):
        x = refiner(x, step, 25)
    assert torch.equal(x[1], x0[1])                          # no face box: untouched
    faces = [0, 2]
    loss = lambda lat: float(identity_loss(arcface(face_crops(dec(lat[faces]).clamp(-1, 1), [boxes[k] for k in faces],
                                                              [(0, 0)] * 2)), ref))
    with torch.no_grad():
        assert loss(x) < loss(x0)
