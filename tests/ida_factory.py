"""Random-weight checkpoints in the official layouts, for tests and the offline demo.

* ``write_stableanimator_set``: ``unet.pth``, ``pose_net.pth``, ``face_encoder.pth``,
  ``glintr100_torch.pth`` with exactly the official key names (checked against
  ``tests/data/official_checkpoint_keys.json`` by the tests) and small channel counts.
  The UNet keeps the official block structure (4 levels, 2 layers per block, 16 ID-adapter pairs)
  and the official 1024-wide cross-attention, so it accepts SVD-xt's real CLIP-H image embedding.
* ``write_svd_xt``: a checkpoint that ComfyUI's own ImageOnlyCheckpointLoader accepts. ComfyUI builds
  SVD's VAE and CLIP-H from fixed configs, so those two are **real size** (random fp16 weights);
  the UNet is the smallest one ComfyUI still detects as SVD img2vid (320 channels on every level).

Every tensor is drawn from a seeded generator, norms and biases included, so that swapping two
same-shaped tensors in a conversion changes the outputs.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

FACTORY_VERSION = "1"

TINY_UNET = dict(
    sample_size=8,
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(64, 128, 256, 256),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    num_attention_heads=(1, 2, 4, 4),
    num_frames=16,
)
TINY_POSE_NET = [(3, 3, 3), (3, 16, 4), (16, 16, 3), (16, 32, 4), (32, 32, 3), (32, 64, 4), (64, 64, 3), (64, 128, 3)]
TINY_FACE_ENCODER = dict(id_dim=512, id_hidden=64, cross_dim=1024, num_tokens=4, clip_dim=1024, depth=4, inner=64, ff_hidden=64)
TINY_IRESNET = dict(blocks=[3, 13, 30, 3], widths=[8, 8, 16, 16], embedding_dim=512, feature_hw=7)


def randomize_(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Fill every floating tensor in place with seeded values of a sensible scale, drawn on the
    tensors' device (real-size weights are made on the GPU that runs them, in seconds)."""
    device = next(iter(sd.values())).device if sd else torch.device("cpu")
    g = torch.Generator(device=device).manual_seed(seed)
    for name, t in sd.items():
        if not t.is_floating_point():
            continue
        draw = dict(generator=g, device=t.device)
        if name.endswith("running_var"):
            val = torch.rand(t.shape, **draw) + 0.5
        elif t.ndim <= 1 and ("norm" in name or "bn" in name or name.endswith(("features.weight", "ln.weight"))) and name.endswith("weight"):
            val = 1.0 + 0.1 * torch.randn(t.shape, **draw)
        elif t.ndim <= 1:
            val = 0.1 * torch.randn(t.shape, **draw)
        else:
            fan_in = max(1, t[0].numel())
            val = torch.randn(t.shape, **draw) / math.sqrt(fan_in)
        t.copy_(val.to(t.dtype))
    return sd


def tiny_unet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """diffusers UNetSpatioTemporalConditionModel keys + the 32 ID-adapter tensors, tiny sizes."""
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel(**TINY_UNET)
    sd = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    for name, module in unet.named_modules():
        if name.endswith("transformer_blocks.0.attn2") and "temporal" not in name:
            inner = module.to_k.weight.shape[0]
            for kv in ("k", "v"):
                sd[f"{name}.processor.id_to_{kv}.weight"] = torch.empty(inner, TINY_UNET["cross_attention_dim"])
    return randomize_(sd, seed)


def tiny_pose_net_state_dict(seed: int = 1, out_channels: int = TINY_UNET["block_out_channels"][0]):
    sd = {}
    for i, (cin, cout, k) in enumerate(TINY_POSE_NET):
        sd[f"conv_layers.{2 * i}.weight"] = torch.empty(cout, cin, k, k)
        sd[f"conv_layers.{2 * i}.bias"] = torch.empty(cout)
    sd["final_proj.weight"] = torch.empty(out_channels, TINY_POSE_NET[-1][1], 1, 1)
    sd["final_proj.bias"] = torch.empty(out_channels)
    sd["scale"] = torch.empty(1)
    randomize_(sd, seed)
    sd["scale"].fill_(2.0)
    return sd


