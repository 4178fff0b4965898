"""SVD's temporal VAE decoder re-stated on diffusers, holding the same weights as the pack's ComfyUI path.

StableAnimator's official pipeline decodes with diffusers' ``AutoencoderKLTemporalDecoder``; the pack
decodes with ComfyUI's ldm ``VideoDecoder`` (``nodes/vae_decoder.py``). A benchmark that compares the two
pipelines must feed both decoders one set of weights, so this module renames the ldm decoder's tensors
into diffusers' ``TemporalDecoder`` layout and refuses any state dict it cannot map completely.

Layout notes (diffusers 0.35):
- ldm ``up.L`` runs from finest (``up.0``, no upsampler) to coarsest; diffusers ``up_blocks.i`` is in
  execution order, so ``up_blocks.i`` is ``up.(n-1-i)`` and ``block_out_channels[L]`` is the width of ``up.L``.
- ldm's mid block always has two resnets around one attention; diffusers sizes its mid block by
  ``layers_per_block``, so only ``layers_per_block == 2`` (SVD's own value) describes the same network.
- The mid attention is 1x1 convolutions in ldm and ``nn.Linear`` in diffusers (one head of full width).
- ``mix_factor`` needs no conversion: ldm blends ``s*temporal + (1-s)*spatial`` with ``s = sigmoid(m)``;
  diffusers' ``AlphaBlender`` with ``switch_spatial_to_temporal_mix`` takes ``1 - sigmoid(m)`` as the
  spatial weight, the same blend.
- Neither side has a ``post_quant_conv``: ComfyUI builds SVD's VAE as an ``AutoencodingEngine`` without one,
  and ``AutoencoderKLTemporalDecoder`` only has the encoder-side ``quant_conv``.
"""
from __future__ import annotations

import re

import torch

# ldm names inside one VideoResBlock -> diffusers names inside its SpatioTemporalResBlock. The empty
# module path is the resnet itself, whose only direct parameter is mix_factor.
_RESNET_MODULES = {
    "": "time_mixer",
    "norm1": "spatial_res_block.norm1",
    "conv1": "spatial_res_block.conv1",
    "norm2": "spatial_res_block.norm2",
    "conv2": "spatial_res_block.conv2",
    "nin_shortcut": "spatial_res_block.conv_shortcut",
    # openaimodel ResBlock: in_layers = (norm, SiLU, conv), out_layers = (norm, SiLU, dropout, conv)
    "time_stack.in_layers.0": "temporal_res_block.norm1",
    "time_stack.in_layers.2": "temporal_res_block.conv1",
    "time_stack.out_layers.0": "temporal_res_block.norm2",
    "time_stack.out_layers.3": "temporal_res_block.conv2",
}
_ATTENTION_MODULES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_TOP_MODULES = {
    "conv_in": "conv_in",
    "norm_out": "conv_norm_out",
    "conv_out": "conv_out",
    "conv_out.time_mix_conv": "time_conv_out",
}
_MID_RESNETS = {"block_1": 0, "block_2": 1}
# diffusers' mid block has layers_per_block resnets, ldm's always two (see the module docstring)
_MAPPABLE_LAYERS_PER_BLOCK = 2

_UP_BLOCK = re.compile(r"^up\.(\d+)\.block\.(\d+)\.(.+)$")
_UPSAMPLER = re.compile(r"^up\.(\d+)\.upsample\.conv\.(weight|bias)$")
_MID_RESNET = re.compile(r"^mid\.(block_1|block_2)\.(.+)$")
_MID_ATTENTION = re.compile(r"^mid\.attn_1\.(.+)$")


class DecoderMappingError(ValueError):
    """The ldm decoder state dict does not map one-to-one onto diffusers' ``TemporalDecoder``."""


