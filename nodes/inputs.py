"""Where the pictures enter the graph: the driving video's frames (with its timing and sound) and the
reference fitted to the one generation size the rest of the graph follows."""
from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import InputImpl, io

from ..models.fit import FIT_MODES, apply_fit, largest_box, plan_fit, size_warning
from . import types
from .feedback import show_on_node
from .validation import InputError, Node, generation_size_problem, known, memory_problem

logger = logging.getLogger(__name__)


# --- driving video -------------------------------------------------------------------------------

def selected(index: int, start: int, every_nth: int) -> bool:
    return index >= start and (index - start) % every_nth == 0


def selection_count(total: int, start: int, cap: int, every_nth: int) -> int:
    """How many of ``total`` frames the start / every-n-th / cap settings keep."""
    n = max(0, math.ceil((total - start) / every_nth))
    return min(n, cap) if cap else n


def _audio_slice(waveform: torch.Tensor, rate: int, offset_s: float, start_s: float, length_s: float) -> torch.Tensor:
    """Samples of ``waveform`` [1, C, S] (which starts ``offset_s`` after the first video frame) covering
    ``start_s`` .. ``start_s + length_s`` of the video; silence where the audio does not reach."""
    first = round((start_s - offset_s) * rate)
    count = round(length_s * rate)
    out = torch.zeros(waveform.shape[0], waveform.shape[1], count, dtype=waveform.dtype)
    lo, hi = max(first, 0), min(first + count, waveform.shape[-1])
    if hi > lo:
        out[..., lo - first:hi - first] = waveform[..., lo:hi]
    return out


def _decode_audio(container, video_start_s: float, window: tuple[float, float]):
    """The first audio stream's samples around ``window`` (seconds from the first video frame) as
    float [1, C, S], its rate, and where those samples start relative to the first video frame.
    Only the window is kept, so a short cut of a long video holds a short sound."""
    import av

    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    rate = int(stream.rate)
    layout = stream.layout.name if stream.layout is not None else "stereo"
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    container.seek(0)
    chunks, first_time, done, kept_from = [], None, 0, None
    for frame in container.decode(stream):
        if first_time is None:
            first_time = float(frame.time or 0.0) - video_start_s
        if first_time + done / rate > window[1]:
            break                                   # past the window: the rest is never needed
        for out in resampler.resample(frame):
            begin = first_time + done / rate
            done += out.samples
            if first_time + done / rate >= window[0]:
                kept_from = begin if kept_from is None else kept_from
                chunks.append(out.to_ndarray())
    if not chunks:
        return None
    wave = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32))[None]
    return wave, rate, kept_from


def read_driving_video(source, start: int, cap: int, every_nth: int, check_memory=None):
    """Decode only the kept frames of a video file (memory grows with what is kept, not the file).

    Returns (frames [N, H, W, 3] float in [0, 1], frame rate of the file, audio dict or None, total frames
    read). ``check_memory(count, height, width)`` may refuse the allocation before frames are kept.
    """
    import av

    if hasattr(source, "seek"):
        source.seek(0)
    with av.open(source, mode="r") as container:
        if not container.streams.video:
            raise InputError("Driving Video Frames: the video has no picture stream. Load a video file with frames.")
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(stream.guessed_rate or 25)
        expected = selection_count(stream.frames, start, cap, every_nth) if stream.frames else None
        if check_memory and expected:
            check_memory(expected, stream.codec_context.height, stream.codec_context.width)
        kept, index, first_time = [], -1, None
        pbar = comfy.utils.ProgressBar(expected or 1)
        for frame in container.decode(stream):
            index += 1
            if first_time is None:
                first_time = float(frame.time or 0.0)
            if not selected(index, start, every_nth):
                continue
            mm.throw_exception_if_processing_interrupted()
            kept.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
            pbar.update_absolute(len(kept), max(expected or len(kept), len(kept)))
            if cap and len(kept) >= cap:
                break
        audio = None
        if kept:
            begin, length = float(start / rate), float(len(kept) * every_nth / rate)
            decoded = _decode_audio(container, first_time or 0.0, (begin, begin + length))
            if decoded is not None:
                wave, audio_rate, offset = decoded
                wave = _audio_slice(wave, audio_rate, offset, begin, length)
                audio = {"waveform": wave, "sample_rate": audio_rate}
    frames = torch.stack(kept).float().div_(255.0) if kept else torch.zeros(0, 1, 1, 3)
    return frames, rate, audio, index + 1


