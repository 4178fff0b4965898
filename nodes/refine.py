"""HJB face refinement as a ComfyUI SAMPLER (Euler, or Algorithm 1's stochastic Heun).

ComfyUI runs nodes under ``torch.inference_mode()``, whose tensors can never be saved for backward,
and its model management re-creates weights as inference tensors. So refinement works on a private
decoder built from the VAE's weights outside inference mode (built when sampling starts, freed when it ends)
and on the ArcFace network from Load ArcFace (also built outside inference mode).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import comfy.model_management as mm
import comfy.samplers
from comfy_api.latest import io

from ..models.face_refine import (FRAMINGS, FaceRefiner, MultiFaceRefiner, RefineSchedule, boxes_from_masks,
                                  frame_targets, reference_embedding, reference_target)
from ..models.samplers import sample_euler, sample_heun_churn
from . import types
from .validation import InputError, Node, known, verdict
from .vae_decoder import fresh_decoder

logger = logging.getLogger(__name__)

SAMPLERS = {"euler": sample_euler, "heun_churn": sample_heun_churn}
# the official refinement runs in fp32; bf16/fp16 halve the decoder's memory at some cost in gradient precision
DECODE_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def checkpointed_decode(decoder, z: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``Decoder.forward`` stage by stage under gradient checkpointing: only stage inputs are
    kept for backward, each stage is recomputed once during it. ``z`` is an unscaled VAE latent; like
    ComfyUI's own decode, the temporal blocks treat the whole batch as one clip."""
    ck = lambda fn, x: checkpoint(fn, x, use_reentrant=False)
    h = decoder.conv_in(z)
    h = ck(lambda x: decoder.mid.block_2(decoder.mid.attn_1(decoder.mid.block_1(x, None)), None), h)
    for level in reversed(range(decoder.num_resolutions)):
        up = decoder.up[level]

        def stage(x, up=up, level=level):
            for i in range(decoder.num_res_blocks + 1):
                x = up.block[i](x, None)
                if len(up.attn) > 0:
                    x = up.attn[i](x)
            return up.upsample(x) if level != 0 else x

        h = ck(stage, h)
    return ck(lambda x: decoder.conv_out(F.silu(decoder.norm_out(x))), h)


class GradDecoder:
    """A gradient-capable decoder built from the VAE's weights on ``device`` (never a copy of ComfyUI's
    module); model-space latents in, [-1, 1] pixels out."""

    def __init__(self, vae, latent_out, device, dtype):
        self.decoder = fresh_decoder(vae, device, dtype)
        self.latent_out, self.device, self.dtype = latent_out, device, dtype

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return checkpointed_decode(self.decoder, self.latent_out(z).to(self.device, self.dtype)).float()


