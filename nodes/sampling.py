"""Sampling nodes: StableAnimator's schedule, windows and per-frame CFG on ComfyUI's own sampler.

The pieces are ordinary ComfyUI objects — a context handler on the model, a CFG function, SIGMAS,
NOISE and the stock Euler SAMPLER — so they also combine with ComfyUI's custom-sampling nodes.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np
import torch

import comfy.context_windows as cw
import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import latent_preview
from comfy_api.latest import io

from ..models.windows import SCHEDULES, fusion_weights, periodic_noise, windows_for_step
from . import types
from .validation import InputError, Node, known, verdict

logger = logging.getLogger(__name__)

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0
# the default is the official seed, but the official draw cannot be repeated from it here (web/docs say more)
SEED_TOOLTIP = ("Another seed gives another take. The default is the official scripts' 23123134, but they draw from a "
                "CUDA generator (first the reference's noise augmentation, then the latent noise in fp16) and this "
                "node on the CPU, so the same seed gives other noise and does not reproduce the official videos.")


def official_sigmas(steps: int) -> torch.Tensor:
    """SVD-xt's EulerDiscreteScheduler with Karras sigmas: 700 -> 0.002 (rho 7), then 0, float32.

    Bit-identical to the official scheduler: it evaluates the Karras ramp in float64 (numpy, Python
    float powers) and casts once at the end. ComfyUI's ``get_sigmas_karras`` works in float32
    throughout, which is up to 2.4e-4 off for 25 steps (its first sigma is 700.0001), so the same
    operations are repeated here in the scheduler's order instead.
    """
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** RHO
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def _without_anchor_frame() -> dict:
    """Newer hosts (``causal_window_fix``, default on) run every window that does not start at frame 0
    with the frame before it prepended, for causal video VAEs. SVD has none: its frames are the batch,
    and StableAnimator's windows are exact index lists, so the pack turns it off where it exists."""
    params = inspect.signature(cw.IndexListContextHandler.__init__).parameters
    return {"causal_window_fix": False} if "causal_window_fix" in params else {}


class AnimationContextHandler(cw.IndexListContextHandler):
    """ComfyUI's window handler with StableAnimator/MagicAnimate schedules and weights.

    0.3.75's ``set_step`` compares the whole per-frame timestep with the schedule and fails for SVD
    (frames are the batch) and for sub-steps; this one matches the first entry and keeps the last
    step when nothing matches.
    """

    def __init__(self, schedule: str, length: int, overlap: int, shift: bool, seed: int, wrap: bool):
        windows_for_step(schedule, 2 * length, length, overlap)   # validates the settings now, not mid-run
        super().__init__(cw.ContextSchedule(schedule, self._windows), cw.ContextFuseMethod(f"ida_{schedule}", self._weights),
                         context_length=length, context_overlap=overlap, closed_loop=wrap, dim=0, **_without_anchor_frame())
        self.schedule, self.shift, self.seed, self.wrap = schedule, shift, seed, wrap

    def __deepcopy__(self, memo):
        return self

    def set_step(self, timestep, model_options):
        sigmas = model_options["transformer_options"].get("sample_sigmas")
        if sigmas is None:
            return
        match = torch.nonzero(torch.isclose(sigmas, timestep.flatten()[0].to(sigmas), rtol=1e-4))
        if match.numel():
            self._step = int(match[0])

    def _windows(self, num_frames, handler, model_options):
        return windows_for_step(self.schedule, num_frames, self.context_length, self.context_overlap,
                                step=self._step, shift=self.shift, seed=self.seed, wrap=self.wrap)

    def _weights(self, length, **kwargs):
        return fusion_weights(self.schedule, length)


def per_frame_cfg(min_cfg: float, max_cfg: float):
    """CFG scale rising linearly from the first to the last frame of the whole video (SVD's guidance)."""

    def cfg(args):
        cond, uncond = args["cond"], args["uncond"]
        g = torch.linspace(min_cfg, max_cfg, cond.shape[0], device=cond.device, dtype=cond.dtype)
        return uncond + g.view(-1, *[1] * (cond.ndim - 1)) * (cond - uncond)

    return cfg


def with_windows(model, schedule, length, overlap, shift, seed, wrap, min_cfg, max_cfg):
    m = model.clone()
    m.model_options["context_handler"] = AnimationContextHandler(schedule, length, overlap, shift, seed, wrap)
    cw.create_prepare_sampling_wrapper(m)
    m.set_model_sampler_cfg_function(per_frame_cfg(min_cfg, max_cfg), disable_cfg1_optimization=max_cfg != 1.0)
    return m