def tiny_face_encoder_state_dict(seed: int = 2):
    c = TINY_FACE_ENCODER
    sd = {
        "proj.0.weight": torch.empty(c["id_hidden"], c["id_dim"]), "proj.0.bias": torch.empty(c["id_hidden"]),
        "proj.2.weight": torch.empty(c["cross_dim"] * c["num_tokens"], c["id_hidden"]),
        "proj.2.bias": torch.empty(c["cross_dim"] * c["num_tokens"]),
        "norm.weight": torch.empty(c["cross_dim"]), "norm.bias": torch.empty(c["cross_dim"]),
        "fusion_model.proj_in.weight": torch.empty(c["cross_dim"], c["clip_dim"]),
        "fusion_model.proj_in.bias": torch.empty(c["cross_dim"]),
        "fusion_model.proj_out.weight": torch.empty(c["cross_dim"], c["cross_dim"]),
        "fusion_model.proj_out.bias": torch.empty(c["cross_dim"]),
        "fusion_model.norm_out.weight": torch.empty(c["cross_dim"]),
        "fusion_model.norm_out.bias": torch.empty(c["cross_dim"]),
    }
    d, inner, ff = c["cross_dim"], c["inner"], c["ff_hidden"]
    for l in range(c["depth"]):
        p = f"fusion_model.layers.{l}"
        for n in ("norm1", "norm2"):
            sd[f"{p}.0.{n}.weight"], sd[f"{p}.0.{n}.bias"] = torch.empty(d), torch.empty(d)
        sd[f"{p}.0.to_q.weight"] = torch.empty(inner, d)
        sd[f"{p}.0.to_kv.weight"] = torch.empty(2 * inner, d)
        sd[f"{p}.0.to_out.weight"] = torch.empty(d, inner)
        sd[f"{p}.1.0.weight"], sd[f"{p}.1.0.bias"] = torch.empty(d), torch.empty(d)
        sd[f"{p}.1.1.weight"] = torch.empty(ff, d)
        sd[f"{p}.1.3.weight"] = torch.empty(d, ff)
    return randomize_(sd, seed)


