"""Face stage nodes: insightface analysis, reference embedding, Face Encoder tokens, per-frame face boxes."""
from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..models import keypoints as kp
from ..models.face import (COLOR_ORDERS, FaceAnalyzer, FaceConditioning, FaceLandmarks, box_mask, clip_pixels,
                           FaceSetupError, face_box, find_insightface_root, five_points, pack_fingerprint)
from . import types
from .validation import InputError, Node, generation_size_problem, known, memory_problem, verdict
from .folders import INSIGHTFACE

logger = logging.getLogger(__name__)


class LoadFaceAnalysis(Node):
    """Loads insightface's antelopev2 face detector and ArcFace recogniser from
    ComfyUI/models/insightface/models/antelopev2 (local files only, never a download)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_LoadFaceAnalysis", display_name="Load Face Analysis (insightface)", category=types.CAT_FACE,
            description=cls.__doc__.strip(),
            inputs=[io.Combo.Input("provider", options=["auto", "cuda", "cpu"], default="auto",
                                   tooltip="cuda finds and reads faces faster; cpu works everywhere. onnxruntime "
                                   "device for detection and ArcFace. auto: CUDA when onnxruntime-gpu sees a GPU, else "
                                   "CPU (the log says which).")],
            outputs=[types.FaceAnalysis.Output(display_name="face_analysis", tooltip="Finds and recognises faces: for "
                                               "Face Embed.")],
        )

    @classmethod
    def rules(cls, values):
        # checked at validation, so a prompt with several missing models reports them all at once
        try:
            find_insightface_root(folder_paths.get_folder_paths(INSIGHTFACE))
        except FaceSetupError as exc:
            return str(exc)
        return None

    @classmethod
    def fingerprint_inputs(cls, provider):
        # the antelopev2 files are not an input: without this, ComfyUI would keep the analyser it built
        # before a file there was replaced, added or removed
        return provider, pack_fingerprint(folder_paths.get_folder_paths(INSIGHTFACE))

    @classmethod
    def execute(cls, provider) -> io.NodeOutput:
        try:
            import insightface  # noqa: F401
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("The face stage needs insightface and onnxruntime: pip install insightface==0.7.3 "
                              "onnxruntime-gpu (or onnxruntime on machines without CUDA).") from exc
        root = find_insightface_root(folder_paths.get_folder_paths(INSIGHTFACE))
        providers = ["CPUExecutionProvider"] if provider == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in providers if p in ort.get_available_providers()]
        if provider == "cuda" and providers[0] != "CUDAExecutionProvider":
            logger.warning("Face analysis: CUDA requested but onnxruntime has no CUDA provider; running on CPU.")
        analyzer = FaceAnalyzer(root, providers)
        logger.info("Face analysis from %s on %s", root, providers[0])
        return io.NodeOutput(analyzer)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class FaceEmbed(Node):
    """Finds the reference's face and returns its raw 512-d ArcFace embedding, box and landmarks.

    No face is an error (the official scripts then tried facexlib's RetinaFace detector and, failing that,
    went on with a zero embedding); allow_missing opts into zeros."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_FaceEmbed", display_name="Face Embed", category=types.CAT_FACE,
            description=cls.__doc__.strip(),
            inputs=[
                types.FaceAnalysis.Input("face_analysis", tooltip="The face finder, from Load Face Analysis."),
                io.Image.Input("image", tooltip="The reference picture whose face the animation keeps (the first image "
                               "of a batch is used)."),
                io.Int.Input("face_index", default=0, min=0, max=32, tooltip="Which face to keep when the reference "
                             "shows several: 0 is the largest, 1 the next, and so on."),
                io.Combo.Input("color_order", options=list(COLOR_ORDERS), default="bgr",
                               tooltip="bgr keeps the identity as StableAnimator learnt it (recommended): what "
                               "insightface expects and what StableAnimator was trained with. rgb: reproduces the "
                               "official inference script, which passed RGB by mistake."),
                io.Boolean.Input("allow_missing", default=False,
                                 tooltip="On: a reference without a visible face still animates, but its identity is "
                                 "not kept (a zero identity embedding; the log says so). Off: no face found stops the "
                                 "run."),
            ],
            outputs=[
                types.Face.Output(display_name="face", tooltip="The reference's identity, for Face Encode and Face "
                                  "Refine Sampler: embedding, box and landmarks of the chosen face."),
                io.Image.Output(display_name="aligned_face", tooltip="The chosen face as the recogniser sees it: check "
                                "it is the right person. 112x112 aligned face crop."),
                io.Mask.Output(display_name="face_mask", tooltip="Where the chosen face is: the face box as a mask at "
                               "the reference's size."),
            ],
        )

    @classmethod
    def execute(cls, face_analysis, image, face_index, color_order, allow_missing) -> io.NodeOutput:
        res, count = face_analysis.analyse(to_uint8(image[0]), color_order=color_order, index=face_index,
                                           allow_missing=allow_missing)
        if count > 1:
            logger.info("Face Embed: %d faces in the reference; using #%d (largest first)", count, face_index)
        crop = torch.from_numpy(res.aligned.astype(np.float32) / 255.0)[None]
        mask = box_mask(tuple(res.bbox / np.array([res.width, res.height] * 2)) if res.found else None,
                        res.width, res.height, margin=0.0)[None]
        return io.NodeOutput(res, crop, mask)