class PeriodicNoise:
    """NOISE for ComfyUI's custom sampling: one window of noise repeated along time (the official init)."""

    def __init__(self, seed: int, period: int):
        self.seed, self.period = seed, period

    def generate_noise(self, input_latent):
        latent = input_latent["samples"]
        return periodic_noise(latent.shape, self.period, torch.Generator().manual_seed(self.seed)).to(latent.dtype)


def window_rules(values) -> str | None:
    length, overlap = values.get("window_length"), values.get("window_overlap")
    if known(length, overlap) and overlap >= length:
        return (f"window_overlap ({overlap}) must be smaller than window_length ({length}): lower "
                "window_overlap (official: 4 of 16).")
    low, high = values.get("min_cfg"), values.get("max_cfg")
    if known(low, high) and low > high:
        return f"min_cfg ({low}) must not exceed max_cfg ({high}): guidance rises from the first frame to the last."
    return None


_WINDOW_INPUTS = lambda: [
    io.Combo.Input("schedule", options=list(SCHEDULES), default="official",
                   tooltip="How a long video is split into overlapping windows and blended back. official: every "
                   "window holds frame 0 (which ties them all to the start) plus consecutive frames, triangular "
                   "weights (StableAnimator). magicanimate: uniform windows, flat average (MagicAnimate)."),
    io.Int.Input("window_length", default=16, min=2, max=64, tooltip="Longer windows keep motion consistent over more "
                 "frames but need more memory. Frames per window (StableAnimator: 16)."),
    io.Int.Input("window_overlap", default=4, min=0, max=63, tooltip="More overlap blends the seams between windows "
                 "more smoothly but makes more windows, so sampling takes longer. Frames shared by neighbouring "
                 "windows (official: 4)."),
    io.Boolean.Input("shift", default=False, tooltip="On: the seams between windows fall on other frames at every "
                     "step, instead of always the same ones. Moves the windows by a seeded offset at every step."),
    io.Boolean.Input("wrap", default=False, tooltip="magicanimate only: for looping videos, the last frames blend into "
                     "the first. Windows wrap from the last frame to the first."),
]


def _check_frames(model, sampler, samples: torch.Tensor) -> None:
    """Refuse, before sampling, a latent whose frame count or size the poses or face masks do not match."""
    if samples.ndim != 4 or samples.shape[1] != 4:
        raise InputError(f"Animation Sampler: latent is {list(samples.shape)}, not an SVD video latent [frames, 4, "
                         "height/8, width/8]. Take it from Animation Conditioning (or SVD_img2vid_Conditioning).")
    frames, height, width = samples.shape[0], samples.shape[-2] * 8, samples.shape[-1] * 8
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    for patch in patches.get("input_block_patch", []):
        problem = getattr(patch, "frame_count_problem", lambda n: None)(frames)
        if problem:
            raise InputError(f"Animation Sampler: {problem}")
    video_problem = getattr(getattr(sampler, "sampler_function", None), "video_problem", None)
    problem = video_problem(frames, height, width) if video_problem else None
    if problem:
        raise InputError(f"Animation Sampler: {problem}")


class AnimationSampler(Node):
    """StableAnimator's sampler: Euler on SVD's Karras/v-prediction schedule (sigma 700 -> 0.002),
    per-frame linear CFG, sliding windows for any length, and one window of noise repeated along time."""

    rule_inputs = ('window_length', 'window_overlap', 'min_cfg', 'max_cfg')

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_AnimationSampler", display_name="Animation Sampler", category=types.CAT_SAMPLING,
            description=cls.__doc__.strip(),
            inputs=[
                io.Model.Input("model", tooltip="The animation model with the face and pose steering, from Apply "
                               "StableAnimator."),
                io.Conditioning.Input("positive", tooltip="What the animation should look like, from Animation "
                                      "Conditioning."),
                io.Conditioning.Input("negative", tooltip="What guidance pushes away from, from Animation "
                                      "Conditioning."),
                io.Latent.Input("latent", tooltip="The empty video to fill (its frame count and size), from Animation "
                                "Conditioning."),
                io.Int.Input("seed", default=23123134, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip=SEED_TOOLTIP),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Fewer steps finish sooner but look rougher; "
                             "time grows linearly with steps. Denoising steps (official: 25)."),
                io.Float.Input("min_cfg", default=3.0, min=1.0, max=20.0, step=0.1,
                               tooltip="How strictly the first frame follows the reference and poses: higher is "
                               "stricter but can look harsh. Guidance at the first frame (official scripts: 3.0, the "
                               "same as max_cfg)."),
                io.Float.Input("max_cfg", default=3.0, min=1.0, max=20.0, step=0.1,
                               tooltip="How strictly the last frame follows the reference and poses (see min_cfg). "
                               "Guidance at the last frame; in between it rises linearly."),
                *_WINDOW_INPUTS(),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="Optional: connect Face Refine Sampler (HJB) to keep the face closer to the "
                                 "reference (slower), or another SAMPLER. Default: Euler."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The finished animation, still as a latent: "
                                      "decode it with Animation Decode. Denoised video latent.")],
        )

    @classmethod
    def rules(cls, values):
        return window_rules(values)

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, min_cfg, max_cfg, schedule, window_length,
                window_overlap, shift, wrap, sampler=None) -> io.NodeOutput:
        samples = latent["samples"]
        _check_frames(model, sampler, samples)
        m = with_windows(model, schedule, window_length, window_overlap, shift, seed, wrap, min_cfg, max_cfg)
        noise = PeriodicNoise(seed, window_length).generate_noise(latent)
        sigmas = official_sigmas(steps)
        callback = latent_preview.prepare_callback(m, steps)
        sampler = sampler if sampler is not None else comfy.samplers.sampler_object("euler")
        out = comfy.sample.sample_custom(m, noise, max_cfg, sampler, sigmas, positive,
                                         negative, samples, callback=callback, disable_pbar=True, seed=seed)
        return io.NodeOutput({"samples": out.to(mm.intermediate_device())})