def decoder_part(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's tensors of a whole VAE state dict, keyed relative to ``decoder.``.

    Accepts both a checkpoint's ``first_stage_model.decoder.*`` and ComfyUI's ``vae.get_sd()``
    ``decoder.*`` naming, so a benchmark can pass either without knowing which it holds.
    """
    for prefix in ("first_stage_model.decoder.", "decoder."):
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if part:
            return part
    raise DecoderMappingError("No 'decoder.' or 'first_stage_model.decoder.' keys in this state dict.")


def _split(key: str) -> tuple[str, str]:
    """``(module path, parameter name)``; the module path is empty for a parameter of the block itself."""
    module, _, param = key.rpartition(".")
    return module, param


def _need(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise DecoderMappingError(f"Cannot read the decoder's layout: no '{key}' in the state dict "
                                  "(keys must be relative to 'decoder.'; see decoder_part).")
    return sd[key]


def temporal_decoder_config(decoder_sd: dict[str, torch.Tensor]) -> dict:
    """``TemporalDecoder`` keyword arguments read off the ldm decoder's tensor shapes, so the diffusers
    side is always built to the weights' size (the real SVD-xt VAE or a tiny test one)."""
    levels = sorted({int(m.group(1)) for k in decoder_sd if (m := _UP_BLOCK.match(k))})
    if not levels or levels != list(range(len(levels))):
        raise DecoderMappingError(f"The decoder's up levels are {levels}, not 0..n-1.")
    blocks = {lvl: {int(m.group(2)) for k in decoder_sd if (m := _UP_BLOCK.match(k)) and int(m.group(1)) == lvl}
              for lvl in levels}
    counts = {len(b) for b in blocks.values()}
    if len(counts) != 1:
        raise DecoderMappingError(f"Up levels hold different numbers of resnets: {blocks}.")
    layers_per_block = counts.pop() - 1
    if layers_per_block != _MAPPABLE_LAYERS_PER_BLOCK:
        raise DecoderMappingError(
            f"The decoder has {layers_per_block + 1} resnets per up level; diffusers' TemporalDecoder ties "
            f"its mid block to layers_per_block while ldm's mid block always has two resnets, so only "
            f"{_MAPPABLE_LAYERS_PER_BLOCK + 1} resnets per level (layers_per_block=2, as in SVD) map.")
    widths = tuple(int(_need(decoder_sd, f"up.{lvl}.block.0.conv2.weight").shape[0]) for lvl in levels)
    return dict(in_channels=int(_need(decoder_sd, "conv_in.weight").shape[1]),
                out_channels=int(_need(decoder_sd, "conv_out.weight").shape[0]),
                block_out_channels=widths, layers_per_block=layers_per_block)


def _resnet_target(prefix: str, rest: str) -> str | None:
    module, param = _split(rest)
    target = _RESNET_MODULES.get(module)
    return None if target is None else f"{prefix}.{target}.{param}"


def _target_name(key: str, n_levels: int) -> str | None:
    """The diffusers name of one ldm decoder key, or None where no rule covers it."""
    if m := _UP_BLOCK.match(key):
        return _resnet_target(f"up_blocks.{n_levels - 1 - int(m.group(1))}.resnets.{m.group(2)}", m.group(3))
    if m := _UPSAMPLER.match(key):
        return f"up_blocks.{n_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    if m := _MID_RESNET.match(key):
        return _resnet_target(f"mid_block.resnets.{_MID_RESNETS[m.group(1)]}", m.group(2))
    if m := _MID_ATTENTION.match(key):
        module, param = _split(m.group(1))
        target = _ATTENTION_MODULES.get(module)
        return None if target is None else f"mid_block.attentions.0.{target}.{param}"
    module, param = _split(key)
    target = _TOP_MODULES.get(module)
    return None if target is None else f"{target}.{param}"


def _as_linear(target: str, tensor: torch.Tensor) -> torch.Tensor:
    """ldm's attention projections are 1x1 convolutions ``[out, in, 1, 1]``; diffusers' are ``nn.Linear``
    ``[out, in]``: the same matrix once the two unit dimensions go."""
    if target.startswith("mid_block.attentions.0.to_") and target.endswith(".weight") and tensor.ndim == 4:
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


def _target_shapes(config: dict) -> dict[str, torch.Size]:
    """Names and shapes of a ``TemporalDecoder`` of ``config``, built on ``meta`` so nothing is allocated."""
    from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import TemporalDecoder

    with torch.device("meta"):
        return {k: v.shape for k, v in TemporalDecoder(**config).state_dict().items()}


def _mapping_report(unused: list[str], unfilled: list[str], clashes: list[str], shapes: list[str]) -> str:
    parts = [f"{title} ({len(keys)}): {', '.join(keys)}" for title, keys in (
        ("ldm keys with no diffusers place", unused), ("diffusers keys left unfilled", unfilled),
        ("diffusers keys filled twice", clashes), ("shape mismatches", shapes)) if keys]
    return "The ldm VideoDecoder weights do not map onto diffusers' TemporalDecoder. " + "; ".join(parts)


def diffusers_temporal_decoder_state_dict(decoder_sd: dict[str, torch.Tensor],
                                          config: dict | None = None) -> dict[str, torch.Tensor]:
    """ldm ``VideoDecoder`` weights (keys relative to ``decoder.``) renamed for diffusers' ``TemporalDecoder``.

    Every source key must land on exactly one target key and every target key must be filled, with
    matching shapes: a partial mapping would leave random tensors in the official side of a benchmark
    and make its comparison meaningless. ``config`` defaults to the one read off the weights.
    Raises ``DecoderMappingError`` listing every leftover.
    """
    config = temporal_decoder_config(decoder_sd) if config is None else dict(config)
    expected = _target_shapes(config)
    n_levels = len(config["block_out_channels"])
    mapped: dict[str, torch.Tensor] = {}
    unused, clashes, shapes = [], [], []
    for key, tensor in decoder_sd.items():
        target = _target_name(key, n_levels)
        if target is None or target not in expected:
            unused.append(key)
            continue
        if target in mapped:
            clashes.append(f"{target} (again from {key})")
            continue
        tensor = _as_linear(target, tensor)
        if tensor.shape != expected[target]:
            shapes.append(f"{key} {tuple(tensor.shape)} -> {target} {tuple(expected[target])}")
        mapped[target] = tensor
    unfilled = sorted(set(expected) - set(mapped))
    if unused or unfilled or clashes or shapes:
        raise DecoderMappingError(_mapping_report(sorted(unused), unfilled, clashes, shapes))
    return mapped


def diffusers_temporal_decoder(decoder_sd: dict[str, torch.Tensor], config: dict | None = None) -> torch.nn.Module:
    """diffusers' ``TemporalDecoder`` holding the ldm decoder's weights, in eval mode.

    Call it as the official pipeline does: ``decoder(z, image_only_indicator=torch.zeros(b, n), num_frames=n)``
    with ``z [b*n, C, h, w]`` (the indicator only sets the frame count for the ``learned`` blend).
    """
    from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import TemporalDecoder

    config = temporal_decoder_config(decoder_sd) if config is None else dict(config)
    weights = diffusers_temporal_decoder_state_dict(decoder_sd, config)
    decoder = TemporalDecoder(**config)
    decoder.load_state_dict(weights, strict=True)
    return decoder.eval()


def diffusers_temporal_vae(decoder_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A whole ``AutoencoderKLTemporalDecoder`` (SVD's diffusers VAE class) whose decoder holds the ldm
    weights, for code that calls ``vae.decode(z, num_frames=n)`` like the official pipeline.

    The encoder and ``quant_conv`` keep diffusers' random init: only decoding is compared. There is no
    ``post_quant_conv`` to fill on either side, so ``decode`` feeds ``z`` straight to the decoder, as
    ComfyUI's ``AutoencodingEngine.decode`` does (scaling by ``scaling_factor`` is the caller's, on both).
    """
    from diffusers import AutoencoderKLTemporalDecoder

    config = temporal_decoder_config(decoder_sd)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=config["out_channels"], out_channels=config["out_channels"],
        down_block_types=("DownEncoderBlock2D",) * len(config["block_out_channels"]),
        block_out_channels=config["block_out_channels"], layers_per_block=config["layers_per_block"],
        latent_channels=config["in_channels"])
    vae.decoder.load_state_dict(diffusers_temporal_decoder_state_dict(decoder_sd, config), strict=True)
    return vae.eval()
