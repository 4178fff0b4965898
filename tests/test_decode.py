"""Chunked temporal decode: chunk size, out-of-memory retry with smaller chunks, CPU decode, VIDEO out."""
from __future__ import annotations

import pytest
import torch

import comfy.model_management as mm
from identity_animator.nodes.decode import AnimationDecode, decode_chunks


def test_chunks_and_oom_retry():
    calls = []

    def decode(z):
        calls.append(z.shape[0])
        if z.shape[0] > 2:
            raise mm.OOM_EXCEPTION("out of memory (simulated)")
        return z.mean(1, keepdim=True).repeat(1, 3, 1, 1).movedim(1, -1)

    z = torch.randn(7, 4, 2, 2)
    out = decode_chunks(decode, z, 8)
    assert out.shape == (7, 2, 2, 3)
    assert calls[:3] == [7, 3, 1] and set(calls[3:]) <= {1, 2}
    assert torch.allclose(out[..., 0], z.mean(1))


@pytest.fixture(scope="module")
def vae(svd_vae):
    return svd_vae


def test_decode_node_images_video_and_cpu_path(vae):
    latent = {"samples": torch.randn(3, 4, 4, 4) * 0.5}
    images, video = AnimationDecode.execute(vae, latent, 2, False, 8.0).result
    assert images.shape == (3, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
    assert video.get_components().images.shape[0] == 3 and float(video.get_components().frame_rate) == 8.0
    cpu_images, _ = AnimationDecode.execute(vae, latent, 2, True, 8.0).result
    assert torch.allclose(cpu_images, images, atol=1e-3)
