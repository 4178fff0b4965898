"""Glue: build ComfyUI's native SVD model from converted StableAnimator UNet tensors.

ComfyUI's automatic detection only accepts the full-size SVD config, so the model is built from the
config that ``detect_unet_config`` reads off the tensor shapes (any size, including tiny test
checkpoints) and loaded with every key checked.
"""
from __future__ import annotations

import logging

import torch

import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import comfy.utils

from ..models.checkpoint import CheckpointError, describe_key_mismatch

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


def build_svd_model(unet_sd: dict, weight_dtype: str, source: str) -> comfy.model_patcher.ModelPatcher:
    """Return a ModelPatcher around ComfyUI's ``model_base.SVD_img2vid`` holding ``unet_sd``."""
    model_config = comfy.supported_models.SVD_img2vid(_svd_unet_config(unet_sd, source))
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    if weight_dtype == "default":
        unet_dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(unet_sd),
                                   supported_dtypes=supported, weight_dtype=comfy.utils.weight_dtype(unet_sd))
    else:
        unet_dtype = UNET_DTYPES[weight_dtype]
    model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device, supported))
    model = model_config.get_model(unet_sd, "", device=offload_device)
    expected = set(model.diffusion_model.state_dict())
    if expected != set(unet_sd):
        raise CheckpointError(describe_key_mismatch(
            "Animation UNet (converted to ComfyUI's layout)", source,
            sorted(expected - set(unet_sd)), sorted(set(unet_sd) - expected)))
    model.diffusion_model.load_state_dict(unet_sd, strict=True)
    logger.info("Animation UNet from %s: %d tensors, %s weights, %s compute", source, len(unet_sd),
                unet_dtype, model_config.manual_cast_dtype or unet_dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
