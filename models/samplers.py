"""Samplers with a per-step hook on the predicted clean sample (k-diffusion calling convention).

``model(x, sigma, **extra_args)`` returns the denoised prediction; ``refine(denoised, i, n)`` may
return an improved one (StableAnimator's HJB face refinement) that the step then uses.
"""
from __future__ import annotations

import math

import torch


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, refine=None):
    """Euler on a decreasing sigma schedule (SVD's default sampler, no churn)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if refine is not None:
            denoised = refine(denoised, i, n)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def sample_heun_churn(model, x, sigmas, extra_args=None, callback=None, disable=None, refine=None,
                      s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, seed=None):
    """StableAnimator supplement, Algorithm 1 (EDM's stochastic Heun): churn noise raises sigma to
    sigma_hat, the prediction at sigma_hat is refined, an Euler step is taken, and a second-order
    correction (without refinement) follows unless the next sigma is 0. Churn noise is seeded."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    n = len(sigmas) - 1
    gen = torch.Generator(device="cpu").manual_seed(int(seed if seed is not None else extra_args.get("seed", 0)))
    for i in range(n):
        sigma = float(sigmas[i])
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1.0)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=gen).to(x) * s_noise
            x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        if refine is not None:
            denoised = refine(denoised, i, n)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        d = (x - denoised) / sigma_hat
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_next = x + d * dt
            d_next = (x_next - model(x_next, sigmas[i + 1] * s_in, **extra_args)) / sigmas[i + 1]
            x = x + (d + d_next) / 2 * dt
    return x
