"""ComfyUI's native SVD UNet, loaded through our conversion, equals diffusers'
``UNetSpatioTemporalConditionModel`` on the same random weights (fp32, max abs diff <= 1e-5), down to
the GroupNorm epsilon of every norm."""
from __future__ import annotations

import pytest
import torch

from identity_animator.models.checkpoint import CheckpointError, load_state_dict
from identity_animator.models.unet_convert import UNetLayout, convert_stableanimator_unet, diffusers_to_comfy_key
from identity_animator.nodes.svd_model import build_svd_model, set_official_groupnorm_eps

TOL = 1e-5
FRAMES, LATENT_HW = 3, (8, 6)


@pytest.fixture(scope="module")
def weights(tiny_set):
    return load_state_dict(str(tiny_set["unet.pth"]))


@pytest.fixture(scope="module")
def diffusers_unet(weights):
    from diffusers import UNetSpatioTemporalConditionModel
    from ida_factory import TINY_UNET

    unet = UNetSpatioTemporalConditionModel(**TINY_UNET)
    unet.load_state_dict({k: v for k, v in weights.items() if ".processor." not in k}, strict=True)
    return unet.eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(1, FRAMES, 8, *LATENT_HW, generator=g)
    sigma = 24.0
    return dict(
        sample=sample,
        c_noise=torch.tensor(0.25 * torch.log(torch.tensor(sigma)).item()),
        clip=torch.randn(1, 1, 1024, generator=g),
        fps=7, motion_bucket_id=127, noise_aug=0.02,
    )


def diffusers_forward(unet, inp):
    added = torch.tensor([[inp["fps"] - 1, inp["motion_bucket_id"], inp["noise_aug"]]], dtype=torch.float32)
    with torch.no_grad():
        return unet(inp["sample"], inp["c_noise"], inp["clip"], added).sample[0]  # [F, 4, h, w]


def comfy_forward(patcher, inp):
    base = patcher.model
    y = base.encode_adm(fps=inp["fps"], motion_bucket_id=inp["motion_bucket_id"], augmentation_level=inp["noise_aug"])
    with torch.no_grad():
        return base.diffusion_model(
            inp["sample"][0], inp["c_noise"].repeat(FRAMES), context=inp["clip"].repeat(FRAMES, 1, 1),
            y=y.repeat(FRAMES, 1), num_video_frames=FRAMES)


def test_converted_unet_matches_diffusers(weights, diffusers_unet, inputs):
    conv = convert_stableanimator_unet(weights)
    patcher = build_svd_model(conv.unet, "fp32", "tiny unet.pth")
    ref = diffusers_forward(diffusers_unet, inputs)
    out = comfy_forward(patcher, inputs)
    assert out.shape == ref.shape == (FRAMES, 4, *LATENT_HW)
    assert (out - ref).abs().max().item() <= TOL
    assert ref.abs().mean() > 1e-2  # the comparison is not between two near-zero tensors


def test_parity_sees_the_groupnorm_eps(weights, diffusers_unet, inputs):
    """With ComfyUI's eps (1e-5 in every res block) the same comparison fails: the tolerance is tight
    enough to tell the two apart."""
    conv = convert_stableanimator_unet(weights)
    out = comfy_forward(build_svd_model(conv.unet, "fp32", "comfy eps", official_eps=False), inputs)
    assert (out - diffusers_forward(diffusers_unet, inputs)).abs().max().item() > TOL


def _groupnorm_eps_by_comfy_name(diffusers_model) -> dict[str, float]:
    """Every GroupNorm of a diffusers SVD UNet, named as our conversion names its weight in ComfyUI."""
    layout = UNetLayout.from_keys(list(diffusers_model.state_dict()))
    out = {}
    for name, module in diffusers_model.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            key = diffusers_to_comfy_key(name + ".weight", layout)
            assert key is not None, name
            out[key[: -len(".weight")]] = module.eps
    return out


def _groupnorm_eps(comfy_unet) -> dict[str, float]:
    return {n: m.eps for n, m in comfy_unet.named_modules() if isinstance(m, torch.nn.GroupNorm)}


