"""Animation nodes in-process: patches survive clone() without copies, the conditioning follows the
official recipe, and the pieces combine with ComfyUI's custom-sampling path to the same result."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.samplers
from identity_animator.models.checkpoint import load_state_dict
from identity_animator.models.face import FaceConditioning
from identity_animator.models.id_adapter import IDAdapterWeights
from identity_animator.models.pose_net import PoseNet
from identity_animator.models.unet_convert import convert_stableanimator_unet
from identity_animator.nodes.animation import AnimationConditioning, ApplyStableAnimator
from identity_animator.nodes.patches import TEMPORAL_BLOCK, IDAttentionPatch, PoseResidualPatch, TemporalBlockMark
from identity_animator.nodes.sampling import (AnimationNoise, AnimationSampler, AnimationSigmas, AnimationWindows)
from identity_animator.nodes.svd_model import build_svd_model

FRAMES, H, W = 18, 64, 64


@pytest.fixture(scope="module")
def patched(tiny_set):
    conv = convert_stableanimator_unet(load_state_dict(str(tiny_set["unet.pth"])))
    model = build_svd_model(conv.unet, "fp32", "tiny")
    pose = comfy.model_patcher.ModelPatcher(PoseNet.from_state_dict(load_state_dict(str(tiny_set["pose_net.pth"]))),
                                            mm.get_torch_device(), mm.unet_offload_device())
    g = torch.Generator().manual_seed(0)
    face = FaceConditioning(torch.randn(1, 1, 1024, generator=g), torch.randn(1, 4, 1024, generator=g))
    (m,) = ApplyStableAnimator.execute(model, IDAdapterWeights.from_converted(conv.id_adapter), face, pose,
                                       torch.rand(FRAMES, H, W, 3, generator=g), 1.0, 1.0, 0.0, 1.0).result
    return model, m, face


def test_patches_are_on_a_clone_and_survive_clone_without_copies(patched):
    base, m, _ = patched
    assert "patches_replace" not in base.model_options.get("transformer_options", {})
    replace = m.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replace) == 16 and all(isinstance(p, IDAttentionPatch) for p in replace.values())
    assert ("middle", 0) in replace and ("input", 1) in replace
    pose = m.model_options["transformer_options"]["patches"]["input_block_patch"]
    assert len(pose) == 1 and isinstance(pose[0], PoseResidualPatch) and pose[0].features.shape[0] == FRAMES
    c = m.clone()
    c_replace = c.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(c_replace[k] is replace[k] for k in replace)          # same objects, weights not copied
    assert c.model_options["transformer_options"]["patches"]["input_block_patch"][0] is pose[0]


def test_temporal_blocks_are_marked_and_their_attention_gets_no_face(patched):
    from comfy.ldm.modules.attention import optimized_attention

    base, m, _ = patched
    marks = {k: v for k, v in m.object_patches.items() if isinstance(v, TemporalBlockMark)}
    assert len(marks) == 16 and all(k.endswith(".time_stack.0.forward") for k in marks)
    assert "diffusion_model.middle_block.1.time_stack.0.forward" in marks
    assert not any(isinstance(v, TemporalBlockMark) for v in base.object_patches.values())
    assert copy.deepcopy(next(iter(marks.values()))).block is next(iter(marks.values())).block   # never a copied block

    patch = m.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 4)]
    c, heads = patch.to_k.shape[0], 2
    g = torch.Generator().manual_seed(1)
    # 16 frames at a 4x4 block: a temporal call's queries [1*16 positions, 16 frames, C] have the
    # shape of a spatial call's [16 frames, 16 positions, C]
    q, k, v = torch.randn(16, 16, c, generator=g), torch.randn(16, 1, c, generator=g), torch.randn(16, 1, c, generator=g)
    extra = {"activations_shape": [16, c, 4, 4], "n_heads": heads, "cond_or_uncond": [0], "sigmas": torch.tensor([1.0])}
    plain = optimized_attention(q, k, v, heads)
    assert torch.equal(patch(q, k, v, {**extra, TEMPORAL_BLOCK: True}), plain)
    assert (patch(q, k, v, extra) - plain).abs().max() > 1e-2                   # unmarked: spatial, with the face
    # an unmarked call whose queries cannot be spatial means the marks are missing: an error, not a guess
    with pytest.raises(RuntimeError, match="temporal-block marks"):
        patch(torch.randn(64, 16, c), k[:1].expand(64, 1, c), v[:1].expand(64, 1, c), {**extra, "activations_shape": [16, c, 8, 8]})


def test_conditioning_follows_the_official_recipe(patched, svd_vae):
    from PIL import Image

    _, _, face = patched
    vae = svd_vae
    ref = torch.rand(1, 50, 70, 3)
    poses = torch.zeros(FRAMES, H, W, 3)
    pos, neg, latent = AnimationConditioning.execute(vae, ref, face, poses, 7, 127, 0.02, 3).result
    assert latent["samples"].shape == (FRAMES, 4, H // 8, W // 8) and not latent["samples"].any()
    clip, extra = pos[0]
    assert torch.equal(clip, face.clip_embeds) and (extra["fps"], extra["motion_bucket_id"], extra["augmentation_level"]) == (7, 127, 0.02)
    # reference latent = VAE mode of the Lanczos-resized image + 0.02 N(0,1) in [-1, 1], not scaled by 0.18215
    arr = (ref[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    lanczos = torch.from_numpy(np.asarray(Image.fromarray(arr).resize((W, H), Image.LANCZOS), np.float32) / 255.0)[None]
    noise = torch.randn(lanczos.shape, generator=torch.Generator().manual_seed(3))
    pixels = (lanczos * 2 - 1 + 0.02 * noise).movedim(-1, 1)
    with torch.no_grad():
        expected = vae.first_stage_model.encode(pixels.to(vae.vae_dtype))
    assert torch.allclose(extra["concat_latent_image"], expected.float(), atol=1e-4)
    uclip, uextra = neg[0]
    assert not uclip.any() and not uextra["concat_latent_image"].any()
    with pytest.raises(ValueError, match="multiple of 64"):
        AnimationConditioning.execute(vae, ref, face, torch.zeros(2, 60, 64, 3), 7, 127, 0.02, 3)


def test_custom_sampling_nodes_give_the_same_result(patched):
    _, m, face = patched
    adm = {"fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.02}
    ref = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
    pos = [[face.clip_embeds, {"concat_latent_image": ref, **adm}]]
    neg = [[torch.zeros_like(face.clip_embeds), {"concat_latent_image": torch.zeros_like(ref), **adm}]]
    latent = {"samples": torch.zeros(FRAMES, 4, H // 8, W // 8)}
    (a,) = AnimationSampler.execute(m, pos, neg, latent, 9, 2, 2.0, 3.0, "official", 16, 4, False, False).result
    # the same thing from the building blocks, the way SamplerCustomAdvanced runs them
    (mw,) = AnimationWindows.execute(m, 2.0, 3.0, 9, "official", 16, 4, False, False).result
    (sigmas,) = AnimationSigmas.execute(2).result
    (noise,) = AnimationNoise.execute(9, 16).result
    guider = comfy.samplers.CFGGuider(mw)
    guider.set_conds(pos, neg)
    guider.set_cfg(3.0)
    b = guider.sample(noise.generate_noise(latent), latent["samples"], comfy.samplers.sampler_object("euler"), sigmas,
                      seed=9)
    assert torch.allclose(a["samples"], b, atol=1e-5)


def test_window_settings_are_validated():
    assert "smaller than window_length" in AnimationSampler.validate_inputs(window_length=8, window_overlap=8, min_cfg=1, max_cfg=2)
    assert "must not exceed" in AnimationSampler.validate_inputs(window_length=16, window_overlap=4, min_cfg=3, max_cfg=2)


def _sample(m, face, schedule):
    adm = {"fps": 7, "motion_bucket_id": 127, "augmentation_level": 0.02}
    ref = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(1))
    pos = [[face.clip_embeds, {"concat_latent_image": ref, **adm}]]
    neg = [[torch.zeros_like(face.clip_embeds), {"concat_latent_image": torch.zeros_like(ref), **adm}]]
    latent = {"samples": torch.zeros(FRAMES, 4, H // 8, W // 8)}
    return AnimationSampler.execute(m, pos, neg, latent, 9, 2, 2.0, 3.0, schedule, 16, 4, False, False).result[0]["samples"]


def test_magicanimate_windows_give_the_same_video_on_hosts_with_anchor_frames(patched, monkeypatch):
    """Newer hosts prepend an anchor frame to windows that do not start at frame 0 (causal_window_fix);
    magicanimate's second window starts at frame 2 of 18 and must still run exactly its own frames."""
    from ida_host_emulation import emulate_anchor_frames

    _, m, face = patched
    plain = _sample(m, face, "magicanimate")
    emulate_anchor_frames(monkeypatch)
    assert torch.equal(_sample(m, face, "magicanimate"), plain)
    from identity_animator.nodes.sampling import AnimationContextHandler

    assert AnimationContextHandler("magicanimate", 16, 4, False, 0, False).causal_window_fix is False