class AnimationWindows(Node):
    """For ComfyUI's custom-sampling nodes: puts the sliding windows and per-frame CFG on a model."""

    rule_inputs = ('window_length', 'window_overlap', 'min_cfg', 'max_cfg')

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_AnimationWindows", display_name="Animation Windows + Frame CFG", category=types.CAT_SAMPLING,
            description=cls.__doc__.strip(),
            inputs=[
                io.Model.Input("model", tooltip="The animation model to sample long videos with: the patched model "
                               "(Apply StableAnimator)."),
                io.Float.Input("min_cfg", default=3.0, min=1.0, max=20.0, step=0.1, tooltip="How strictly the first "
                               "frame follows the reference and poses: higher is stricter but can look harsh. Guidance "
                               "at the first frame."),
                io.Float.Input("max_cfg", default=3.0, min=1.0, max=20.0, step=0.1,
                               tooltip="How strictly the last frame follows the reference and poses (see min_cfg). "
                               "Guidance at the last frame. Give the guider this value as cfg."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Changes which frames the "
                             "wandering seams fall on (only with shift on). Seed of the window shift."),
                *_WINDOW_INPUTS(),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model that samples any length in windows, with "
                                     "guidance rising frame by frame: for a CFG Guider. The model with windows and "
                                     "per-frame CFG.")],
        )

    @classmethod
    def rules(cls, values):
        return window_rules(values)

    @classmethod
    def execute(cls, model, min_cfg, max_cfg, seed, schedule, window_length, window_overlap, shift, wrap) -> io.NodeOutput:
        return io.NodeOutput(with_windows(model, schedule, window_length, window_overlap, shift, seed, wrap, min_cfg, max_cfg))


class AnimationSigmas(Node):
    """SIGMAS of StableAnimator's schedule (SVD-xt Euler with Karras sigmas, 700 -> 0.002)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_AnimationSigmas", display_name="Animation Sigmas", category=types.CAT_SAMPLING,
            description=cls.__doc__.strip(),
            inputs=[io.Int.Input("steps", default=25, min=1, max=200, tooltip="Fewer steps finish sooner but look "
                                 "rougher; time grows linearly with steps. Denoising steps (official: 25).")],
            outputs=[io.Sigmas.Output(display_name="sigmas", tooltip="The noise schedule, for SamplerCustomAdvanced: "
                                      "steps + 1 noise levels, ending at 0.")],
        )

    @classmethod
    def execute(cls, steps) -> io.NodeOutput:
        return io.NodeOutput(official_sigmas(steps))


class AnimationNoise(Node):
    """NOISE with one window of noise repeated along time, as StableAnimator initialises long videos."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_AnimationNoise", display_name="Animation Noise", category=types.CAT_SAMPLING,
            description=cls.__doc__.strip(),
            inputs=[
                io.Int.Input("seed", default=23123134, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip=SEED_TOOLTIP),
                io.Int.Input("period", default=16, min=1, max=1024, tooltip="Set it to the window length: one window "
                             "of noise repeated along time, as StableAnimator starts long videos. Repeat period in "
                             "frames (the window length)."),
            ],
            outputs=[io.Noise.Output(display_name="noise", tooltip="The starting noise, for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, seed, period) -> io.NodeOutput:
        return io.NodeOutput(PeriodicNoise(seed, period))


NODES = [AnimationSampler, AnimationWindows, AnimationSigmas, AnimationNoise]
