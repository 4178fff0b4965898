"""The pack's SVD VAE decoder (ComfyUI's ldm ``VideoDecoder``, built by ``fresh_decoder``) equals
diffusers' ``TemporalDecoder`` loaded through ``ida_official_vae``'s mapping, on the same random weights
(fp32, max abs diff <= 1e-4), so a benchmark of the official pipeline decodes with the pack's weights."""
from __future__ import annotations

import pytest
import torch

from ida_official_vae import (
    DecoderMappingError,
    decoder_part,
    diffusers_temporal_decoder,
    diffusers_temporal_decoder_state_dict,
    diffusers_temporal_vae,
)
from ida_factory import TINY_VIDEO_DECODER as TINY, DecoderOnlyVAE as _Vae, tiny_video_decoder_state_dict
from identity_animator.nodes.vae_decoder import fresh_decoder

TOL = 1e-4
FRAMES, LATENT_HW = 3, (8, 6)
@pytest.fixture(scope="module")
def decoder_sd():
    return tiny_video_decoder_state_dict(seed=11)


@pytest.fixture(scope="module")
def latent():
    return torch.randn(FRAMES, 4, *LATENT_HW, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def comfy_out(decoder_sd, latent):
    decoder = fresh_decoder(_Vae(decoder_sd), "cpu", torch.float32)
    with torch.no_grad():
        return decoder(latent)   # the pack's call: one clip, timesteps = all frames


def test_temporal_decoder_matches_comfy(decoder_sd, latent, comfy_out):
    decoder = diffusers_temporal_decoder(decoder_sd)
    with torch.no_grad():
        out = decoder(latent, image_only_indicator=torch.zeros(1, FRAMES), num_frames=FRAMES)
    assert out.shape == comfy_out.shape == (FRAMES, 3, 8 * LATENT_HW[0], 8 * LATENT_HW[1])
    assert comfy_out.abs().max() > 0.1   # a real signal, not a collapse both sides share
    assert (out - comfy_out).abs().max().item() <= TOL


def test_temporal_vae_decode_matches_comfy(decoder_sd, latent, comfy_out):
    vae = diffusers_temporal_vae(decoder_sd)
    assert not any(k.startswith("post_quant_conv") for k in vae.state_dict())
    with torch.no_grad():
        out = vae.decode(latent, num_frames=FRAMES).sample
    assert (out - comfy_out).abs().max().item() <= TOL


def test_frames_mix_on_both_sides(decoder_sd, latent, comfy_out):
    """Frame-by-frame decoding differs from clip decoding, so the parity above covers the temporal path."""
    decoder = diffusers_temporal_decoder(decoder_sd)
    with torch.no_grad():
        single = torch.cat([decoder(z[None], image_only_indicator=torch.zeros(1, 1), num_frames=1) for z in latent])
    assert (single - comfy_out).abs().max().item() > 100 * TOL


def test_decoder_part_reads_both_prefixes(decoder_sd):
    for prefix in ("decoder.", "first_stage_model.decoder."):
        whole = {f"{prefix}{k}": v for k, v in decoder_sd.items()} | {"encoder.conv_in.weight": torch.zeros(1)}
        assert decoder_part(whole).keys() == decoder_sd.keys()


def test_missing_key_is_named(decoder_sd):
    partial = {k: v for k, v in decoder_sd.items() if k != "mid.attn_1.k.bias"}
    with pytest.raises(DecoderMappingError, match=r"left unfilled \(1\): mid_block\.attentions\.0\.to_k\.bias"):
        diffusers_temporal_decoder_state_dict(partial)


def test_extra_key_is_named(decoder_sd):
    extra = dict(decoder_sd, **{"mid.attn_1.time_mix_block.norm1.weight": torch.ones(64)})
    named = r"no diffusers place \(1\): mid\.attn_1\.time_mix_block\.norm1\.weight"
    with pytest.raises(DecoderMappingError, match=named):
        diffusers_temporal_decoder_state_dict(extra)


def test_unmappable_depth_is_explained():
    with pytest.raises(DecoderMappingError, match="layers_per_block=2"):
        diffusers_temporal_decoder_state_dict(tiny_video_decoder_state_dict(1, dict(TINY, num_res_blocks=1)))