def select_frames(images: torch.Tensor, rate: Fraction, audio, start: int, cap: int, every_nth: int):
    """The same selection on frames already in memory (a VIDEO made by another node)."""
    picked = images[start::every_nth]
    if cap:
        picked = picked[:cap]
    if audio is not None and picked.shape[0]:
        wave = _audio_slice(audio["waveform"], int(audio["sample_rate"]), 0.0, start / rate,
                            picked.shape[0] * every_nth / rate)
        audio = {"waveform": wave, "sample_rate": int(audio["sample_rate"])}
    return picked, audio


def _plain_file(video):
    """The file behind ``video`` when decoding it directly gives the same frames as the host would:
    a whole, uncropped file. Newer ComfyUI versions let a VIDEO carry a trim window and a crop
    (Trim Video, Crop Video); those go through the host's ``get_components`` instead."""
    if not isinstance(video, InputImpl.VideoFromFile):
        return None
    trim = getattr(video, "get_active_trim_window", None)
    if trim is not None and tuple(trim()) != (0.0, 0.0):
        return None
    if getattr(video, "_VideoFromFile__crop", None) is not None:
        return None
    source = video.get_stream_source()
    try:
        import av

        if hasattr(source, "seek"):
            source.seek(0)
        with av.open(source, mode="r") as container:
            first = next(container.decode(video=0), None)
            if first is not None and getattr(first, "rotation", 0):
                return None   # a phone video shot upright: the host turns its frames, a plain decode does not
    except Exception:   # unreadable here: the host's decoder gives its own error
        return None
    return source


