"""Colour correction of the finished frames: each sampling window's colours pulled back to the
reference's, so a long video does not drift in colour from window to window."""
from __future__ import annotations

import logging
import math

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..models.color_match import MODES, TARGETS, match_colors, summary
from . import types
from .decode import frames_to_video
from .feedback import show_on_node
from .validation import InputError, Node, known, memory_problem

logger = logging.getLogger(__name__)

NAME = "Color Match to Reference"   # the display name, which every message leads with
# about 2 MP of frames per chunk: the Lab conversions hold several float copies of a chunk at once
CHUNK_PIXELS = 8 * 512 * 512


def _mask_problem(name: str, mask, frames: int | None, what: str) -> str | None:
    if mask.ndim not in (2, 3) or mask.numel() == 0:
        return (f"{name} has the shape {list(mask.shape)}, not a mask. Connect a MASK (e.g. from Face Boxes or "
                "Load Image).")
    count = 1 if mask.ndim == 2 else mask.shape[0]
    if frames is not None and count not in (1, frames):
        return (f"{name} has {count} masks but there are {frames} frames: connect one mask for all frames or one per "
                "frame (from the same video), or disconnect it.")
    if float(mask.amax()) <= 0:
        return (f"{name} is black everywhere, so no pixel of the {what} is measured. Paint the part to measure white, "
                f"or disconnect {name}.")
    return None


