"""StableAnimator ``unet.pth`` (diffusers SVD layout) -> ComfyUI's native SVD UNet layout.

The official UNet is a diffusers ``UNetSpatioTemporalConditionModel`` state dict plus one ID-adapter
pair (``attn2.processor.id_to_k/id_to_v``) per spatial cross-attention. ComfyUI ships no
diffusers->SVD key map, so this module writes one. It is a pure function of the key names and the
block structure read from the keys, so any size of model (the official one or a tiny test one)
converts the same way.

ComfyUI's SVD UNet (``openaimodel.UNetModel`` with video blocks) numbers its blocks
``input_blocks.0`` (conv_in), then ``layers_per_block`` resnet(+attention) entries per level and a
downsampler entry between levels; ``middle_block.{0,1,2}``; and ``layers_per_block + 1`` entries per
level in ``output_blocks``, the last of each level (but the final one) carrying the upsampler.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .checkpoint import CheckpointError, describe_key_mismatch

# diffusers resnet sub-module -> ComfyUI ResBlock sub-module
_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

_ID_KEY = re.compile(
    r"^(?P<attn>.+\.attentions\.\d+)\.transformer_blocks\.0\.attn2\.processor\.id_to_(?P<kv>[kv])\.weight$"
)


@dataclass(frozen=True)
class UNetLayout:
    """Block structure of a diffusers SVD UNet, read from its keys."""

    num_levels: int
    layers_per_block: int
    down_has_attention: tuple[bool, ...]
    up_has_attention: tuple[bool, ...]

    @classmethod
    def from_keys(cls, keys) -> "UNetLayout":
        down_res = _indices(keys, r"^down_blocks\.(\d+)\.resnets\.(\d+)\.")
        if not down_res:
            raise CheckpointError(
                "No 'down_blocks.N.resnets.M' tensors: this is not a diffusers SVD UNet state dict."
            )
        num_levels = 1 + max(b for b, _ in down_res)
        layers = 1 + max(r for _, r in down_res)
        down_attn = {b for b, _ in _indices(keys, r"^down_blocks\.(\d+)\.attentions\.(\d+)\.")}
        up_attn = {b for b, _ in _indices(keys, r"^up_blocks\.(\d+)\.attentions\.(\d+)\.")}
        return cls(
            num_levels=num_levels,
            layers_per_block=layers,
            down_has_attention=tuple(b in down_attn for b in range(num_levels)),
            up_has_attention=tuple(b in up_attn for b in range(num_levels)),
        )


def _indices(keys, pattern: str) -> set[tuple[int, int]]:
    rx = re.compile(pattern)
    out = set()
    for k in keys:
        m = rx.match(k)
        if m:
            out.add((int(m.group(1)), int(m.group(2))))
    return out


@dataclass
class ConvertedUNet:
    """Result of :func:`convert_stableanimator_unet`.

    ``unet``: ComfyUI-layout UNet tensors (no ``diffusion_model.`` prefix).
    ``id_adapter``: ``{(block_name, block_number): {"to_k": W_k, "to_v": W_v}}`` with ComfyUI's
    attention patch keys, e.g. ``("input", 1)``, ``("middle", 0)``, ``("output", 3)``;
    ``W`` has shape ``[C_block, cross_attention_dim]``.
    ``key_map``: original key -> where it went (for reports and tests).
    """

    unet: dict[str, torch.Tensor]
    id_adapter: dict[tuple[str, int], dict[str, torch.Tensor]]
    layout: UNetLayout
    key_map: dict[str, str] = field(default_factory=dict)


def _map_resnet(rest: str) -> str | None:
    if rest == "time_mixer.mix_factor":
        return rest
    for branch, prefix in (("spatial_res_block.", ""), ("temporal_res_block.", "time_stack.")):
        if rest.startswith(branch):
            sub, _, param = rest[len(branch):].partition(".")
            if sub in _RESNET_PARTS:
                return f"{prefix}{_RESNET_PARTS[sub]}.{param}"
    return None


def _map_attention(rest: str) -> str | None:
    if rest.startswith(("norm.", "proj_in.", "proj_out.", "transformer_blocks.0.")):
        if ".processor." in rest:
            return None
        return rest
    if rest.startswith("temporal_transformer_blocks.0."):
        return "time_stack.0." + rest[len("temporal_transformer_blocks.0."):]
    if rest == "time_mixer.mix_factor":
        return rest
    m = re.match(r"^time_pos_embed\.linear_([12])\.(weight|bias)$", rest)
    if m:
        return f"time_pos_embed.{0 if m.group(1) == '1' else 2}.{m.group(2)}"
    return None


def diffusers_to_comfy_key(key: str, layout: UNetLayout) -> str | None:
    """Map one diffusers SVD UNet key to ComfyUI's name, or ``None`` if it has no place there."""
    for src, dst in _TOP_LEVEL.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    per_level = layout.layers_per_block + 1
    m = re.match(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        level, kind, idx, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        n = 1 + level * per_level + idx
        sub = _map_resnet(rest) if kind == "resnets" else _map_attention(rest)
        return None if sub is None else f"input_blocks.{n}.{0 if kind == 'resnets' else 1}.{sub}"
    m = re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$", key)
    if m:
        n = 1 + int(m.group(1)) * per_level + layout.layers_per_block
        return f"input_blocks.{n}.0.op.{m.group(2)}"
    m = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        n = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}.get((kind, idx))
        sub = _map_resnet(rest) if kind == "resnets" else _map_attention(rest)
        return None if n is None or sub is None else f"middle_block.{n}.{sub}"
    m = re.match(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        level, kind, idx, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        n = level * per_level + idx
        sub = _map_resnet(rest) if kind == "resnets" else _map_attention(rest)
        return None if sub is None else f"output_blocks.{n}.{0 if kind == 'resnets' else 1}.{sub}"
    m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$", key)
    if m:
        level = int(m.group(1))
        n = level * per_level + layout.layers_per_block
        slot = 2 if layout.up_has_attention[level] else 1
        return f"output_blocks.{n}.{slot}.conv.{m.group(2)}"
    return None


def comfy_attention_block(attn_prefix: str, layout: UNetLayout) -> tuple[str, int]:
    """``down_blocks.0.attentions.1`` -> ``("input", 2)``: the key ComfyUI's attn2 patches use."""
    per_level = layout.layers_per_block + 1
    m = re.match(r"^down_blocks\.(\d+)\.attentions\.(\d+)$", attn_prefix)
    if m:
        return ("input", 1 + int(m.group(1)) * per_level + int(m.group(2)))
    if attn_prefix == "mid_block.attentions.0":
        return ("middle", 0)
    m = re.match(r"^up_blocks\.(\d+)\.attentions\.(\d+)$", attn_prefix)
    if m:
        return ("output", int(m.group(1)) * per_level + int(m.group(2)))
    raise CheckpointError(f"ID-adapter tensors under an unknown attention block: {attn_prefix}")


def split_id_adapter(sd: dict[str, torch.Tensor], layout: UNetLayout):
    """Separate the ID-adapter processor tensors from the UNet's own tensors."""
    unet, pairs = {}, {}
    for k, v in sd.items():
        m = _ID_KEY.match(k)
        if m:
            block = comfy_attention_block(m.group("attn"), layout)
            pairs.setdefault(block, {})[f"to_{m.group('kv')}"] = v
        else:
            unet[k] = v
    incomplete = sorted(b for b, kv in pairs.items() if set(kv) != {"to_k", "to_v"})
    if incomplete:
        raise CheckpointError(f"ID adapter has id_to_k without id_to_v (or the reverse) at {incomplete}.")
    return unet, pairs


def spatial_attention_blocks(layout: UNetLayout) -> list[tuple[str, int]]:
    """Every spatial cross-attention of the UNet, as ComfyUI attn2 patch keys."""
    per_level = layout.layers_per_block + 1
    blocks = []
    for level, has in enumerate(layout.down_has_attention):
        if has:
            blocks += [("input", 1 + level * per_level + j) for j in range(layout.layers_per_block)]
    blocks.append(("middle", 0))
    for level, has in enumerate(layout.up_has_attention):
        if has:
            blocks += [("output", level * per_level + j) for j in range(per_level)]
    return blocks


def convert_stableanimator_unet(sd: dict[str, torch.Tensor], source: str = "unet") -> ConvertedUNet:
    """Convert the official ``unet.pth`` state dict; every tensor is placed or the call fails."""
    if any(k.startswith(("input_blocks.", "model.diffusion_model.", "diffusion_model.")) for k in sd):
        raise CheckpointError(
            f"{source} is already in ComfyUI/SGM layout (e.g. an svd_xt checkpoint); the Animation UNet "
            "slot wants StableAnimator's Animation/unet.pth (diffusers layout with ID-adapter tensors)."
        )
    if "conv_layers.0.weight" in sd or "fusion_model.proj_in.weight" in sd:
        raise CheckpointError(
            f"{source} is a PoseNet or Face Encoder file, not the Animation UNet; pick unet.pth here."
        )
    layout = UNetLayout.from_keys(sd)
    unet_sd, id_adapter = split_id_adapter(sd, layout)
    if not id_adapter:
        raise CheckpointError(
            f"{source} is a plain SVD UNet: it has no 'attn2.processor.id_to_k/id_to_v' ID-adapter "
            "tensors. Use StableAnimator's Animation/unet.pth."
        )
    expected_blocks = set(spatial_attention_blocks(layout))
    if set(id_adapter) != expected_blocks:
        missing = sorted(expected_blocks - set(id_adapter))
        extra = sorted(set(id_adapter) - expected_blocks)
        raise CheckpointError(
            f"{source}: ID-adapter tensors must sit on every spatial cross-attention; missing at "
            f"{missing}, unexpected at {extra}. The file is truncated or from another model."
        )
    out, key_map, unplaced = {}, {}, []
    for k, v in unet_sd.items():
        new = diffusers_to_comfy_key(k, layout)
        if new is None:
            unplaced.append(k)
            continue
        if new in out:
            raise CheckpointError(f"{source}: two tensors map to {new} (second: {k}).")
        out[new] = v
        key_map[k] = new
    if unplaced:
        raise CheckpointError(describe_key_mismatch("Animation UNet", source, [], sorted(unplaced)))
    return ConvertedUNet(unet=out, id_adapter=id_adapter, layout=layout, key_map=key_map)


def comfy_unet_config_hints(converted: ConvertedUNet) -> dict:
    """Sizes ComfyUI cannot read from the keys alone but the adapter stages need."""
    k = next(iter(converted.id_adapter.values()))["to_k"]
    return {"cross_attention_dim": int(k.shape[1]), "model_channels": int(converted.unet["input_blocks.0.0.weight"].shape[0])}