def tiny_iresnet_state_dict(seed: int = 3):
    c = TINY_IRESNET
    sd = {}

    def bn(prefix, n):
        sd.update({f"{prefix}.weight": torch.empty(n), f"{prefix}.bias": torch.empty(n),
                   f"{prefix}.running_mean": torch.empty(n), f"{prefix}.running_var": torch.empty(n),
                   f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long)})

    w0 = c["widths"][0]
    sd["conv1.weight"] = torch.empty(w0, 3, 3, 3)
    bn("bn1", w0)
    sd["prelu.weight"] = torch.empty(w0)
    inplanes = w0
    for i, (n, planes) in enumerate(zip(c["blocks"], c["widths"]), start=1):
        for b in range(n):
            p = f"layer{i}.{b}"
            cin = inplanes if b == 0 else planes
            bn(f"{p}.bn1", cin)
            sd[f"{p}.conv1.weight"] = torch.empty(planes, cin, 3, 3)
            bn(f"{p}.bn2", planes)
            sd[f"{p}.prelu.weight"] = torch.empty(planes)
            sd[f"{p}.conv2.weight"] = torch.empty(planes, planes, 3, 3)
            bn(f"{p}.bn3", planes)
            if b == 0:
                sd[f"{p}.downsample.0.weight"] = torch.empty(planes, cin, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    bn("bn2", inplanes)
    sd["fc.weight"] = torch.empty(c["embedding_dim"], inplanes * c["feature_hw"] ** 2)
    sd["fc.bias"] = torch.empty(c["embedding_dim"])
    bn("features", c["embedding_dim"])
    randomize_(sd, seed)
    for k in [k for k in sd if k.endswith("prelu.weight")]:
        sd[k].fill_(0.25)
    return sd


def write_stableanimator_set(folder, seed: int = 0) -> dict[str, Path]:
    """Write the four official-layout ``.pth`` files into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "unet.pth": tiny_unet_state_dict(seed),
        "pose_net.pth": tiny_pose_net_state_dict(seed + 1),
        "face_encoder.pth": tiny_face_encoder_state_dict(seed + 2),
        "glintr100_torch.pth": tiny_iresnet_state_dict(seed + 3),
    }
    out = {}
    for name, sd in files.items():
        torch.save(sd, folder / name)
        out[name] = folder / name
    return out


# --- SVD-xt base -------------------------------------------------------------------------------

SVD_MIN_UNET = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    num_classes="sequential", adm_in_channels=768, in_channels=8, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 1, 1, 1], transformer_depth_middle=1,
    use_linear_in_transformer=True, context_dim=1024, num_head_channels=64, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_temporal_attention=True, use_temporal_resblock=True, extra_ff_mix_layer=True, use_spatial_context=True,
    merge_strategy="learned_with_images", merge_factor=0.0, video_kernel_size=[3, 1, 1], disable_temporal_crossattention=False,
    max_ddpm_temb_period=10000, num_heads=-1,
)
VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _meta_shapes_svd_xt() -> dict[str, torch.Size]:
    """Tensor names and shapes of an SVD-xt checkpoint, read off ComfyUI's own modules on ``meta``."""
    import comfy.clip_model
    import comfy.ldm.models.autoencoder as ae
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops
    import comfy.clip_vision

    shapes = {}
    unet = oai.UNetModel(**SVD_MIN_UNET, device="meta", operations=comfy.ops.disable_weight_init)
    shapes.update({f"model.diffusion_model.{k}": v.shape for k, v in unet.state_dict().items()})
    dec = dict(VAE_CONFIG, video_kernel_size=[3, 1, 1], alpha=0.0)
    with torch.device("meta"):
        vae = ae.AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": VAE_CONFIG},
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": dec})
    shapes.update({f"first_stage_model.{k}": v.shape for k, v in vae.state_dict().items()})
    cfg = json.load(open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")))
    clip = comfy.clip_model.CLIPVisionModelProjection(cfg, torch.float16, "meta", comfy.ops.manual_cast)
    prefix = "conditioner.embedders.0.open_clip.model.visual."
    shapes.update({prefix + k: v.shape for k, v in clip.state_dict().items()})
    return shapes


def write_svd_xt(path, seed: int = 7) -> Path:
    """Random fp16 SVD-xt checkpoint (real-size VAE and CLIP-H, minimal 320-channel UNet)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = _meta_shapes_svd_xt()
    sd = {k: torch.empty(s, dtype=torch.float16) for k, s in shapes.items()}
    randomize_(sd, seed)
    tmp = path.with_suffix(".partial")
    save_file(sd, str(tmp), metadata={"ida_test_factory": FACTORY_VERSION})
    os.replace(tmp, path)
    return path


def cached_svd_xt(cache_dir) -> Path:
    """The SVD-xt test checkpoint, built once per factory version (about 1.5 GB)."""
    return write_svd_xt(Path(cache_dir) / f"svd_xt_random_v{FACTORY_VERSION}.safetensors")


def write_video(path, frames, fps: int = 8, audio_rate: int | None = None) -> Path:
    """``frames [F, H, W, 3]`` uint8 -> an MPEG-4 file ComfyUI's Load Video reads.

    With ``audio_rate``, an AAC stereo track of the video's length: a 440 Hz tone whose amplitude rises
    linearly from 0 to 0.8, so a cut of the sound can be located by its loudness (see ``ramp_amplitude``).
    """
    import av
    import numpy as np

    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 20_000_000   # near-lossless for these small frames, so tests can read marks back
        sound = out.add_stream("aac", rate=audio_rate, layout="stereo") if audio_rate else None
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            duration = len(frames) / fps
            t = np.arange(int(duration * audio_rate)) / audio_rate
            wave = (ramp_amplitude(t, duration) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            block = 1024
            for i in range(0, len(wave), block):
                part = np.ascontiguousarray(np.stack([wave[i:i + block]] * 2))
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = audio_rate, i
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


def ramp_amplitude(t, duration: float):
    """The tone's amplitude at time ``t`` (seconds) in a clip of ``duration`` seconds."""
    return 0.8 * t / duration


def driving_frames(count: int = 20, size=(96, 128)):
    """A figure-like blob walking right, as RGB uint8 frames."""
    import numpy as np

    h, w = size
    frames = np.zeros((count, h, w, 3), np.uint8) + 25
    for i in range(count):
        x = 10 + i * (w - 40) // max(1, count - 1)
        frames[i, 20:90, x:x + 20] = (60, 120, 200)
        frames[i, 8:20, x + 4:x + 16] = (220, 180, 150)
    return frames


# The smallest decoder both classes build alike with SVD's 8x upscale (four levels): GroupNorm's 32 groups
# need widths of 32 or more, and diffusers' mid block only matches ldm's fixed two resnets at
# layers_per_block = num_res_blocks = 2.
TINY_VIDEO_DECODER = dict(ch=32, out_ch=3, ch_mult=[1, 1, 2, 2], num_res_blocks=2, attn_resolutions=[], dropout=0.0,
                          in_channels=3, resolution=64, z_channels=4, double_z=True, video_kernel_size=[3, 1, 1], alpha=0.0)


def tiny_video_decoder_state_dict(seed: int = 11, config: dict = TINY_VIDEO_DECODER) -> dict[str, torch.Tensor]:
    """A ``VideoDecoder`` state dict of ``config`` with every tensor random, norms and blend factors too,
    so a swapped, transposed or skipped tensor shows in the output (default inits hide many: unit norms,
    zero biases, mix_factor 0)."""
    from comfy.ldm.modules.temporal_ae import VideoDecoder

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VideoDecoder(**config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("mix_factor"):
            val = 2.0 * torch.randn(shape, generator=g)   # blends far from 50/50, both ways
        elif len(shape) == 1 and name.endswith("weight"):   # norm scales
            val = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            val = 0.1 * torch.randn(shape, generator=g)
        else:
            val = torch.randn(shape, generator=g) / shape[1:].numel() ** 0.5
        sd[name] = val
    return sd


class DecoderOnlyVAE:
    """Stands in for ComfyUI's VAE object where only its decoder matters (``fresh_decoder`` reads
    ``get_sd()`` alone): a tiny temporal decoder, which ComfyUI's VAE class cannot hold (it fixes SVD's size)."""

    def __init__(self, decoder_sd):
        self._sd = {f"decoder.{k}": v for k, v in decoder_sd.items()}

    def get_sd(self):
        return self._sd