def test_pose_features_follow_an_anchored_window():
    from comfy.context_windows import IndexListContextWindow

    feats = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 2, 3, 3).contiguous()
    patch = PoseResidualPatch(feats, 1.0)
    window = IndexListContextWindow(list(range(4, 20)))
    window.causal_anchor_index = 3
    opts = {"block": ("input", 0), "cond_or_uncond": [0, 1], "context_window": window}
    out = patch(torch.zeros(34, 2, 3, 3), opts)          # cond + uncond, 17 frames each
    assert out[:17, 0, 0, 0].tolist() == list(range(3, 20)) and not out[17:].any()
    del window.causal_anchor_index
    out = patch(torch.zeros(32, 2, 3, 3), opts)
    assert out[:16, 0, 0, 0].tolist() == list(range(4, 20))
    with pytest.raises(ValueError, match="cover 16 frames but the model runs 17"):
        patch(torch.zeros(34, 2, 3, 3), opts)


@pytest.mark.parametrize("node", [AnimationSampler, AnimationNoise])
def test_seed_help_says_the_official_seed_does_not_reproduce_official_noise(node):
    from pathlib import Path

    schema = node.define_schema()
    (seed,) = [i for i in schema.inputs if i.id == "seed"]
    assert seed.default == 23123134
    assert "CUDA generator" in seed.tooltip and "does not reproduce" in seed.tooltip
    page = (Path(__file__).resolve().parents[1] / "web" / "docs" / f"{schema.node_id}.md").read_text()
    assert "CUDA generator" in page and "23123134" in page
