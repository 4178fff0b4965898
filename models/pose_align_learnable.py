"""Learnable SVD-guided pose alignment (StableAnimator++'s idea, reconstructed).

The closed-form weighted Umeyama fit (``pose_align.weighted_umeyama``) is the guidance: its
transform is applied first and its parameters are fed in as a token. A small transformer reads the
reference joints and the guided driving joints (per-joint mean/spread over the fitting frames) as
tokens and predicts a residual similarity ``(Δlog s, Δθ, Δt)`` in a canonical frame (reference
centroid, reference RMS size), composed after the guidance. The head is zero-initialised, so an
untrained model is exactly the closed-form fit.

Checkpoint format (``.safetensors``): the module's ``state_dict`` plus metadata
``{"format": "ida_learnable_align", "version": "1", "config": <json of LearnableAligner kwargs>}``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .body2d import NUM_JOINTS, pose_keypoints, random_angles, random_proportions
from .pose_align import STABLE_JOINTS, VISIBLE, Transform2D, fit_official, weighted_umeyama

FORMAT = "ida_learnable_align"


class LearnableAligner(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 3, heads: int = 4, num_joints: int = NUM_JOINTS):
        super().__init__()
        self.config = dict(dim=dim, depth=depth, heads=heads, num_joints=num_joints)
        self.joint = nn.Embedding(num_joints, dim)
        self.role = nn.Embedding(3, dim)           # reference joint / driving joint / guidance token
        self.ref_in = nn.Linear(3, dim)             # x, y, confidence
        self.drv_in = nn.Linear(5, dim)             # mean x, mean y, spread x, spread y, mean confidence
        self.guide_in = nn.Linear(3, dim)           # log s, cos θ, sin θ of the closed-form fit
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 4)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ref_tok: torch.Tensor, drv_tok: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """``ref_tok [B,J,3]``, ``drv_tok [B,J,5]``, ``guide [B,3]`` -> ``[B,4]`` (Δlog s, Δθ, Δtx, Δty)."""
        j = torch.arange(ref_tok.shape[1], device=ref_tok.device)
        ref = self.ref_in(ref_tok) + self.joint(j) + self.role.weight[0]
        drv = self.drv_in(drv_tok) + self.joint(j) + self.role.weight[1]
        g = (self.guide_in(guide) + self.role.weight[2])[:, None]
        h = self.encoder(torch.cat([g, ref, drv], dim=1))    # [B, 1+2J, dim]
        return self.head(h[:, 0])


# --- geometry shared by training and inference (batched, torch) ---------------------------------

def _apply(m: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``p [B,...,2]`` through ``x -> m x + t`` with ``m [B,2,2]``, ``t [B,2]``."""
    shape = p.shape
    flat = p.reshape(shape[0], -1, 2)
    return (flat @ m.transpose(1, 2) + t[:, None]).reshape(shape)