def test_every_groupnorm_eps_is_the_official_one(weights, diffusers_unet):
    model = build_svd_model(convert_stableanimator_unet(weights).unet, "fp32", "tiny").model.diffusion_model
    assert _groupnorm_eps(model) == _groupnorm_eps_by_comfy_name(diffusers_unet)


def test_every_groupnorm_eps_is_the_official_one_at_real_size(official_keys):
    """The real SVD-xt structure, both models built on the meta device: 72 res-block norms move to 1e-6."""
    import comfy.model_detection
    import comfy.supported_models
    from diffusers import UNetSpatioTemporalConditionModel

    with torch.device("meta"):
        official = UNetSpatioTemporalConditionModel(num_attention_heads=(5, 10, 20, 20))   # SVD-xt's config
    sd = {k: torch.empty(s, device="meta") for k, s in official_keys["Animation/unet.pth"].items()}
    cfg = comfy.model_detection.detect_unet_config(convert_stableanimator_unet(sd).unet, "")
    model = comfy.supported_models.SVD_img2vid(cfg).get_model({}, "", device="meta").diffusion_model
    assert set_official_groupnorm_eps(model) == 72
    expected = _groupnorm_eps_by_comfy_name(official)
    assert _groupnorm_eps(model) == expected
    assert sum(eps == 1e-6 for eps in expected.values()) == 72 + 16   # and the 16 transformers' own norms


@pytest.mark.parametrize("pair", [
    ("input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.out_layers.0.weight"),       # norm1 <-> norm2
    ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"),
    ("output_blocks.5.1.time_stack.0.norm1.bias", "output_blocks.5.1.time_stack.0.norm3.bias"),
    ("input_blocks.2.0.time_mixer.mix_factor", "input_blocks.2.1.time_mixer.mix_factor"),
])
def test_parity_catches_one_swapped_mapping(weights, diffusers_unet, inputs, pair):
    conv = convert_stableanimator_unet(weights)
    a, b = pair
    assert conv.unet[a].shape == conv.unet[b].shape
    conv.unet[a], conv.unet[b] = conv.unet[b], conv.unet[a]
    out = comfy_forward(build_svd_model(conv.unet, "fp32", "swapped"), inputs)
    assert (out - diffusers_forward(diffusers_unet, inputs)).abs().max().item() > 100 * TOL


def test_real_size_conversion_equals_comfyui_svd_layout(official_keys):
    """Every converted official tensor lands on a ComfyUI SVD UNet parameter of the same shape."""
    import comfy.model_detection
    import comfy.supported_models

    sd = {k: torch.empty(s, device="meta") for k, s in official_keys["Animation/unet.pth"].items()}
    conv = convert_stableanimator_unet(sd)
    cfg = comfy.model_detection.detect_unet_config(conv.unet, "")
    model_config = comfy.supported_models.SVD_img2vid(cfg)
    assert model_config.matches(cfg)  # ComfyUI's own detection would call this the real SVD-xt UNet
    model = model_config.get_model({}, "", device="meta")
    expected = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in conv.unet.items()} == expected
    assert sum(v.numel() for v in conv.unet.values()) == 1_524_623_082
    assert sum(t.numel() for kv in conv.id_adapter.values() for t in kv.values()) == 25_559_040


def test_build_refuses_a_unet_missing_a_tensor(weights):
    conv = convert_stableanimator_unet(weights)
    del conv.unet["output_blocks.8.2.conv.weight"]
    with pytest.raises(CheckpointError, match="missing tensors, e.g. output_blocks.8.2.conv.weight"):
        build_svd_model(conv.unet, "fp32", "partial")


@pytest.mark.parametrize("dtype,expected", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                                            ("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_weight_dtype_option(weights, inputs, dtype, expected):
    conv = convert_stableanimator_unet(weights)
    patcher = build_svd_model(conv.unet, dtype, "tiny")
    assert patcher.model.diffusion_model.input_blocks[0][0].weight.dtype == expected
    if dtype.startswith("fp8"):   # stored in 8 bits, computed through ComfyUI's manual cast
        out = comfy_forward(patcher, inputs)
        assert torch.isfinite(out).all()
