"""Glue: build ComfyUI's native SVD model from converted StableAnimator UNet tensors.

ComfyUI's automatic detection only accepts the full-size SVD config, so the model is built from the
config that ``detect_unet_config`` reads off the tensor shapes (any size, including tiny test
checkpoints) and loaded with every key checked.
"""
from __future__ import annotations

import inspect
import logging

import torch

import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.supported_models
import comfy.utils

from ..models.checkpoint import CheckpointError, require_tensors

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# fp8 stores the UNet's weights in 8 bits and computes in fp16/bf16/fp32 (ComfyUI's manual cast)
UNET_DTYPES = {**WEIGHT_DTYPES, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _svd_unet_config(unet_sd: dict, source: str) -> dict:
    cfg = comfy.model_detection.detect_unet_config(unet_sd, "")
    required = {"in_channels": 8, "use_temporal_resblock": True, "use_temporal_attention": True, "adm_in_channels": 768}
    if cfg is None or any(cfg.get(k) != v for k, v in required.items()):
        got = {k: (cfg or {}).get(k) for k in required}
        raise CheckpointError(
            f"{source} is not an SVD image-to-video UNet (expected {required}, found {got}). "
            "Use StableAnimator's Animation/unet.pth."
        )
    return cfg


class _PlainMetaOps(comfy.ops.disable_weight_init):
    """ComfyUI's operations with plain torch layers, only for reading the expected tensor layout off a
    meta-device UNet: the host's own layers may not create their weights before loading (DynamicVRAM)."""

    Linear, Conv1d, Conv2d, Conv3d = torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d
    GroupNorm, LayerNorm, Embedding = torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding
    ConvTranspose1d, ConvTranspose2d = torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d


def expected_unet_layout(model_config) -> dict[str, torch.Tensor]:
    """Tensor name -> an empty tensor with the shape and dtype that ComfyUI's layers give it, for the
    UNet ``model_config`` describes (a few host-made parameters, e.g. time mixers, stay fp32)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**model_config.unet_config, device="meta", operations=_PlainMetaOps).state_dict()


# GroupNorm epsilon of the res blocks that diffusers' SVD classes (which StableAnimator trained and runs)
# build with 1e-6: CrossAttnDownBlockSpatioTemporal and both up-block types pass it to every
# SpatioTemporalResBlock, spatial and temporal half alike; DownBlockSpatioTemporal, the mid block and
# conv_norm_out keep 1e-5. ComfyUI's SVD UNet uses 1e-5 for all of them.
OFFICIAL_RESBLOCK_EPS = 1e-6


def set_official_groupnorm_eps(unet) -> int:
    """Give ComfyUI's SVD UNet the official GroupNorm epsilons; returns how many norms were changed.

    The rule is read off the built model, so it holds for any size: an ``input_blocks`` entry with a
    SpatialVideoTransformer is a res block of a cross-attention down level (diffusers' choice of block
    class is per level), and every ``output_blocks`` res block belongs to an up block. The transformers'
    own norms are 1e-6 in both already and are not touched.
    """
    from comfy.ldm.modules.attention import SpatialVideoTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    entries = [e for e in unet.input_blocks if any(isinstance(m, SpatialVideoTransformer) for m in e)]
    entries += list(unet.output_blocks)
    changed = 0
    for entry in entries:
        for layer in entry:
            if not isinstance(layer, ResBlock):   # VideoResBlock is one; so is its time_stack
                continue
            for norm in layer.modules():
                if isinstance(norm, torch.nn.GroupNorm):
                    norm.eps = OFFICIAL_RESBLOCK_EPS
                    changed += 1
    return changed


def _patcher_class():
    # current ComfyUI wraps core models in CoreModelPatcher (dynamic VRAM where it is on); 0.3.75 has none
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def _load_unet_weights(model, sd: dict, patcher) -> None:
    """Core's own loading path where the host has one for dynamic VRAM (weights assigned, not copied),
    otherwise a strict ``load_state_dict``; the caller checks the layout before and after."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if is_dynamic is not None and "assign" in inspect.signature(model.load_model_weights).parameters:
        model.load_model_weights(dict(sd), "", assign=is_dynamic())
    else:
        model.diffusion_model.load_state_dict(sd, strict=True)


def build_svd_model(unet_sd: dict, weight_dtype: str, source: str, *,
                    official_eps: bool = True) -> comfy.model_patcher.ModelPatcher:
    """Return a model patcher around ComfyUI's ``model_base.SVD_img2vid`` holding ``unet_sd``.

    ``official_eps`` gives the res blocks diffusers' GroupNorm epsilons (see ``OFFICIAL_RESBLOCK_EPS``);
    off, they keep ComfyUI's 1e-5 (the value of Stability's own SVD code, which ComfyUI's UNet follows).
    """
    model_config = comfy.supported_models.SVD_img2vid(_svd_unet_config(unet_sd, source))
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    if weight_dtype == "default":
        unet_dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(unet_sd),
                                   supported_dtypes=supported, weight_dtype=comfy.utils.weight_dtype(unet_sd))
    else:
        unet_dtype = UNET_DTYPES[weight_dtype]
    model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device, supported))
    what = "Animation UNet (converted to ComfyUI's layout)"
    layout = expected_unet_layout(model_config)
    expected = {k: tuple(v.shape) for k, v in layout.items()}
    require_tensors(unet_sd, expected, what, source)
    # cast first: a weight that only comes into being at load time (or is assigned) keeps the dtype it is given
    sd = {k: v.to(layout[k].dtype) if v.is_floating_point() else v for k, v in unet_sd.items()}
    model = model_config.get_model(sd, "", device=offload_device)
    patcher = _patcher_class()(model, load_device=load_device, offload_device=offload_device)
    _load_unet_weights(model, sd, patcher)
    require_tensors(model.diffusion_model.state_dict(), expected, f"{what} after loading", source)
    # the epsilon is a plain attribute, not a tensor: the layout checks above cannot see it
    eps = (f"official GroupNorm eps ({set_official_groupnorm_eps(model.diffusion_model)} res-block norms at "
           f"{OFFICIAL_RESBLOCK_EPS:g})") if official_eps else "ComfyUI's GroupNorm eps (1e-5)"
    logger.info("Animation UNet from %s: %d tensors, %s weights, %s compute, %s", source, len(unet_sd),
                unet_dtype, model_config.manual_cast_dtype or unet_dtype, eps)
    return patcher