def _residual_matrix(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, th = torch.exp(delta[:, 0]), delta[:, 1]
    rot = torch.stack([torch.stack([th.cos(), -th.sin()], -1), torch.stack([th.sin(), th.cos()], -1)], -2)
    return s[:, None, None] * rot, delta[:, 2:]


@dataclass
class Batch:
    """Tensors for the model plus what is needed to turn its output into a pixel transform."""

    ref_tok: torch.Tensor
    drv_tok: torch.Tensor
    guide: torch.Tensor
    m0: torch.Tensor       # [B,2,2] closed-form fit
    t0: torch.Tensor       # [B,2]
    mu: torch.Tensor       # [B,2] reference centroid (pixels)
    sigma: torch.Tensor    # [B]   reference RMS size (pixels)


def prepare(ref_px, ref_conf, drv_px, drv_conf, guides: list[Transform2D]) -> Batch:
    """Canonicalise numpy inputs ``ref [B,J,2]/[B,J]``, ``drv [B,K,J,2]/[B,K,J]`` for the model."""
    ref_px, ref_conf = np.asarray(ref_px, float), np.asarray(ref_conf, float)
    drv_px, drv_conf = np.asarray(drv_px, float), np.asarray(drv_conf, float)
    w = np.where(ref_conf > VISIBLE, ref_conf, 0.0)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-9)
    mu = (w[..., None] * ref_px).sum(1)                                           # [B,2]
    sigma = np.sqrt((w * ((ref_px - mu[:, None]) ** 2).sum(-1)).sum(1)) + 1e-6   # [B]
    m0 = np.stack([g.matrix for g in guides])
    t0 = np.stack([g.translation for g in guides])
    guided = np.einsum("bij,bkqj->bkqi", m0, drv_px) + t0[:, None, None]
    ref_n = (ref_px - mu[:, None]) / sigma[:, None, None]
    drv_n = (guided - mu[:, None, None]) / sigma[:, None, None, None]
    dw = np.where(drv_conf > VISIBLE, drv_conf, 0.0)                              # [B,K,J]
    tot = dw.sum(1)                                                               # [B,J]
    mean = (dw[..., None] * drv_n).sum(1) / np.maximum(tot, 1e-9)[..., None]
    spread = np.sqrt((dw[..., None] * (drv_n - mean[:, None]) ** 2).sum(1) / np.maximum(tot, 1e-9)[..., None])
    seen = (tot > 0)[..., None]
    drv_tok = np.concatenate([np.where(seen, mean, 0), np.where(seen, spread, 0), dw.mean(1)[..., None]], -1)
    ref_tok = np.concatenate([np.where(w[..., None] > 0, ref_n, 0), ref_conf[..., None]], -1)
    scale0 = np.sqrt(np.abs(np.linalg.det(m0)))
    theta0 = np.arctan2(m0[:, 1, 0], m0[:, 0, 0])
    guide = np.stack([np.log(scale0), np.cos(theta0), np.sin(theta0)], -1)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)
    return Batch(f(ref_tok), f(drv_tok), f(guide), f(m0), f(t0), f(mu), f(sigma))


