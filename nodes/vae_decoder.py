"""A private SVD VAE decoder built from the VAE's weights, for gradients (face refinement) or CPU decode.

ComfyUI owns the VAE's modules: under DynamicVRAM its model patcher hangs allocator handles on them
whose destructors free shared GPU and pinned memory, so a copy of a live module can free the live
VAE's memory when the copy dies. The pack therefore never copies those modules: it builds a new
decoder of the same architecture and loads it from the VAE's state dict, tensor by tensor.
"""
from __future__ import annotations

import re

import torch

from ..models.checkpoint import CheckpointError, load_checked

PREFIX = "decoder."
# SVD's temporal decoder (ComfyUI's VAE for svd_xt): time-mixing kernel and merge factor are fixed by
# the architecture; the channel layout is read from the weights below
VIDEO_KERNEL, ALPHA = [3, 1, 1], 0.0


def decoder_state_dict(vae) -> dict[str, torch.Tensor]:
    sd = {k[len(PREFIX):]: v for k, v in vae.get_sd().items() if k.startswith(PREFIX)}
    if "mid.block_1.mix_factor" not in sd:
        raise CheckpointError("This VAE has no temporal decoder: connect the SVD-xt VAE from Load SVD-xt Base.")
    return sd


def _decoder_config(sd: dict[str, torch.Tensor]) -> dict:
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^up\.(\d+)\.", k))})
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^up\.0\.block\.(\d+)\.", k)))
    ch = int(sd["up.0.block.0.conv1.weight"].shape[0])
    ch_mult = [int(sd[f"up.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels]
    return dict(ch=ch, out_ch=int(sd["conv_out.weight"].shape[0]), ch_mult=ch_mult, num_res_blocks=blocks - 1,
                attn_resolutions=[], dropout=0.0, in_channels=3, resolution=256,
                z_channels=int(sd["conv_in.weight"].shape[1]), double_z=True,
                video_kernel_size=VIDEO_KERNEL, alpha=ALPHA)


def fresh_decoder(vae, device, dtype) -> torch.nn.Module:
    """A new ``VideoDecoder`` on ``device`` in ``dtype`` holding copies of the VAE decoder's weights,
    built outside inference mode (so it can take part in backward) and frozen."""
    from comfy.ldm.modules.temporal_ae import VideoDecoder

    sd = decoder_state_dict(vae)
    with torch.inference_mode(False):
        weights = {k: v.detach().to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
                   for k, v in sd.items()}
        decoder = VideoDecoder(**_decoder_config(sd))
        expected = {k: tuple(v.shape) for k, v in sd.items()}
        load_checked(decoder, weights, expected, "SVD VAE decoder")
        return decoder.to(device, dtype).eval().requires_grad_(False)
