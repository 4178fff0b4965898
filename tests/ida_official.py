"""StableAnimator's official inference re-stated on diffusers, independently of the pack's code: the
reference of the trajectory parity test (tiny weights, fp32, CPU) and the baseline of the GPU
benchmark (real-size weights, fp16, SDPA).

The pieces: the distribution-aware ID attention processor, temporal cross-attention on the CLIP token
only, PoseNet added after conv_in on the conditional pass, windows holding frame 0 with triangular
weights, two batch-1 UNet passes (uncond, cond) per window, per-frame linear CFG on the v-prediction,
the Euler update on SVD's Karras sigmas, and the HJB loop of ``inference_op.py`` (per refined step:
Adam on the predicted clean latent through a full-frame temporal decode in fp32 with gradient
checkpointing, all frames' graphs held, backward with ``retain_graph``).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

ARCFACE_SIZE = 112
SD_SCALE = 0.18215


class OfficialIDAttention:
    """StableAnimator's AnimationIDAttnNormalizedProcessor, re-stated."""

    def __init__(self, id_k, id_v):
        self.id_k, self.id_v = id_k, id_v

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        txt, ip = encoder_hidden_states[:, :-4], encoder_hidden_states[:, -4:]
        q = attn.to_q(hidden_states)

        def attend(k, v):
            b, heads = q.shape[0], attn.heads
            split = lambda t: t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)
            out = F.scaled_dot_product_attention(split(q), split(k), split(v))
            return out.transpose(1, 2).reshape(b, -1, q.shape[-1])

        a = attend(attn.to_k(txt), attn.to_v(txt))
        ai = attend(ip @ self.id_k.T, ip @ self.id_v.T)
        mu_a, sd_a = a.mean(dim=(1, 2), keepdim=True), a.std(dim=(1, 2), keepdim=True)
        mu_i, sd_i = ai.mean(dim=(1, 2), keepdim=True), ai.std(dim=(1, 2), keepdim=True)
        out = a + (ai - mu_i) * sd_a / (sd_i + 1e-5) + mu_a
        return attn.to_out[1](attn.to_out[0](out))