class RefineSamplerFunction:
    """A k-diffusion-style sampler function that sets up refinement for one sampling run."""

    def __init__(self, sampler: str, opts: dict):
        self.sampler, self.opts = sampler, opts

    def video_problem(self, frames: int, height: int, width: int) -> str | None:
        """A message when the face masks or landmarks do not fit a video of this size, else None."""
        o = self.opts
        if not o["enabled"]:
            return None
        for _, masks, marks, suffix in self.people():
            if masks.shape[0] != frames or tuple(masks.shape[1:]) != (height, width):
                return (f"face_masks{suffix} are {masks.shape[0]} frames of {masks.shape[2]}x{masks.shape[1]} but the "
                        f"video is {frames} frames of {width}x{height}: build them with Face Boxes from the same poses, "
                        "at the generation size (Render Skeleton's width and height).")
            if marks is not None and (len(marks) != frames or (marks.width, marks.height) != (width, height)):
                return (f"face_landmarks{suffix} are {len(marks)} frames of {marks.width}x{marks.height} but the video "
                        f"is {frames} frames of {width}x{height}: take them from the same Face Boxes as the masks.")
        return None

    def people(self) -> list[tuple]:
        """(reference face, per-frame masks, landmarks, input-name suffix) of each person refined."""
        o = self.opts
        people = [(o["face"], o["face_masks"], o["face_landmarks"], "")]
        if o.get("face_2") is not None:   # a second person: own reference face, own per-frame boxes
            people.append((o["face_2"], o["face_masks_2"], o["face_landmarks_2"], "_2"))
        return people

    def _person_targets(self, face, masks, marks, framing, width, height, ref_w, ref_h, name):
        """(reference target, per-frame targets, framing used) for one person's face."""
        if marks is None:
            logger.warning("Face refinement: face_landmarks%s is not connected, so faces are cut from boxes (the "
                           "reference from Face Embed's detector box, the frames from the face masks), which frame "
                           "faces differently. Connect Face Boxes' face_landmarks for framing '%s'.", name, framing)
            framing = "official"
        ref_target = reference_target(face.bbox, face.kps, framing, ref_w, ref_h)
        targets = frame_targets(boxes_from_masks(masks), None if marks is None else marks.points, framing,
                                face.bbox, face.kps, width, height)
        return ref_target, targets, framing

    def build(self, model, x: torch.Tensor) -> FaceRefiner:
        """The refiner for a video latent ``x [frames, 4, h, w]``: checks the face masks and landmarks
        against it, frames the reference and every frame by one rule, builds the gradient decoder."""
        o = self.opts
        frames, height, width = x.shape[0], x.shape[2] * 8, x.shape[3] * 8
        problem = self.video_problem(frames, height, width)
        if problem:
            raise ValueError(f"Face Refine Sampler: {problem}")
        reference = o["reference"]
        ref_h, ref_w = reference.shape[:2]
        people = self.people()
        cut = [self._person_targets(face, masks, marks, o["framing"], width, height, ref_w, ref_h, name)
               for face, masks, marks, name in people]
        base = model.inner_model.inner_model
        device = x.device
        dtype = DECODE_PRECISIONS[o["precision"]]
        for (_, _, marks, name), (_, targets, framing) in zip(people, cut):
            logger.info("Face refinement%s: framing %s, decoder in %s on %s, %d of %d frames with a face",
                        f" (person{name})" if len(people) > 1 else "", framing if marks is not None else "boxes",
                        o["precision"], device, sum(t is not None for t in targets), frames)
        decoder = GradDecoder(o["vae"], base.process_latent_out, device, dtype)
        with torch.inference_mode(False):
            arcface = o["arcface"].to(device)
            refs = [reference_embedding(arcface, reference.to(device), ref_target) for ref_target, _, _ in cut]
        kwargs = dict(margin=o["margin"], chunk=o["chunk"], crop=o["crop"],
                      check_cancel=mm.throw_exception_if_processing_interrupted)
        if len(people) == 1:
            return FaceRefiner(decoder, arcface, refs[0], cut[0][1], o["schedule"], **kwargs)
        return MultiFaceRefiner(decoder, arcface, refs, [targets for _, targets, _ in cut], o["schedule"], **kwargs)

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None, **churn):
        o = self.opts
        sample = SAMPLERS[self.sampler]
        kwargs = churn if self.sampler == "heun_churn" else {}
        if not o["enabled"]:
            return sample(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **kwargs)
        refiner = self.build(model, x)
        try:
            return sample(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, refine=refiner, **kwargs)
        finally:
            o["arcface"].to(mm.unet_offload_device())
            del refiner
            mm.soft_empty_cache()