def compose(batch: Batch, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel transform ``(M, t)``: the residual (canonical frame) after the closed-form fit."""
    r, dt = _residual_matrix(delta)
    m = r @ batch.m0
    mu = batch.mu
    t = (r @ batch.t0[..., None])[..., 0] + mu - (r @ mu[..., None])[..., 0] + batch.sigma[:, None] * dt
    return m, t


def guide_fits(ref_px, ref_conf, drv_px, drv_conf, joints=STABLE_JOINTS) -> list[Transform2D]:
    out = []
    j = list(joints)
    for b in range(len(ref_px)):
        w = np.where(ref_conf[b, j] > VISIBLE, ref_conf[b, j], 0)[None] * np.where(drv_conf[b][:, j] > VISIBLE, drv_conf[b][:, j], 0)
        src = drv_px[b][:, j].reshape(-1, 2)
        dst = np.broadcast_to(ref_px[b, j], drv_px[b][:, j].shape).reshape(-1, 2)
        try:
            out.append(weighted_umeyama(src, dst, w.reshape(-1)))
        except ValueError:
            out.append(Transform2D(np.eye(2), np.zeros(2)))
    return out


# --- synthetic clips -----------------------------------------------------------------------------

REF_SIZE = (512, 768)
DRV_SIZE = (720, 1280)


def synthetic_clips(rng: np.random.Generator, batch: int, frames: int = 16, fit_frames: int = 8):
    """Reference pose + driving clip of the same (slightly re-proportioned) body, with one random
    similarity applied to the whole clip, plus noise and missing joints.

    Returns a dict of numpy arrays; ``truth`` is the clean driving clip in reference pixels, i.e. the
    correct alignment that every method is scored against.
    """
    height = rng.uniform(380, 650, batch)
    pelvis = np.stack([rng.uniform(200, 312, batch), rng.uniform(380, 470, batch)], -1)
    prop = random_proportions(rng, batch)
    ref = pose_keypoints(prop, random_angles(rng, batch, 1), height, pelvis)[:, 0]
    drv_prop = {k: v * (1 + 0.03 * rng.uniform(-1, 1, batch)) for k, v in prop.items()}
    drift = np.cumsum(rng.normal(0, 3.0, (batch, frames, 2)), axis=1)            # real motion to keep
    truth = pose_keypoints(drv_prop, random_angles(rng, batch, frames), height, pelvis) + drift[:, :, None]
    scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0), batch))
    theta = np.radians(rng.uniform(-12, 12, batch))
    rot = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], -2)
    shift = np.stack([rng.uniform(-150, 350, batch), rng.uniform(-200, 500, batch)], -1)
    drv = np.einsum("bij,bfkj->bfki", scale[:, None, None] * rot, truth) + shift[:, None, None]
    noise = rng.uniform(0, 0.012, batch)[:, None, None, None] * height[:, None, None, None]
    drv = drv + rng.normal(size=drv.shape) * noise * scale[:, None, None, None]
    ref_obs = ref + rng.normal(size=ref.shape) * noise[:, 0]
    conf = lambda shape, p: np.where(rng.random(shape) < p, 0.0, rng.uniform(0.4, 1.0, shape))
    return dict(ref=ref_obs, ref_conf=conf(ref.shape[:-1], 0.05), drv=drv, drv_conf=conf(drv.shape[:-1], 0.12),
                truth=truth, fit_frames=fit_frames)


def training_step(model: LearnableAligner, clips: dict) -> torch.Tensor:
    k = clips["fit_frames"]
    guides = guide_fits(clips["ref"], clips["ref_conf"], clips["drv"][:, :k], clips["drv_conf"][:, :k])
    batch = prepare(clips["ref"], clips["ref_conf"], clips["drv"][:, :k], clips["drv_conf"][:, :k], guides)
    m, t = compose(batch, model(batch.ref_tok, batch.drv_tok, batch.guide))
    pred = _apply(m, t, torch.as_tensor(clips["drv"], dtype=torch.float32))
    truth = torch.as_tensor(clips["truth"], dtype=torch.float32)
    return ((pred - truth).norm(dim=-1).mean(dim=(1, 2)) / batch.sigma).mean()


def evaluate(model: LearnableAligner | None, clips: dict) -> dict[str, float]:
    """Mean keypoint distance (Dis, reference pixels at 512x768) to the true alignment, per method."""
    k = clips["fit_frames"]
    ref, ref_conf, drv, drv_conf, truth = (clips[n] for n in ("ref", "ref_conf", "drv", "drv_conf", "truth"))
    dis = lambda pred: float(np.linalg.norm(pred - truth, axis=-1).mean())
    # none: driving keypoints drawn as they are, normalised canvas to normalised canvas
    results = {"none": dis(drv / np.array(DRV_SIZE) * np.array(REF_SIZE))}
    official = []
    for b in range(len(ref)):
        try:
            tr = fit_official(ref[b] / np.array(REF_SIZE), ref_conf[b], drv[b, :k] / np.array(DRV_SIZE),
                              drv_conf[b, :k], REF_SIZE, DRV_SIZE)
            official.append(tr.apply(drv[b] / np.array(DRV_SIZE) * np.array(DRV_SIZE)))
        except ValueError:
            official.append(drv[b] / np.array(DRV_SIZE) * np.array(REF_SIZE))
    results["official"] = dis(np.stack(official))
    guides = guide_fits(ref, ref_conf, drv[:, :k], drv_conf[:, :k])
    results["similarity"] = dis(np.stack([g.apply(drv[b]) for b, g in enumerate(guides)]))
    if model is not None:
        batch = prepare(ref, ref_conf, drv[:, :k], drv_conf[:, :k], guides)
        with torch.no_grad():
            m, t = compose(batch, model(batch.ref_tok, batch.drv_tok, batch.guide))
            results["learnable"] = dis(_apply(m, t, torch.as_tensor(drv, dtype=torch.float32)).numpy())
    return results


def refine(model: LearnableAligner, ref_px, ref_conf, drv_px, drv_conf, guide: Transform2D) -> Transform2D:
    """Inference for one video: reference ``[J,2]`` pixels, fitting frames ``[K,J,2]`` pixels."""
    batch = prepare(ref_px[None], ref_conf[None], drv_px[None], drv_conf[None], [guide])
    with torch.no_grad():
        m, t = compose(batch, model(batch.ref_tok, batch.drv_tok, batch.guide))
    return Transform2D(m[0].double().numpy(), t[0].double().numpy())


def save(model: LearnableAligner, path: str, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "version": "1", "config": json.dumps(model.config)}
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)


def load(path: str) -> LearnableAligner:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a learnable-alignment checkpoint (format {meta.get('format')!r}).")
    model = LearnableAligner(**json.loads(meta["config"]))
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()