class FaceEncode(Node):
    """Turns the ArcFace embedding and the reference's CLIP image embedding into the 4 face tokens of
    StableAnimator's Face Encoder; the UNet then sees [CLIP token, 4 face tokens]."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_FaceEncode", display_name="Face Encode", category=types.CAT_FACE,
            description=cls.__doc__.strip(),
            inputs=[
                types.FaceEncoder.Input("face_encoder", tooltip="The identity network, from Load Face Encoder."),
                types.Face.Input("face", tooltip="The reference's face, from Face Embed."),
                io.ClipVision.Input("clip_vision", tooltip="Reads the reference's overall look: SVD-xt's CLIP-H image "
                                    "encoder (Load SVD-xt VAE + CLIP Vision)."),
                io.Image.Input("image", tooltip="The reference picture whose look the animation keeps; encoded whole, "
                               "squashed to 224x224 as SVD does (no centre crop)."),
            ],
            outputs=[types.FaceConditioning.Output(display_name="face_conditioning",
                                                   tooltip="The reference's look and identity, for Apply "
                                                   "StableAnimator and Animation Conditioning: CLIP token + 4 face "
                                                   "tokens.")],
        )

    @classmethod
    def execute(cls, face_encoder, face, clip_vision, image) -> io.NodeOutput:
        mm.load_model_gpu(clip_vision.patcher)
        pixels = clip_pixels(image[:1]).to(clip_vision.load_device)
        clip = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[2]          # [1, D] image_embeds
        clip = clip.float().to(mm.intermediate_device())[:, None]                           # [1, 1, D]
        mm.load_models_gpu([face_encoder])
        dev = face_encoder.load_device
        enc = face_encoder.model
        if clip.shape[-1] != enc.clip_dim:
            raise ValueError(f"The CLIP embedding is {clip.shape[-1]}-wide but this Face Encoder expects {enc.clip_dim}: "
                             "use SVD-xt's CLIP-H image encoder.")
        emb = torch.from_numpy(face.embedding).float()[None]
        with torch.no_grad():
            tokens = enc(emb.to(dev), clip.to(dev)).float().to(mm.intermediate_device())
        if not face.found:
            logger.warning("Face Encode: the face embedding is zero (no face in the reference); identity is not conditioned.")
        return io.NodeOutput(FaceConditioning(clip_embeds=clip, face_tokens=tokens))


class FaceBoxes(Node):
    """Per-frame face boxes and face landmarks from the aligned driving keypoints, at generation
    resolution, for face refinement.

    Replaces the hand-made mask folders of the official scripts; preview or edit the masks like any MASK."""

    rule_inputs = ('width', 'height')

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_FaceBoxes", display_name="Face Boxes", category=types.CAT_FACE,
            description=cls.__doc__.strip(),
            inputs=[
                types.PoseKeypoint.Input("pose_keypoint", tooltip="Where the faces are in every frame: the aligned "
                                         "driving keypoints (Pose Align output)."),
                io.Int.Input("width", default=512, min=64, max=2048, step=64,
                             tooltip="Set it to Render Skeleton's width: Face Refine Sampler refuses masks of another "
                             "size. Generation width (a multiple of 64)."),
                io.Int.Input("height", default=512, min=64, max=2048, step=64,
                             tooltip="Set it to Render Skeleton's height: Face Refine Sampler refuses masks of another "
                             "size. Generation height (a multiple of 64)."),
                io.Float.Input("margin", default=0.1, min=0.0, max=2.0, step=0.05,
                               tooltip="Larger boxes take in more around each face (hair, background); that frames the "
                               "identity comparison only when face_landmarks is not connected. Grow each box by this "
                               "fraction of its size on every side."),
                io.Int.Input("person", default=0, min=0, max=32, tooltip="Whose face to refine when several people are "
                             "in the video: 0 is the largest, then the next. After Pose Align with people all, person "
                             "k is the same dancer in every frame (the k-th pair of its report); use one Face Boxes "
                             "per person."),
            ],
            outputs=[
                io.Mask.Output(display_name="face_masks",
                               tooltip="Which frames have a face to refine, and where: one filled face rectangle per "
                               "frame; empty where no face is visible."),
                types.FaceLandmarks.Output(display_name="face_landmarks",
                                         tooltip="Lets Face Refine Sampler cut every face out the way the reference's "
                                         "is: eyes, nose tip and mouth corners of each frame's face. A frame whose "
                                         "face is turned away or hidden has none and is not refined."),
            ],
        )

    @classmethod
    def rules(cls, values):
        width, height = values.get("width"), values.get("height")
        return generation_size_problem(width, height) if known(width, height) else None

    @classmethod
    def execute(cls, pose_keypoint, width, height, margin, person) -> io.NodeOutput:
        frames = kp.from_pose_keypoint(pose_keypoint)
        problem = memory_problem(f"{len(frames)} face masks of {width}x{height}", len(frames) * height * width * 4,
                                 "Process fewer frames at a time (split the driving video) or lower width and height.")
        if problem:
            raise InputError(f"Face Boxes: {problem}")
        masks = torch.zeros(len(frames), height, width)
        points = []
        empty = unaligned = 0
        for i, fr in enumerate(frames):
            box = pts = None
            if len(fr.people) > person:
                p = fr.people[person]
                box = face_box(p.face, p.face_score, p.body, p.body_score)
                pts = five_points(p.face, p.face_score)
            masks[i] = box_mask(box, width, height, margin)
            points.append(None if pts is None else pts * np.array([width, height], float))
            empty += box is None
            unaligned += box is not None and pts is None
        if empty:
            logger.warning("Face Boxes: no face in %d of %d frame(s); refinement skips those frames", empty, len(frames))
        if unaligned:
            logger.warning("Face Boxes: %d of %d frame(s) show too few face points for the eyes, nose and mouth "
                           "corners (face turned away or hidden); refinement with these landmarks skips them", unaligned, len(frames))
        return io.NodeOutput(masks, FaceLandmarks(tuple(points), width, height))


NODES = [LoadFaceAnalysis, FaceEmbed, FaceEncode, FaceBoxes]
