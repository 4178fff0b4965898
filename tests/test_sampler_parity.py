"""One full sampling trajectory of our ComfyUI-native path equals StableAnimator's pipeline re-stated
on diffusers' UNetSpatioTemporalConditionModel, on the same tiny random weights (fp32, max abs diff
<= 1e-3), over two sliding windows.

The reference re-states the official pieces independently of the pack's code: the distribution-aware
ID attention processor, temporal cross-attention on the CLIP token only, PoseNet added after conv_in
on the conditional pass, windows holding frame 0 with triangular weights, per-frame linear CFG on
the v-prediction, and the Euler update on SVD's Karras sigmas.
"""
from __future__ import annotations

import pytest
import torch

from ida_official import official_posenet, official_sample, official_unet

from identity_animator.models.checkpoint import load_state_dict
from identity_animator.models.face import FaceConditioning
from identity_animator.models.id_adapter import IDAdapterWeights
from identity_animator.models.pose_net import PoseNet
from identity_animator.models.unet_convert import convert_stableanimator_unet
from identity_animator.nodes.animation import ApplyStableAnimator
from identity_animator.nodes.sampling import AnimationSampler, PeriodicNoise, official_sigmas
from identity_animator.nodes.svd_model import build_svd_model

FRAMES, H, W, STEPS, SEED = 20, 64, 48, 3, 11
MIN_CFG, MAX_CFG, FPS, MOTION, AUG = 2.0, 3.5, 7, 127, 0.02
TOL = 1e-3
# 64x64 px with one 16-frame window: the 4x4 latent level has h*w = 16 tokens, as many as the frames,
# so its spatial and temporal cross-attentions get queries of the same shape
COLLIDING = dict(frames=16, h=64, w=64)
# SVD-xt's scheduler_config.json as the official pipeline loads it (stableanimator.md §3.2 item 8); the
# betas are diffusers' defaults here: with sigma_min/sigma_max given they do not enter the Karras sigmas
SVD_XT_SCHEDULER = dict(prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
                        timestep_type="continuous", timestep_spacing="leading", interpolation_type="linear",
                        num_train_timesteps=1000, steps_offset=1)


def reference_trajectory(weights, pose_sd, pose_images, clip, face, ref_latent, noise, sigmas):
    from ida_factory import TINY_UNET

    unet = official_unet(weights, TINY_UNET)
    return official_sample(unet, official_posenet(pose_sd), pose_images, clip, face, ref_latent, noise, sigmas,
                           min_cfg=MIN_CFG, max_cfg=MAX_CFG, fps=FPS, motion=MOTION, aug=AUG)


def _our_trajectory(tiny_set, id_strength=1.0, pose_strength=1.0, frames=FRAMES, h=H, w=W):
    import comfy.model_management as mm
    import comfy.model_patcher

    weights = load_state_dict(str(tiny_set["unet.pth"]))
    pose_sd = load_state_dict(str(tiny_set["pose_net.pth"]))
    g = torch.Generator().manual_seed(3)
    clip = torch.randn(1, 1, 1024, generator=g)
    face = torch.randn(1, 4, 1024, generator=g)
    ref_latent = torch.randn(1, 4, h // 8, w // 8, generator=g)
    pose_images = torch.rand(frames, h, w, 3, generator=g)
    latent = {"samples": torch.zeros(frames, 4, h // 8, w // 8)}
    noise = PeriodicNoise(SEED, 16).generate_noise(latent)
    sigmas = official_sigmas(STEPS)

    conv = convert_stableanimator_unet(weights)
    model = build_svd_model(conv.unet, "fp32", "tiny")
    pose_net = comfy.model_patcher.ModelPatcher(PoseNet.from_state_dict(pose_sd), mm.get_torch_device(), mm.unet_offload_device())
    id_adapter = IDAdapterWeights.from_converted(conv.id_adapter)
    (patched,) = ApplyStableAnimator.execute(model, id_adapter, FaceConditioning(clip, face), pose_net, pose_images,
                                              id_strength, pose_strength, 0.0, 1.0).result
    adm = {"fps": FPS, "motion_bucket_id": MOTION, "augmentation_level": AUG}
    positive = [[clip, {"concat_latent_image": ref_latent, **adm}]]
    negative = [[torch.zeros_like(clip), {"concat_latent_image": torch.zeros_like(ref_latent), **adm}]]
    (out,) = AnimationSampler.execute(patched, positive, negative, latent, SEED, STEPS, MIN_CFG, MAX_CFG,
                                      "official", 16, 4, False, False).result
    ours = out["samples"] * 0.18215                 # ComfyUI returns latents divided by the SD scale factor
    return ours, (weights, pose_sd, pose_images, clip, face, ref_latent, noise, sigmas.tolist())


@pytest.fixture(scope="module")
def reference(tiny_set):
    _, args = _our_trajectory(tiny_set, 0.0, 0.0)
    return reference_trajectory(*args)


def test_trajectory_matches_the_official_pipeline_on_diffusers(tiny_set, reference):
    ours, _ = _our_trajectory(tiny_set)
    ref = reference
    assert ours.shape == ref.shape == (FRAMES, 4, H // 8, W // 8)
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff}"
    assert ref.abs().mean() > 1e-2


def test_trajectory_matches_where_frames_equal_the_tokens_of_a_level(tiny_set):
    """The temporal cross-attention keeps the face off even where its queries look like spatial ones."""
    ours, args = _our_trajectory(tiny_set, **COLLIDING)
    ref = reference_trajectory(*args)
    assert ours.shape == ref.shape == (16, 4, 8, 8)
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff}"


@pytest.mark.parametrize("id_strength,pose_strength", [(0.0, 1.0), (1.0, 0.0)])
def test_the_comparison_sees_the_id_adapter_and_posenet(tiny_set, reference, id_strength, pose_strength):
    ours, _ = _our_trajectory(tiny_set, id_strength, pose_strength)
    assert (ours - reference).abs().max().item() > 10 * TOL


def test_official_sigmas_equal_the_official_scheduler_bit_for_bit():
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(**SVD_XT_SCHEDULER)
    for steps in range(1, 201):   # every step count the nodes accept
        scheduler.set_timesteps(steps)
        got = official_sigmas(steps)
        assert got.dtype == scheduler.sigmas.dtype == torch.float32
        assert torch.equal(got, scheduler.sigmas), (steps, (got - scheduler.sigmas).abs().max().item())


def test_official_sigmas_for_25_steps():
    """The reference's list (stableanimator.md §3.2 item 8), compared at the precision it is printed with."""
    ref = "700.0 545.73 421.57 322.45 244.02 182.55 134.85 98.27 70.54 49.81 34.54 23.47 15.59 10.10 " \
          "6.354 3.870 2.269 1.273 0.678 0.339 0.157 0.066 0.025 0.0079 0.002 0".split()
    got = official_sigmas(25).tolist()
    assert len(got) == len(ref) == 26
    for a, b in zip(got, ref):
        decimals = len(b.split(".")[1]) if "." in b else 0
        assert abs(a - float(b)) <= 0.5 * 10 ** -decimals + 1e-4, (a, b)
