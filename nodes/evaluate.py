"""Evaluation nodes: how well the animation keeps the reference's identity (CSIM), frame by frame."""
from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io, ui

from ..models.evaluate import CsimResult, cosine, embed, face_crop, plot_csim
from . import types
from .face import to_uint8
from .validation import InputError, Node

logger = logging.getLogger(__name__)

CAT_EVALUATE = f"{types.CATEGORY}/evaluate"
DISPLAY = "Identity Check (CSIM)"   # the display name, for messages


class FaceSimilarity(Node):
    """Measures how much each animated frame's face still looks like the reference: CSIM, the cosine
    similarity of the ArcFace embeddings of the two faces (1.0 = the same face), as the StableAnimator
    paper reports it. Faces are found as Face Embed finds them and cut out as ArcFace was trained (the
    same cut face refinement makes). Shows a chart and a summary on the node."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_FaceSimilarity", display_name="Identity Check (CSIM)", category=CAT_EVALUATE,
            description=cls.__doc__.strip(), is_output_node=True,
            inputs=[
                types.ArcFace.Input("arcface", tooltip="The face recogniser that judges how alike two faces are, "
                                    "from Load ArcFace (the network Face Refine Sampler steers with)."),
                types.FaceAnalysis.Input("face_analysis", tooltip="Finds the face in the reference and in every "
                                         "frame, from Load Face Analysis."),
                io.Image.Input("reference", tooltip="The picture the animation was made from: every frame's face is "
                               "compared with its face (the first image of a batch is used)."),
                io.Image.Input("frames", tooltip="The animated frames to check, e.g. Animation Decode's images."),
                io.Float.Input("threshold", default=0.5, min=-1.0, max=1.0, step=0.01,
                               tooltip="Frames scoring below this are listed in the summary and drawn red in the "
                               "chart, so identity drift is easy to find. 1.0 means the same face as the reference."),
                io.Int.Input("face_index", default=0, min=0, max=32,
                             tooltip="Which face of the reference to compare with when it shows several: 0 is the "
                             "largest, 1 the next. In every frame the largest face is used."),
                types.FaceLandmarks.Input("face_landmarks", optional=True,
                                          tooltip="Optional: connect Face Boxes' face_landmarks to cut each frame's "
                                          "face where the driving pose puts it instead of looking for it. Frames "
                                          "where Face Boxes saw no face then count as frames without a face."),
            ],
            outputs=[
                io.Float.Output(display_name="mean_csim",
                                tooltip="The identity score of the whole clip: the average over the frames where a "
                                "face was found (1.0 = the reference's face; NaN when no frame showed one)."),
                io.Float.Output(display_name="csim_per_frame", is_output_list=True,
                                tooltip="One score per frame, in frame order (NaN where no face was found). A list: "
                                "a node connected here runs once per frame."),
                io.Image.Output(display_name="plot",
                                tooltip="The scores as a chart: a dot per frame, red under the threshold, grey ticks "
                                "where no face was found."),
                io.String.Output(display_name="summary",
                                 tooltip="The check in words: the mean, the lowest frame, the frames without a face "
                                 "and the frames under the threshold."),
            ],
        )

    @classmethod
    def execute(cls, arcface, face_analysis, reference, frames, threshold, face_index,
                face_landmarks=None) -> io.NodeOutput:
        if frames is None or len(frames) == 0:
            raise InputError(f"{DISPLAY}: frames is empty. Connect the animated frames (Animation Decode's images).")
        h, w = int(frames.shape[1]), int(frames.shape[2])
        if face_landmarks is not None:
            if (face_landmarks.width, face_landmarks.height) != (w, h):
                raise InputError(
                    f"{DISPLAY}: face_landmarks were made for {face_landmarks.width}x{face_landmarks.height} frames "
                    f"but the frames are {w}x{h}. Set Face Boxes' width and height to the frames' size, or "
                    "disconnect face_landmarks to find each face instead.")
            if len(face_landmarks) != len(frames):
                raise InputError(
                    f"{DISPLAY}: face_landmarks has {len(face_landmarks)} frame(s) but frames has {len(frames)}. Feed "
                    "Face Boxes the poses of the same frames, or disconnect face_landmarks.")
        ref = reference[0]
        faces = face_analysis.landmarks(to_uint8(ref))
        if len(faces) <= face_index:
            found = f"only {len(faces)} face(s) were found" if faces else "no face was found"
            raise InputError(
                f"{DISPLAY}: face_index is {face_index} but {found} in the reference image. Connect the picture the "
                "animation was made from (face visible, at least ~40 px wide), or lower face_index (0 = largest).")
        ref_crop = face_crop(ref.float().cpu(), faces[face_index])
        if ref_crop is None:
            raise InputError(f"{DISPLAY}: the reference's face lies outside the reference image; use a picture "
                             "that shows the whole face.")
        crops, where = [], []
        pbar = comfy.utils.ProgressBar(len(frames))
        for i, frame in enumerate(frames):
            mm.throw_exception_if_processing_interrupted()
            if face_landmarks is not None:
                points = face_landmarks.points[i]
            else:
                found = face_analysis.landmarks(to_uint8(frame))
                points = found[0] if found else None
            crop = None if points is None else face_crop(frame.float().cpu(), points)
            if crop is not None:
                crops.append(crop)
                where.append(i)
            pbar.update_absolute(i + 1, len(frames))
        device = mm.get_torch_device()
        try:
            arcface.to(device)
            with torch.no_grad():
                ref_emb = embed(arcface, ref_crop)
                sims = cosine(embed(arcface, torch.cat(crops)), ref_emb[0]).tolist() if crops else []
        finally:
            arcface.to(mm.unet_offload_device())
        values = [None] * len(frames)
        for i, s in zip(where, sims):
            values[i] = float(s)
        result = CsimResult(tuple(values), float(threshold))
        summary = result.summary()
        logger.info("%s: %s", DISPLAY, summary.replace("\n", " "))
        if result.missing:
            logger.warning("%s: no face found in %d of %d frame(s); they are left out of the mean", DISPLAY,
                           len(result.missing), len(frames))
        plot = torch.from_numpy(plot_csim(result).astype(np.float32) / 255.0)[None]
        shown = ui.PreviewImage(plot, cls=cls).as_dict()
        shown["text"] = [summary]
        return io.NodeOutput(result.mean, result.as_floats(), plot, summary, ui=shown)


NODES = [FaceSimilarity]