class FaceRefineSampler(Node):
    """A SAMPLER with StableAnimator's HJB face refinement: at each step in the window the predicted
    clean video is nudged (Adam) so the ArcFace identity of every frame's face moves towards the
    reference's. Plug it into Animation Sampler or SamplerCustomAdvanced (any SVD-family model)."""

    rule_inputs = ('start_step', 'end_step', 's_tmin', 's_tmax')

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_FaceRefineSampler", display_name="Face Refine Sampler (HJB)", category=types.CAT_SAMPLING,
            description=cls.__doc__.strip(),
            inputs=[
                io.Vae.Input("vae", tooltip="Lets refinement see the faces it corrects: the SVD-xt VAE (refinement "
                             "decodes faces with gradients through a private decoder built from its weights)."),
                types.ArcFace.Input("arcface", tooltip="Judges how much each frame's face looks like the reference's: "
                                    "from Load ArcFace (PyTorch)."),
                io.Image.Input("reference", tooltip="The face every frame is pulled towards: the reference image (the "
                               "same one Face Embed looked at)."),
                types.Face.Input("face", tooltip="Where the reference's face is, from Face Embed (box and five "
                                 "landmarks)."),
                io.Mask.Input("face_masks", tooltip="Which frames get their face refined: from Face Boxes, at the "
                              "generation size (an empty mask leaves that frame alone)."),
                io.Boolean.Input("enabled", default=True, tooltip="On: faces are pulled towards the reference at every "
                                 "refined step (slower). Off: the plain sampler, no refinement."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="euler",
                               tooltip="euler is the official sampler and the faster. heun_churn makes two model calls "
                               "per step (slower) and uses the four heun_churn settings: the supplement's Algorithm 1 "
                               "(EDM stochastic Heun)."),
                io.Int.Input("start_step", default=0, min=0, max=1000, tooltip="From which step faces are refined: "
                             "starting later is faster but refines fewer steps. First refined step (official: 0)."),
                io.Int.Input("end_step", default=20, min=0, max=1000, tooltip="Up to which step faces are refined: "
                             "stopping earlier is faster but refines fewer steps. Last refined step (official: 20 of "
                             "25)."),
                io.Int.Input("iterations", default=3, min=1, max=50, tooltip="More iterations keep the face closer to "
                             "the reference but each refined step takes longer (cost grows linearly). Adam iterations "
                             "per refined step (official code: 3)."),
                io.Float.Input("lr", default=0.1, min=0.0, max=10.0, step=0.01,
                               tooltip="Higher pulls faces harder towards the reference at each iteration, which can "
                               "overshoot into artefacts; lower is gentler. Adam learning rate at step 0; it falls "
                               "linearly: lr·(1 − step/steps) (official 0.1)."),
                io.Int.Input("margin", default=32, min=0, max=512, step=8,
                             tooltip="With crop_decode: more room around each face makes its refinement closer to "
                             "full-frame decoding, at more memory and time. Pixels decoded around each face for the "
                             "decoder's context."),
                io.Boolean.Input("crop_decode", default=True,
                                 tooltip="On: refinement fits in much less memory by decoding only the region around "
                                 "the faces (an approximation; how much less has not been measured on a GPU yet). Off "
                                 "decodes whole frames like the official code, which needs a lot of memory."),
                io.Int.Input("chunk", default=4, min=1, max=64,
                             tooltip="Keep it equal to Animation Decode's chunk_size (both 4, the official value) so "
                             "faces are refined as they will be decoded; larger needs more memory. Frames decoded "
                             "together with gradients: the decoder smooths over them."),
                io.Float.Input("s_churn", default=0.0, min=0.0, max=100.0, step=0.1, tooltip="heun_churn only: 0 is "
                               "plain Heun; more adds fresh (seeded) noise at each step, so the result strays further "
                               "from the noise-free path. Amount of churn noise (EDM's S_churn)."),
                io.Float.Input("s_tmin", default=0.0, min=0.0, max=1000.0, step=0.01, tooltip="heun_churn only: raise "
                               "it to keep churn out of the last, low-noise steps where fine detail forms. Churn only "
                               "at sigma >= this."),
                io.Float.Input("s_tmax", default=1000.0, min=0.0, max=1000.0, step=0.01, tooltip="heun_churn only: "
                               "lower it to keep churn out of the first, high-noise steps where the layout forms. "
                               "Churn only at sigma <= this."),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=2.0, step=0.001, tooltip="heun_churn only: scales "
                               "the churn noise; EDM found slightly above 1 counters loss of detail. Churn noise scale "
                               "(EDM's S_noise)."),
                types.FaceLandmarks.Input("face_landmarks", optional=True,
                                        tooltip="Connect it so every frame's face is cut out the way the reference's "
                                        "is, for a fair identity comparison: from Face Boxes, eyes, nose and mouth "
                                        "corners of every frame's face. Without it faces are cut from plain boxes, "
                                        "framed differently on the two sides."),
                io.Combo.Input("framing", options=list(FRAMINGS), default="arcface", optional=True,
                               tooltip="arcface compares faces the way ArcFace was trained to see them; official "
                               "copies the official code. Cut the same way on the reference and every frame. arcface: "
                               "turned and scaled so eyes, nose and mouth land where ArcFace expects them. official: "
                               "an upright box resized to 112x112."),
                io.Combo.Input("decode_precision", options=list(DECODE_PRECISIONS), default="fp32", optional=True,
                               tooltip="bf16/fp16: about half the refinement decoder's memory, less precise gradients. "
                               "fp32: as the official code, the most precise. Number format of the refinement's "
                               "decoder."),
                # last and optional: saved workflows keep their widget order and refine one face as before
                types.Face.Input("face_2", optional=True,
                                 tooltip="A second person to keep recognisable, with their own face: Face Embed on the "
                                 "same reference with face_index set to that person's face. Needs face_masks_2. Leave "
                                 "it unconnected for one person."),
                io.Mask.Input("face_masks_2", optional=True,
                              tooltip="Where the second person's face is in every frame: a second Face Boxes on Pose "
                              "Align's output (people all) with person set to that person. Needs face_2."),
                types.FaceLandmarks.Input("face_landmarks_2", optional=True,
                                        tooltip="The second person's face points, from the same Face Boxes as "
                                        "face_masks_2, so their face is cut out the way their reference face is."),
            ],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="A sampler that pulls every face towards the "
                                       "reference while it denoises: for Animation Sampler or SamplerCustomAdvanced.")],
        )

    @classmethod
    def rules(cls, values):
        start, end = values.get("start_step"), values.get("end_step")
        if known(start, end) and start > end:
            return (f"start_step ({start}) is after end_step ({end}), so no step would be refined. Swap them; "
                    "to turn refinement off set enabled to false.")
        low, high = values.get("s_tmin"), values.get("s_tmax")
        if known(low, high) and low > high:
            return f"s_tmin ({low}) is above s_tmax ({high}), so churn could never act. Swap them."
        return None

    @classmethod
    def execute(cls, vae, arcface, reference, face, face_masks, enabled, sampler, start_step, end_step, iterations,
                lr, margin, crop_decode, chunk, s_churn, s_tmin, s_tmax, s_noise, face_landmarks=None,
                framing="arcface", decode_precision="fp32", face_2=None, face_masks_2=None,
                face_landmarks_2=None) -> io.NodeOutput:
        if enabled and not face.found:
            raise ValueError("Face refinement needs the reference face, but Face Embed found none. "
                             "Turn refinement off or use a reference with a visible face.")
        if (face_2 is None) != (face_masks_2 is None):
            given, missing = ("face_2", "face_masks_2") if face_masks_2 is None else ("face_masks_2", "face_2")
            raise InputError(f"Face Refine Sampler: {given} is connected but {missing} is not; the second person "
                             "needs both (their reference face from Face Embed and their per-frame boxes from Face "
                             f"Boxes). Connect {missing}, or disconnect {given} for one person.")
        if face_2 is None and face_landmarks_2 is not None:
            raise InputError("Face Refine Sampler: face_landmarks_2 is connected without face_2 and face_masks_2; "
                             "connect those too for a second person, or disconnect face_landmarks_2.")
        if enabled and face_2 is not None and not face_2.found:
            raise InputError("Face Refine Sampler: face_2 has no face (Face Embed found none at that face_index). "
                             "Pick the second person's face with face_index, or disconnect face_2.")
        opts = dict(vae=vae, arcface=arcface, reference=reference[0], face=face, face_masks=face_masks,
                    face_landmarks=face_landmarks, enabled=enabled, framing=framing, precision=decode_precision,
                    schedule=RefineSchedule(start_step, end_step, iterations, lr), margin=margin, chunk=chunk, crop=crop_decode,
                    face_2=face_2, face_masks_2=face_masks_2, face_landmarks_2=face_landmarks_2)
        extra = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise} if sampler == "heun_churn" else {}
        return io.NodeOutput(comfy.samplers.KSAMPLER(RefineSamplerFunction(sampler, opts), extra_options=extra))


NODES = [FaceRefineSampler]
