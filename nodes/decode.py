"""Decoding the video latent in temporal chunks, with a smaller chunk on out-of-memory and an
optional CPU decode; IMAGE frames and ComfyUI's VIDEO out."""
from __future__ import annotations

import logging
from fractions import Fraction

import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import InputImpl, Types, io

from . import types
from .validation import Node
from .vae_decoder import fresh_decoder

logger = logging.getLogger(__name__)


def _decode_on_cpu(vae):
    """A float32 CPU decoder built from the VAE's weights, for cards whose memory the temporal decoder
    exceeds (never a copy of ComfyUI's module, see vae_decoder)."""
    decoder = fresh_decoder(vae, "cpu", torch.float32)

    def decode(z):
        with torch.no_grad():
            return vae.process_output(decoder(z.to("cpu", torch.float32)).float()).movedim(1, -1)

    return decode


def is_out_of_memory(exc: BaseException) -> bool:
    """The host's own test where it has one: newer torch reports some out-of-memory errors as other
    classes (``torch.AcceleratorError``), which only ``model_management.is_oom`` recognises."""
    host_test = getattr(mm, "is_oom", None)
    return bool(host_test(exc)) if host_test is not None else isinstance(exc, mm.OOM_EXCEPTION)


def decode_chunks(decode, samples: torch.Tensor, chunk: int) -> torch.Tensor:
    """``decode`` each run of ``chunk`` frames (the temporal decoder mixes frames within a chunk);
    on out-of-memory the chunk is halved and the same frames are tried again."""
    frames, i = [], 0
    pbar = comfy.utils.ProgressBar(samples.shape[0])
    while i < samples.shape[0]:
        mm.throw_exception_if_processing_interrupted()
        tried = min(chunk, samples.shape[0] - i)
        try:
            out = decode(samples[i:i + tried])
        except Exception as exc:
            if not is_out_of_memory(exc) or tried == 1:
                raise
            chunk = max(1, tried // 2)
            logger.warning("Decode ran out of memory; retrying with %d frames per chunk", chunk)
            mm.soft_empty_cache()
            continue
        frames.append(out.to(mm.intermediate_device()))
        i += out.shape[0]
        pbar.update_absolute(i, samples.shape[0])
    return torch.cat(frames)


def _fit_audio(audio, frames: int, rate: Fraction):
    """``audio`` cut (or padded with silence) to the video's length; None for no sound."""
    if not audio or audio["waveform"].shape[-1] == 0:
        return None
    wave, sample_rate = audio["waveform"], int(audio["sample_rate"])
    length = round(frames / rate * sample_rate)
    if wave.shape[-1] < length:
        wave = torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    return {"waveform": wave[..., :length].contiguous(), "sample_rate": sample_rate}


class AnimationDecode(Node):
    """Decodes the animation latent with SVD's temporal VAE decoder, a few frames at a time."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_AnimationDecode", display_name="Animation Decode", category=types.CAT_VIDEO,
            description=cls.__doc__.strip(),
            inputs=[
                io.Vae.Input("vae", tooltip="Turns the latent into frames: SVD-xt VAE."),
                io.Latent.Input("latent", tooltip="The finished animation, from Animation Sampler."),
                io.Int.Input("chunk_size", default=4, min=1, max=256,
                             tooltip="Larger is smoother from frame to frame but needs more memory. Frames decoded "
                             "together: the decoder smooths over a chunk. 4 is the official value and what face "
                             "refinement decodes with (its chunk): keep the two equal so faces look as they were "
                             "refined."),
                io.Boolean.Input("decode_on_cpu", default=False,
                                 tooltip="On: decoding works even when the GPU has no room for the temporal decoder, "
                                 "but slowly: it runs on the CPU. E.g. for 576x1024 on 8-12 GB cards."),
                io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.5,
                               tooltip="How fast the saved video plays. Connect Driving Video Frames' fps so the dance "
                               "keeps its timing; typed here, it is used as it is."),
                io.Audio.Input("audio", optional=True,
                               tooltip="Sound for the saved video: connect Driving Video Frames' audio. Cut to the "
                               "animation's length."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The animation's frames, as IMAGE for any image node."),
                io.Video.Output(display_name="video", tooltip="The animation as a VIDEO (with the sound when audio is "
                                "connected), for Save Video."),
            ],
        )

    @classmethod
    def execute(cls, vae, latent, chunk_size, decode_on_cpu, fps, audio=None) -> io.NodeOutput:
        samples = latent["samples"]
        decode = _decode_on_cpu(vae) if decode_on_cpu else vae.decode
        frames = decode_chunks(decode, samples, chunk_size)
        if frames.ndim == 5:   # video VAEs may return [B, T, H, W, C]
            frames = frames.flatten(0, 1)
        return io.NodeOutput(frames, frames_to_video(frames, fps, audio))


def frames_to_video(frames, fps: float, audio=None):
    """IMAGE frames as a VIDEO at ``fps``, with ``audio`` cut to their length (Save Video's input)."""
    rate = Fraction(fps).limit_denominator(1001)
    return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=_fit_audio(audio, frames.shape[0], rate),
                                                               frame_rate=rate))


NODES = [AnimationDecode]