class DrivingVideo(Node):
    """The driving video's frames, with its frame rate and sound for the saved animation. Start frame,
    frame cap and every-n-th frame pick the part of the video to animate."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_DrivingVideo", display_name="Driving Video Frames", category=types.CAT_VIDEO,
            description=cls.__doc__.strip(),
            inputs=[
                io.Video.Input("video", tooltip="The video whose motion the reference will copy (from Load Video). "
                               "Its frame rate and sound carry through to the saved animation."),
                io.Int.Input("start_frame", default=0, min=0, max=10_000_000,
                             tooltip="Skip this many frames at the start, to begin the animation later in the video."),
                io.Int.Input("frame_cap", default=0, min=0, max=100_000,
                             tooltip="Animate at most this many frames (0 = to the end). Fewer frames finish sooner: "
                             "16-32 are enough to check a graph. Counted after every_nth."),
                io.Int.Input("every_nth", default=1, min=1, max=120,
                             tooltip="Keep one frame in every N. 2 halves the frames and the work; the saved video then "
                             "plays at the video's frame rate divided by N, so its timing still matches the sound."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="The kept frames, for Pose Extract."),
                io.Float.Output(display_name="fps", tooltip="The frame rate the animation should play at (the video's "
                                "divided by every_nth): connect it to Animation Decode's fps."),
                io.Audio.Output(display_name="audio", tooltip="The video's sound for the kept part (silence where it has "
                                "none): connect it to Animation Decode's audio."),
                io.Int.Output(display_name="frame_count", tooltip="How many frames were kept."),
            ],
        )

    @classmethod
    def execute(cls, video, start_frame, frame_cap, every_nth) -> io.NodeOutput:
        def check_memory(count, height, width):
            problem = memory_problem(f"{count} driving frames of {width}x{height}", count * height * width * 3 * 5,
                                     "Lower frame_cap or raise every_nth, or use a shorter video.")
            if problem:
                raise InputError(f"Driving Video Frames: {problem}")

        source = _plain_file(video)
        if source is not None:
            frames, rate, audio, total = read_driving_video(source, start_frame, frame_cap, every_nth, check_memory)
        else:
            parts = video.get_components()
            total = parts.images.shape[0]
            frames, audio = select_frames(parts.images, Fraction(parts.frame_rate), parts.audio, start_frame,
                                          frame_cap, every_nth)
            rate = Fraction(parts.frame_rate)
        if frames.shape[0] == 0:
            raise InputError(f"Driving Video Frames: start_frame is {start_frame} but the video has only {total} "
                             "frames, so no frame is left. Lower start_frame.")
        fps = float(rate / every_nth)
        if audio is None:   # a silent video: keep the output socket usable
            audio = {"waveform": torch.zeros(1, 1, 0), "sample_rate": 44100}
        text = (f"{frames.shape[0]} of {total} frames ({frames.shape[2]}x{frames.shape[1]}), "
                f"{float(rate):.3g} fps in, {fps:.3g} fps out, "
                + ("with sound" if audio["waveform"].shape[-1] else "no sound"))
        logger.info("Driving Video Frames: %s", text)
        show_on_node(text)
        return io.NodeOutput(frames, fps, audio, frames.shape[0])


# --- reference fitted to the generation size ----------------------------------------------------

class FitReference(Node):
    """Sets the generation size for the whole graph and fits the reference picture to it by cropping
    or padding, never by silently stretching it."""

    rule_inputs = ("width", "height", "fit")

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_FitReference", display_name="Fit Reference to Size", category=types.CAT_POSE,
            description=cls.__doc__.strip(),
            inputs=[
                io.Image.Input("image", tooltip="The reference picture: the person who will move."),
                io.Int.Input("width", default=512, min=64, max=2048, step=64,
                             tooltip="Width of the animation. StableAnimator was trained at 512x512 and 576x1024; other "
                             "multiples of 64 work but may look worse. Feeds Render Skeleton, so the whole graph uses it."),
                io.Int.Input("height", default=512, min=64, max=2048, step=64,
                             tooltip="Height of the animation (see width)."),
                io.Combo.Input("fit", options=list(FIT_MODES), default="crop_center",
                               tooltip="How a picture of another shape is fitted. crop_center: cut the sides (or top and "
                               "bottom) equally. crop_face: cut around the largest face (connect face_analysis). pad: "
                               "keep the whole picture and add black borders. stretch: the official behaviour, which "
                               "distorts the body."),
                types.FaceAnalysis.Input("face_analysis", optional=True,
                                         tooltip="From Load Face Analysis; needed only for crop_face."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The reference at exactly width x height: use it for "
                                "Pose Extract, Face Embed and the conditioning."),
                io.Int.Output(display_name="width", tooltip="The animation width: connect to Render Skeleton."),
                io.Int.Output(display_name="height", tooltip="The animation height: connect to Render Skeleton."),
            ],
        )

    @classmethod
    def rules(cls, values):
        width, height = values.get("width"), values.get("height")
        if known(width, height):
            problem = generation_size_problem(width, height)
            if problem:
                return problem.replace(" in Fit Reference to Size (or in Render Skeleton without it)", " here")
        return None

    @classmethod
    def execute(cls, image, width, height, fit, face_analysis=None) -> io.NodeOutput:
        src_h, src_w = image.shape[1], image.shape[2]
        box = None
        if fit == "crop_face":
            if face_analysis is None:
                raise InputError("Fit Reference to Size: fit is crop_face but face_analysis is not connected. Connect "
                                 "Load Face Analysis to face_analysis, or pick crop_center.")
            arr = (image[0, ..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            boxes, _, _ = face_analysis.detect(np.ascontiguousarray(arr[..., ::-1]))
            box = largest_box(boxes)
            if box is None:
                raise InputError("Fit Reference to Size: fit is crop_face but no face was found in the image. Pick "
                                 "crop_center or pad, or use a picture where the face is visible.")
        plan = plan_fit(src_w, src_h, width, height, fit, box)
        fitted = apply_fit(image[:1], plan, width, height)
        notes = [plan.describe(src_w, src_h, width, height)]
        warning = size_warning(width, height)
        if warning:
            logger.warning("Fit Reference to Size: %s", warning)
            notes.append(warning)
        if fit == "stretch" and src_w * height != src_h * width:
            logger.warning("Fit Reference to Size: the reference is stretched from %dx%d to %dx%d", src_w, src_h,
                           width, height)
        logger.info("Fit Reference to Size: %s", notes[0])
        show_on_node("\n".join(notes))
        return io.NodeOutput(fitted.to(mm.intermediate_device()), width, height)


NODES = [DrivingVideo, FitReference]