class ColorMatch(Node):
    """Keeps the animation's colours on the reference's: measures each window of frames in Lab colour and
    shifts it to the reference's average colour (and spread), blending the corrections between windows so
    long videos stop drifting in colour without a visible jump."""

    rule_inputs = ("window_length", "window_overlap")

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_ColorMatch", display_name="Color Match to Reference", category=types.CAT_VIDEO,
            description=cls.__doc__.strip(),
            inputs=[
                io.Image.Input("images", tooltip="The frames to correct: Animation Decode's images (or any frames)."),
                io.Image.Input("reference", tooltip="The picture whose colours the frames should keep: connect the "
                               "reference the animation was made from (Fit Reference to Size's image). Any size; of a "
                               "batch of pictures only the first is used."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much of the correction is applied: 0 leaves the frames as they are, 1 "
                               "matches the colours fully, 0.5 goes half way."),
                io.Combo.Input("mode", options=list(MODES), default="mean_std",
                               tooltip="What is matched, in Lab colour. mean_std: average colour and brightness, and "
                               "their spread (contrast and saturation; Reinhard colour transfer). mean: only the "
                               "average colour and brightness, gentler. color_only: only the tint, brightness is "
                               "kept."),
                io.Combo.Input("match_to", options=list(TARGETS), default="reference",
                               tooltip="Which colours the frames are pulled to. reference: the reference picture's. "
                               "first_window: the animation's own first frames (the first window_length), which are "
                               "the closest to the reference; use it when the reference's framing or background "
                               "differs much from the video's."),
                io.Int.Input("window_length", default=16, min=1, max=4096,
                             tooltip="Frames measured together for one correction: longer is steadier, shorter follows "
                             "quicker changes. 16 is the sampler's window, where drift changes. 1 corrects every "
                             "frame on its own (can flicker); longer than the video gives one correction for all."),
                io.Int.Input("window_overlap", default=4, min=0, max=4095,
                             tooltip="Frames shared by neighbouring windows: more overlap puts the corrections closer "
                             "together, to follow the drift more closely. Each correction fades into the next one from "
                             "window centre to window centre, so there is no jump. Must be smaller than window_length "
                             "(the sampler's: 4 of 16)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: where the frames' colours are measured (white), e.g. only the person, "
                              "to leave out a background that changes. The correction still applies to the whole "
                              "frame. One mask for all frames or one per frame; resized to the frames."),
                io.Mask.Input("reference_mask", optional=True,
                              tooltip="Optional: where the reference's colours are measured (white), e.g. the person "
                              "too when mask marks the person, so like is compared with like. Without it the whole "
                              "reference is measured."),
                io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.5, optional=True,
                               tooltip="How fast the corrected video plays: connect Driving Video Frames' fps, as "
                               "for Animation Decode. Only the video output uses it."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Sound for the corrected video: connect Driving Video Frames' audio. Cut to "
                               "the video's length."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The frames with their colours matched, same "
                                     "size and count as the input, for any image node."),
                     io.Video.Output(display_name="video", tooltip="The corrected frames as a VIDEO at fps, with "
                                     "the sound when audio is connected: connect Save Video.")],
        )

    @classmethod
    def rules(cls, values):
        length, overlap = values.get("window_length"), values.get("window_overlap")
        if known(length, overlap) and overlap >= length:
            return (f"window_overlap ({overlap}) must be smaller than window_length ({length}): lower window_overlap "
                    f"(to {max(0, length // 4)} for example; 0 when window_length is 1).")
        return None

    @classmethod
    def execute(cls, images, reference, strength, mode, match_to, window_length, window_overlap, mask=None,
                reference_mask=None, fps=8.0, audio=None) -> io.NodeOutput:
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] < 3:
            raise InputError(f"{NAME}: images has the shape {list(images.shape)}, not a batch of colour frames "
                             "[frames, height, width, 3]. Connect IMAGE frames, e.g. Animation Decode's images.")
        if reference.ndim != 4 or reference.shape[0] == 0 or reference.shape[-1] < 3:
            raise InputError(f"{NAME}: reference has the shape {list(reference.shape)}, not a colour picture. Connect "
                             "an IMAGE, e.g. Fit Reference to Size's image.")
        frames, height, width = images.shape[0], images.shape[1], images.shape[2]
        for name, m, count, what in (("mask", mask, frames, "frames"), ("reference_mask", reference_mask, None,
                                                                         "reference")):
            problem = None if m is None else _mask_problem(name, m, count, what)
            if problem:
                raise InputError(f"{NAME}: {problem}")
        if mask is not None and mask.ndim == 2:
            mask = mask[None]
        if reference_mask is not None:
            reference_mask = reference_mask[None] if reference_mask.ndim == 2 else reference_mask[:1]
        problem = memory_problem(f"{frames} corrected frames of {width}x{height}", frames * height * width * 3 * 4,
                                 "Correct fewer frames at a time (split the video), or lower the frame count.")
        if problem:
            raise InputError(f"{NAME}: {problem}")

        pbar = comfy.utils.ProgressBar(2 * frames)

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        chunk = max(1, min(16, CHUNK_PIXELS // max(1, height * width)))
        result = match_colors(images, reference, strength=strength, mode=mode, match_to=match_to,
                              window_length=window_length, window_overlap=window_overlap, mask=mask,
                              reference_mask=reference_mask, chunk=chunk, device=mm.get_torch_device(),
                              out_device=mm.intermediate_device(), progress=progress)
        target = "the reference" if match_to == "reference" else "the first window"
        (before, worst_before), (after, worst_after) = summary(result.before), summary(result.after)
        text = (f"Colour distance to {target} (delta E of the average colour; under 2 is hard to see), "
                "mean / worst frame: "
                f"{_fmt(before)} / {_fmt(worst_before)} before, {_fmt(after)} / {_fmt(worst_after)} after "
                f"({frames} frames, {mode}, strength {strength:g}, windows of {window_length}).")
        logger.info("%s: %s", NAME, text)
        logger.debug("%s: per-frame distance before / after: %s", NAME,
                     ", ".join(f"{i}: {b:.2f}/{a:.2f}" for i, (b, a) in enumerate(zip(result.before.tolist(),
                                                                                     result.after.tolist()))))
        show_on_node(text)
        return io.NodeOutput(result.images, frames_to_video(result.images, fps, audio))


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


NODES = [ColorMatch]