class TemporalCLIPOnly:
    """The official temporal blocks see only the CLIP token of the 5-token context."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kw):
        return self.inner(attn, hidden_states, encoder_hidden_states[:, :-4], **kw)


def official_windows(frames: int, tile: int = 16, overlap: int = 4) -> list[list[int]]:
    idx = [[0, *range(i + 1, min(i + tile, frames))] for i in range(0, frames - tile + 1, tile - overlap)]
    if idx[-1][-1] < frames - 1:
        idx.append([0, *range(frames - tile + 1, frames)])
    return idx


def window_weights(tile: int = 16) -> list[float]:
    return [min((k + 0.5) * 2 / tile, 2 - (k + 0.5) * 2 / tile) for k in range(tile)]


def official_unet(weights: dict, config: dict | None = None, device="cpu", dtype=torch.float32):
    """diffusers' UNetSpatioTemporalConditionModel (SVD-xt's config unless ``config``) holding the
    official ``unet.pth`` tensors, with the official attention processors."""
    from diffusers import UNetSpatioTemporalConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**(config or {}))
    unet.load_state_dict({k: v for k, v in weights.items() if ".processor." not in k}, strict=True, assign=True)
    unet = unet.to(device, dtype)
    procs = {}
    for name in unet.attn_processors:
        layer = name[: -len(".processor")]
        if "temporal_transformer_blocks" not in name and name.endswith("attn2.processor"):
            procs[name] = OfficialIDAttention(weights[layer + ".processor.id_to_k.weight"].to(device, dtype),
                                              weights[layer + ".processor.id_to_v.weight"].to(device, dtype))
        elif name.endswith("attn2.processor"):
            procs[name] = TemporalCLIPOnly()
        else:
            procs[name] = AttnProcessor2_0()
    unet.set_attn_processor(procs)
    return unet.eval().requires_grad_(False)


def official_posenet(pose_sd: dict, device="cpu", dtype=torch.float32):
    """PoseNet, re-stated from the published convolution table; input images in [0, 1] ``[n, 3, h, w]``."""
    sd = {k: v.to(device, dtype) for k, v in pose_sd.items()}

    def posenet(images):
        x = images * 2 - 1
        for idx, stride in [(0, 1), (2, 2), (4, 1), (6, 2), (8, 1), (10, 2), (12, 1), (14, 1)]:
            x = F.silu(F.conv2d(x, sd[f"conv_layers.{idx}.weight"], sd[f"conv_layers.{idx}.bias"], stride=stride, padding=1))
        return F.conv2d(x, sd["final_proj.weight"], sd["final_proj.bias"]) * sd["scale"]

    return posenet


def official_sample(unet, posenet, pose_images, clip, face, ref_latent, noise, sigmas, *, min_cfg: float, max_cfg: float,
                    fps: int, motion: int, aug: float, refine=None, on_step=None):
    """The official sampling loop; ``noise`` and ``ref_latent`` are SD-scaled latents ``[F, 4, h, w]`` /
    ``[1, 4, h, w]``, ``pose_images [F, H, W, 3]`` in [0, 1]. ``refine(x0, step, steps) -> x0`` is the
    HJB hook of the Pro scheduler. Returns the final SD-scaled latents."""
    frames, dev, dt = noise.shape[0], noise.device, next(unet.parameters()).dtype
    poses = pose_images.movedim(-1, 1).to(dev, dt)
    added = torch.tensor([[fps - 1, motion, aug]], dtype=dt, device=dev)
    ctx_c = torch.cat([clip, face], 1).to(dev, dt)
    ctx_u = torch.zeros_like(ctx_c)
    g = torch.linspace(min_cfg, max_cfg, frames, device=dev).view(frames, 1, 1, 1)
    wins, tri = official_windows(frames), window_weights()
    pose_add = {}
    hook = unet.conv_in.register_forward_hook(lambda mod, inp, out: out + pose_add["x"] if "x" in pose_add else out)
    latents = noise.float() * math.sqrt(float(sigmas[0]) ** 2 + 1)
    steps = len(sigmas) - 1
    try:
        for i in range(steps):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            c_in, t = 1 / math.sqrt(s * s + 1), torch.tensor(0.25 * math.log(s), device=dev)
            pred = torch.zeros_like(latents)
            cnt = torch.zeros(frames, 1, 1, 1, device=dev)
            with torch.no_grad():
                for idx in wins:
                    x = (latents[idx] * c_in).to(dt)
                    pose_add.pop("x", None)
                    v_u = unet(torch.cat([x, torch.zeros_like(x)], 1)[None], t, ctx_u, added).sample[0].float()
                    pose_add["x"] = posenet(poses[idx])
                    v_c = unet(torch.cat([x, ref_latent.to(dev, dt).expand_as(x)], 1)[None], t, ctx_c, added).sample[0].float()
                    w = torch.tensor(tri[: len(idx)], device=dev).view(-1, 1, 1, 1)
                    pred[idx] += w * (v_u + g[idx] * (v_c - v_u))
                    cnt[idx] += w
            v = pred / cnt
            x0 = v * (-s / math.sqrt(s * s + 1)) + latents / (s * s + 1)
            if refine is not None:
                x0 = refine(x0, i, steps)
            latents = latents + (latents - x0) / s * (s_next - s)
            if on_step is not None:
                on_step(i)
    finally:
        hook.remove()
    return latents


class OfficialHJB:
    """``inference_op.py``'s refinement, re-stated: at steps ``start..end`` (0-based, inclusive) Adam with
    ``lr = 0.1 (1 - i/steps)`` on ``z = x0`` for ``iterations`` steps; each decodes every frame with
    gradients (chunks of ``chunk`` frames through the temporal decoder, gradient checkpointing on),
    clamps to [-1, 1], cuts each frame's face box, resizes it bilinearly to 112x112, and takes
    ``mean |1 - cos(ArcFace(face), e_ref)|``; ``backward(retain_graph=True)``. Everything in fp32.

    ``decode(z, num_frames) -> pixels`` takes unscaled latents (the official ``vae.decode``);
    ``boxes``: per-frame ``(x1, y1, x2, y2)`` pixel boxes. ``max_steps`` stops refining after that many
    refined steps (the benchmark measures a few and extrapolates); ``seconds`` collects each step's time.
    """

    def __init__(self, decode, arcface, ref_emb, boxes, *, start=0, end=20, iterations=3, chunk=4, max_steps=None):
        self.decode, self.arcface, self.ref = decode, arcface, ref_emb
        self.boxes, self.start, self.end = boxes, start, end
        self.iterations, self.chunk, self.max_steps = iterations, chunk, max_steps
        self.seconds: list[float] = []

    def loss(self, z):
        frames = z.shape[0]
        pixels = torch.cat([self.decode(z[c:c + self.chunk] / SD_SCALE, min(self.chunk, frames - c))
                            for c in range(0, frames, self.chunk)]).clamp(-1, 1)
        crops = torch.cat([F.interpolate(pixels[k:k + 1, :, y1:y2, x1:x2], size=(ARCFACE_SIZE, ARCFACE_SIZE),
                                         mode="bilinear", align_corners=False)
                           for k, (x1, y1, x2, y2) in enumerate(self.boxes)])
        emb = self.arcface(crops)
        return (1 - F.cosine_similarity(emb, self.ref.expand_as(emb))).abs().mean()

    def __call__(self, x0, step: int, steps: int):
        done = len(self.seconds)
        if not self.start <= step <= self.end or (self.max_steps is not None and done >= self.max_steps):
            return x0
        if x0.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.enable_grad():
            z = x0.detach().float().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=0.1 * (1 - step / steps))
            for _ in range(self.iterations):
                loss = self.loss(z)
                opt.zero_grad()
                loss.backward(retain_graph=True)
                opt.step()
        out = z.detach().to(x0.dtype)
        if x0.is_cuda:
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - t)
        return out
