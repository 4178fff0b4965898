"""Pose stage nodes: DWPose extraction, alignment to the reference body, official skeleton rendering."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..models import keypoints as kp
from ..models.expression import FACE_MODES, ExpressionError, transfer_video
from ..models.pose_align import AlignmentError
from ..models.pose_pipeline import (MODES, PEOPLE, align_people, align_video, credible, frame_from_wholebody,
                                     parse_people_mapping)
from ..models.skeleton import CANVAS_SHORT_SIDE, canvas_problem, canvas_size, draw_skeleton
from . import types
from .validation import InputError, Node, generation_size_problem, known, memory_problem, verdict
from .folders import DWPOSE, full_path, input_file, input_file_problem, list_files

logger = logging.getLogger(__name__)

LEARNABLE_CKPT = Path(__file__).resolve().parents[1] / "models" / "data" / "learnable_align_v1.safetensors"


def _pick(files: list[str], hint: str) -> str | None:
    return next((f for f in files if hint in f.lower()), files[0] if files else None)


def _pose_json_ui(value: list[dict], frames: list[dict] | None = None) -> dict:
    # same UI key as comfyui_controlnet_aux, so its readers (and ours in web/) find the keypoints
    ui = {"openpose_json": [json.dumps(value)]}
    if frames:
        ui["ida_frames"] = frames
    return ui


PREVIEW_MAX_SIDE = 256


def _save_preview_frames(images: torch.Tensor) -> list[dict]:
    """Small JPEGs of the frames in ComfyUI's temp folder, for the skeleton preview to draw over."""
    import uuid

    import folder_paths
    from PIL import Image

    folder = os.path.join(folder_paths.get_temp_directory(), "ida_pose")
    os.makedirs(folder, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    out = []
    for i, img in enumerate(images):
        pil = Image.fromarray((img[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
        pil.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        name = f"{run}_{i:05d}.jpg"
        pil.save(os.path.join(folder, name), quality=80)
        out.append({"filename": name, "subfolder": "ida_pose", "type": "temp"})
    return out


class LoadDWPose(Node):
    """Loads DWPose's two ONNX models (person detector + whole-body pose) from ComfyUI/models/dwpose."""

    @classmethod
    def define_schema(cls):
        files = list_files(DWPOSE)
        return io.Schema(
            node_id="IDA_LoadDWPose", display_name="Load DWPose", category=types.CAT_POSE,
            description=cls.__doc__.strip(),
            inputs=[
                io.Combo.Input("detector", options=files, default=_pick(files, "yolox"),
                               tooltip="Finds the people in each frame, so their joints can be read: yolox_l.onnx, the "
                               "person detector."),
                io.Combo.Input("pose_model", options=files, default=_pick(files, "dw-ll"),
                               tooltip="Reads every body, hand and face joint of each person found: "
                               "dw-ll_ucoco_384.onnx, the whole-body keypoint model."),
                io.Combo.Input("provider", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="cuda reads poses much faster on long videos; cpu works everywhere. onnxruntime "
                               "device. auto: CUDA when onnxruntime-gpu and a GPU are present, else CPU (the log says "
                               "which)."),
            ],
            outputs=[types.DWPose.Output(display_name="dwpose", tooltip="The pose readers: DWPose models for Pose "
                                         "Extract.")],
        )

    @classmethod
    def execute(cls, detector, pose_model, provider) -> io.NodeOutput:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("DWPose needs onnxruntime: pip install onnxruntime-gpu (NVIDIA) or onnxruntime (CPU).") from exc
        from ..models.dwpose import DWPose

        wanted = {"auto": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                  "cpu": ["CPUExecutionProvider"]}[provider]
        if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            logger.warning("DWPose: CUDA requested but this onnxruntime has no CUDA provider (install "
                           "onnxruntime-gpu, not onnxruntime); running on CPU.")
        net = DWPose(full_path(DWPOSE, detector), full_path(DWPOSE, pose_model), providers=wanted)
        logger.info("DWPose loaded on %s", net.providers[0])
        return io.NodeOutput(net)


class DWPoseExtract(Node):
    """Detects every person in every frame and returns their whole-body keypoints as POSE_KEYPOINT.

    Compatible with comfyui_controlnet_aux: its DWPose node can feed the nodes here and the reverse.
    Where the detector finds nobody, the whole frame is used as the person's box, as in the official
    DWPose.
    """

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_DWPoseExtract", display_name="Pose Extract (DWPose)", category=types.CAT_POSE,
            description=cls.__doc__.strip(),
            inputs=[
                types.DWPose.Input("dwpose", tooltip="The pose readers, from Load DWPose."),
                io.Image.Input("images", tooltip="Whose poses to read: the driving video frames (the motion to copy), "
                               "or the reference image (the body to move)."),
            ],
            outputs=[types.PoseKeypoint.Output(display_name="pose_keypoint",
                                               tooltip="Everyone's joints in every frame, for Pose Align: one OpenPose "
                                               "dict per frame (pixels); people largest first. Faint hand and face "
                                               "points are kept for Render Skeleton, which draws them dim as "
                                               "StableAnimator did.")],
        )

    @classmethod
    def execute(cls, dwpose, images) -> io.NodeOutput:
        frames = []
        pbar = comfy.utils.ProgressBar(len(images))
        whole, unsure = [], []
        for i, img in enumerate(images):
            mm.throw_exception_if_processing_interrupted()
            rgb = (img[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            wb = dwpose(rgb)
            frames.append(frame_from_wholebody(wb.xy, wb.score, wb.width, wb.height))
            if wb.whole_image:
                whole.append(i)
                if not credible(frames[-1].people[0]):
                    unsure.append(i)
            pbar.update_absolute(i + 1, len(images))
        if whole:
            # the official fallback keeps these frames; say which, so a wrong skeleton can be found
            logger.warning("Pose Extract: the person detector found nobody in %d of %d frame(s) %s; as in the "
                           "official DWPose, the whole frame was used as the person's box", len(whole),
                           len(images), whole[:12])
        if unsure:
            logger.warning("Pose Extract: in %d of those frame(s) %s not one body joint scores above 0.3: nobody is "
                           "there, or the pose model could not find them", len(unsure), unsure[:12])
        value = kp.to_pose_keypoint(frames)
        return io.NodeOutput(value, ui=_pose_json_ui(value, _save_preview_frames(images)))


def _load_learnable():
    if not LEARNABLE_CKPT.is_file():
        return None
    from ..models.pose_align_learnable import load

    return load(str(LEARNABLE_CKPT))


class PoseAlign(Node):
    """Fits the driving skeleton to the reference body once for the whole video and applies it to
    every frame, so identity is not lost to a skeleton of the wrong size or place. With face
    reference_shape the face points keep the reference's face shape and copy only the driver's
    expression and head motion. With people all, each dancer is fitted to their own person in the
    reference and all of them are drawn."""

    @classmethod
    def define_schema(cls):
        modes = [m for m in MODES if m != "learnable" or LEARNABLE_CKPT.is_file()]
        return io.Schema(
            node_id="IDA_PoseAlign", display_name="Pose Align", category=types.CAT_POSE,
            description=cls.__doc__.strip(),
            inputs=[
                types.PoseKeypoint.Input("reference_pose", tooltip="Keypoints of the reference image (one frame)."),
                types.PoseKeypoint.Input("driving_pose", tooltip="Keypoints of the driving video."),
                io.Combo.Input("mode", options=modes, default="similarity",
                               tooltip="similarity: one scale+rotation+translation (weighted Umeyama) on stable joints. "
                               "official: StableAnimator's fit: one scale and offset from every frame that shows "
                               "exactly one person, using each torso, leg and head joint seen in the reference "
                               "however unsure the driving joint is (as the original does), plus the aspect-ratio "
                               "fix the original lost, so a video of another shape is not stretched. "
                               "learnable: SVD-guided learnt refinement (listed only when its checkpoint ships). "
                               "none: draw the driving poses as they are."),
                io.Boolean.Input("allow_rotation", default=False,
                                 tooltip="similarity only: also fit a rotation (for a tilted camera). Off keeps the body upright."),
                io.Int.Input("fit_frames", default=8, min=0, max=10000,
                             tooltip="similarity and learnable: fit on the first N frames that show the followed person "
                             "(0 = all). official always uses every frame with exactly one person, like the original. "
                             "Never per frame: that would erase real motion."),
                io.Int.Input("reference_person", default=0, min=0, max=32, tooltip="Which person in the reference, largest first."),
                io.Int.Input("driving_person", default=0, min=0, max=32, tooltip="Which person to follow in the driving video, largest first."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="Connect the reference picture to see the aligned driving skeleton drawn over it "
                               "in the preview."),
                # last and optional: workflows saved before it keep their widget order and draw as before
                io.Combo.Input("face", options=list(FACE_MODES), default="driver", optional=True,
                               tooltip="reference_shape: the skeleton's face keeps your reference's face shape (eye "
                               "distance, face width, where the mouth and brows sit) and copies only the dancer's "
                               "expression and head movement: mouth opening, blinks, brow raises, head turns, tilts "
                               "and moves. Use it when the dancer's face is shaped differently from your "
                               "character's; the reference needs a clearly visible face. driver: the dancer's own "
                               "face points, moved with the body, as StableAnimator does (the default, so saved "
                               "workflows draw the same skeletons)."),
                io.Combo.Input("people", options=list(PEOPLE), default="one", optional=True,
                               tooltip="all: when the reference and the video show several people, every dancer is "
                               "fitted to their own person in the reference (left to right, or as people_mapping "
                               "says) and all of them are drawn; each dancer is followed through the video so two "
                               "dancers never swap. one: only driving_person is fitted to reference_person (the "
                               "default, as before); everyone in the video is moved by that one fit."),
                io.String.Input("people_mapping", default="", optional=True,
                                tooltip="people all only: who becomes whom, when left-to-right order is wrong or the "
                                "counts differ. Pairs 'dancer:reference person', e.g. 0:1, 1:0 swaps two people. "
                                "Numbers count largest first: reference people as in the reference picture, dancers "
                                "as in the video's first frame (later arrivals next). Dancers not named are left out. "
                                "Empty: matched left to right."),
            ],
            outputs=[
                types.PoseKeypoint.Output(display_name="aligned_pose", tooltip="Driving keypoints on the reference "
                                          "canvas; with people all, person k is the same dancer in every frame, "
                                          "paired with the k-th reference person named (Face Boxes' person k)."),
                io.String.Output(display_name="report", tooltip="The fitted transform and the frames used; with face "
                                 "reference_shape, also how the face was transferred."),
            ],
        )

    rule_inputs = ('people_mapping',)

    @classmethod
    def rules(cls, values):
        mapping = values.get("people_mapping")
        if not isinstance(mapping, str):
            return None
        try:
            parse_people_mapping(mapping)
        except AlignmentError as exc:
            return f"people_mapping: {exc}"
        return None

    @classmethod
    def execute(cls, reference_pose, driving_pose, mode, allow_rotation, fit_frames, reference_person,
                driving_person, reference_image=None, face=None, people=None, people_mapping=None) -> io.NodeOutput:
        ref = kp.from_pose_keypoint(reference_pose)
        if len(ref) != 1:
            logger.warning("Pose Align: the reference pose has %d frames; using the first", len(ref))
        learnable = _load_learnable() if mode == "learnable" else None
        if people == "all":
            try:
                frames, report, pairs = align_people(ref[0], kp.from_pose_keypoint(driving_pose), mode,
                                                     mapping=people_mapping or "", fit_frames=fit_frames,
                                                     allow_rotation=allow_rotation, learnable=learnable)
            except AlignmentError as exc:
                raise InputError(f"Pose Align: {exc}") from None
        else:
            frames, report = align_video(ref[0], kp.from_pose_keypoint(driving_pose), mode,
                                         reference_person=reference_person, driving_person=driving_person,
                                         fit_frames=fit_frames, allow_rotation=allow_rotation, learnable=learnable)
            pairs = [(driving_person, reference_person)]
            if (people_mapping or "").strip():
                note = "people_mapping is ignored while people is one; set people to all to use it"
                logger.warning("Pose Align: %s", note)
                report.notes.append(note)
        if face == "reference_shape":
            # one: the followed person's list position; all: output person k is the k-th pair
            slots = [driving_person] if people != "all" else range(len(pairs))
            for slot, (_, ref_person) in zip(slots, pairs):
                try:
                    frames, notes = transfer_video(ref[0], frames, ref_person, slot)
                except ExpressionError as exc:
                    # an explicit choice that cannot be honoured: refused, not quietly drawn with the driver's face
                    raise InputError(f"Pose Align: face is reference_shape, but the reference pose (reference_pose, "
                                     f"person {ref_person}) {exc}. Use a reference image in which the face is "
                                     "clearly visible and turned towards the camera, or set face to driver.") from None
                report.notes += notes if people != "all" else [f"person {slot}: {n}" for n in notes]
        text = report.text()
        logger.info("Pose Align: %s", text.replace("\n", "; "))
        value = kp.to_pose_keypoint(frames)
        shown = text
        backgrounds = None
        if reference_image is not None:
            backgrounds = _save_preview_frames(reference_image[:1])   # one picture behind every frame
            note = _reference_image_note(reference_image, ref[0])
            if note:
                logger.warning("Pose Align: %s", note)
                shown = f"{text}\n{note}"
        ui = _pose_json_ui(value, backgrounds)
        ui["ida_report"] = [shown]   # shown on the node, under its preview
        return io.NodeOutput(value, text, ui=ui)


def _reference_image_note(images: torch.Tensor, ref) -> str | None:
    """What the artist should know about the picture behind the preview: a batch (only its first image
    is shown) or a shape other than the reference pose's canvas (the picture is stretched to it, so
    the skeleton cannot be judged against it)."""
    notes = []
    if len(images) > 1:
        notes.append(f"reference_image has {len(images)} images; the preview shows the first.")
    h, w = int(images.shape[1]), int(images.shape[2])
    if abs(w / h - ref.width / ref.height) > 0.02 * ref.width / ref.height:
        notes.append(f"reference_image is {w}x{h} but the reference pose was taken from a {ref.width}x{ref.height} "
                     "picture; the preview stretches the image to that shape. Connect the picture the "
                     "reference pose was extracted from.")
    return " ".join(notes) or None


def _check_canvases(frames) -> None:
    """Refuse canvases no person's image has; say when one is drawn smaller than the official canvas."""
    smaller = []
    for i, fr in enumerate(frames):
        problem = canvas_problem(fr.width, fr.height)
        if problem:
            raise InputError(f"Render Skeleton: frame {i}: {problem}")
        if min(canvas_size(fr.width, fr.height)) < CANVAS_SHORT_SIDE:
            smaller.append(i)
    if smaller:
        logger.warning("Render Skeleton: %d frame(s) %s have a canvas over 4:1; they are drawn on a canvas smaller than "
                       "the official %d px short side, so limbs and joints come out thicker than in StableAnimator's "
                       "training poses", len(smaller), smaller[:12], CANVAS_SHORT_SIDE)


class PoseRender(Node):
    """Draws skeleton images exactly as StableAnimator drew its training poses (PoseNet expects them)."""

    rule_inputs = ('width', 'height')

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_PoseRender", display_name="Render Skeleton", category=types.CAT_POSE,
            description=cls.__doc__.strip(),
            inputs=[
                types.PoseKeypoint.Input("pose_keypoint", tooltip="The joints to draw: usually the output of Pose "
                                         "Align (the driving motion on the reference's body)."),
                io.Int.Input("width", default=512, min=64, max=2048, step=64,
                             tooltip="Width of the animation: larger is sharper but slower and needs more memory. "
                             "Generation width, a multiple of 64 (StableAnimator: 512 or 576)."),
                io.Int.Input("height", default=512, min=64, max=2048, step=64,
                             tooltip="Height of the animation: larger is sharper but slower and needs more memory. "
                             "Generation height, a multiple of 64 (StableAnimator: 512 or 1024)."),
            ],
            outputs=[io.Image.Output(display_name="pose_images",
                                     tooltip="The skeletons the animation follows, for Apply StableAnimator and "
                                     "Animation Conditioning: one skeleton image per frame at width x height.")],
        )

    @classmethod
    def rules(cls, values):
        width, height = values.get("width"), values.get("height")
        return generation_size_problem(width, height) if known(width, height) else None

    @classmethod
    def execute(cls, pose_keypoint, width, height) -> io.NodeOutput:
        from PIL import Image

        frames = kp.from_pose_keypoint(pose_keypoint)
        _check_canvases(frames)
        problem = memory_problem(f"{len(frames)} skeleton images of {width}x{height}", len(frames) * height * width * 3 * 4,
                                 "Render fewer frames at a time (split the driving video) or lower width and height.")
        if problem:
            raise InputError(f"Render Skeleton: {problem}")
        out = torch.empty(len(frames), height, width, 3)
        pbar = comfy.utils.ProgressBar(len(frames))
        for i, fr in enumerate(frames):
            mm.throw_exception_if_processing_interrupted()
            # drawn at the keypoints' canvas (the reference size), then resized the way the official
            # pipeline loaded its saved pose PNGs (PIL bicubic)
            img = Image.fromarray(draw_skeleton(fr.people, fr.width, fr.height))
            if img.size != (width, height):
                img = img.resize((width, height), Image.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(img, np.float32) / 255.0)
            pbar.update_absolute(i + 1, len(frames))
        return io.NodeOutput(out)


POSE_JSON = (".json",)
MAX_POSE_FILE_BYTES = 256 * 1024 * 1024   # a 10-minute 60 fps video of five people is under 100 MB


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "models" / "data" / "poses"
SAMPLE_PREFIX = "ida_samples/"   # list names of the shipped poses; never a folder looked up on disk


def _samples() -> dict[str, Path]:
    """List name -> file of the driving poses shipped with the pack (tools/make_sample_pose.py)."""
    if not SAMPLE_DIR.is_dir():
        return {}
    return {SAMPLE_PREFIX + f.name: f for f in sorted(SAMPLE_DIR.iterdir())
            if f.is_file() and f.name.lower().endswith(POSE_JSON)}


def _json_files() -> list[str]:
    import folder_paths

    base = folder_paths.get_input_directory()
    out = []
    for root, _, files in os.walk(base):
        for f in files:
            name = os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/")
            # an input subfolder named like the samples' prefix could not be loaded (that prefix means
            # the shipped samples), so it is not offered
            if name.startswith(SAMPLE_PREFIX):
                continue
            if f.lower().endswith(POSE_JSON) and input_file_problem(name, POSE_JSON) is None:
                out.append(name)
    return sorted(out) + list(_samples())


def _pose_file_problem(name) -> str | None:
    if isinstance(name, str) and name.startswith(SAMPLE_PREFIX):
        if name in _samples():
            return None
        return (f"'{name}' is not one of the pose samples shipped with the pack ({', '.join(_samples()) or 'none'}). "
                "Pick one from the list.")
    return input_file_problem(name, POSE_JSON)


def _pose_file(name: str) -> str:
    """The file behind a listed name: a shipped sample by exact name only, else a checked input-folder file."""
    if name.startswith(SAMPLE_PREFIX):
        path = _samples().get(name)
        if path is None:
            raise InputError(f"Load Pose Keypoints: file: {_pose_file_problem(name)}")
        return str(path)
    return input_file(name, POSE_JSON)


def read_pose_json(path: str, name: str):
    """The parsed file; any reason it cannot be read as keypoints names the file and what to do."""
    size = os.path.getsize(path)
    if size > MAX_POSE_FILE_BYTES:
        raise InputError(f"Load Pose Keypoints: '{name}' is {size / 2**20:.0f} MiB; pose files over "
                         f"{MAX_POSE_FILE_BYTES // 2**20} MiB are refused. Split the video's keypoints into shorter files.")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise InputError(f"Load Pose Keypoints: '{name}' is not UTF-8 text (byte {exc.start}); it is not a keypoint "
                         "JSON file. Save the keypoints with Save Pose Keypoints (or controlnet_aux's).") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"Load Pose Keypoints: '{name}' is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                         f"{exc.colno}. Fix the file or save it again.") from None


class LoadPoseKeypoints(Node):
    """Loads POSE_KEYPOINT from a JSON file in ComfyUI's input folder: the file comfyui_controlnet_aux's
    Save Pose Keypoints writes (or ours), one OpenPose dict per frame. The pack's own sample driving
    poses are listed after those files, as ida_samples/..."""

    own_checks = ("file",)

    rule_inputs = ('file',)

    @classmethod
    def define_schema(cls):
        files = _json_files()
        return io.Schema(
            node_id="IDA_LoadPoseKeypoints", display_name="Load Pose Keypoints", category=types.CAT_POSE,
            description=cls.__doc__.strip(),
            inputs=[io.Combo.Input("file", options=files, default=files[0] if files else None,
                                   tooltip="A .json file in ComfyUI/input (subfolders allowed), or one of the "
                                   "sample driving poses that ship with the pack (ida_samples/..., listed last).")],
            outputs=[types.PoseKeypoint.Output(display_name="pose_keypoint", tooltip="The keypoints, one dict per frame.")],
        )

    @classmethod
    def rules(cls, values):
        file = values.get("file")
        problem = None if file is None else _pose_file_problem(file)
        return f"file: {problem}" if problem else None

    @classmethod
    def fingerprint_inputs(cls, file=None):
        if file is None or _pose_file_problem(file):
            return float("nan")   # never cached: it is refused when it runs
        return os.path.getmtime(_pose_file(file))

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        value = read_pose_json(_pose_file(file), file)
        try:
            frames = kp.from_pose_keypoint(value)
        except kp.PoseFormatError as exc:
            raise InputError(f"Load Pose Keypoints: '{file}' is not POSE_KEYPOINT JSON: {exc}") from None
        value = value if isinstance(value, list) else [value]
        logger.info("Loaded %d pose frame(s) from %s", len(frames), file)
        return io.NodeOutput(value, ui=_pose_json_ui(value))


class SavePoseKeypoints(Node):
    """Saves POSE_KEYPOINT as JSON in ComfyUI's output folder, in comfyui_controlnet_aux's format."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_SavePoseKeypoints", display_name="Save Pose Keypoints", category=types.CAT_POSE,
            description=cls.__doc__.strip(), is_output_node=True,
            inputs=[
                types.PoseKeypoint.Input("pose_keypoint", tooltip="Keypoints to save."),
                io.String.Input("filename_prefix", default="identity_animator/poses",
                                tooltip="File name prefix inside ComfyUI/output; a counter is appended."),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, pose_keypoint, filename_prefix) -> io.NodeOutput:
        import folder_paths

        kp.from_pose_keypoint(pose_keypoint)
        first = pose_keypoint[0] if isinstance(pose_keypoint, list) else pose_keypoint
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), first["canvas_width"], first["canvas_height"])
        file = f"{name}_{counter:05}_.json"   # the trailing "_" is how ComfyUI finds the next counter
        with open(os.path.join(folder, file), "w", encoding="utf-8") as fh:
            json.dump(pose_keypoint, fh)
        logger.info("Saved %d pose frame(s) to %s", len(pose_keypoint), os.path.join(folder, file))
        return io.NodeOutput(ui={"openpose_json": [json.dumps(pose_keypoint)],
                                 "pose_files": [{"filename": file, "subfolder": subfolder, "type": "output"}]})


class PoseEdit(Node):
    """Fix bad joints by hand: drag them in this node's preview (the moves are stored in the edits
    widget, so they are saved with the workflow) and they are applied to the keypoints passing through."""

    rule_inputs = ('edits',)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="IDA_PoseEdit", display_name="Pose Edit", category=types.CAT_POSE,
            # an output node, so a graph can end here: run it to see and fix the joints before
            # anything is rendered; its keypoints output still feeds the rest of the graph
            description=cls.__doc__.strip(), is_output_node=True,
            inputs=[
                types.PoseKeypoint.Input("pose_keypoint", tooltip="Keypoints to correct (e.g. Pose Align's output)."),
                io.String.Input("edits", default="{}", multiline=True,
                                tooltip='Joint moves, written by dragging joints in the preview: '
                                '{"frame": {"person": {"joint": [x, y]}}} in canvas pixels.'),
            ],
            outputs=[types.PoseKeypoint.Output(display_name="pose_keypoint", tooltip="The keypoints with the moves applied.")],
        )

    @classmethod
    def rules(cls, values):
        edits = values.get("edits")
        problem = None if edits is None else _edits_problem(edits)
        return f"edits: {problem}" if problem else None

    @classmethod
    def execute(cls, pose_keypoint, edits) -> io.NodeOutput:
        value = pose_keypoint if isinstance(pose_keypoint, list) else [pose_keypoint]
        try:
            value = kp.apply_edits(value, _parse_edits_json(edits))
        except kp.PoseFormatError as exc:
            raise InputError(f"Pose Edit: {exc}") from None
        kp.from_pose_keypoint(value)
        return io.NodeOutput(value, ui=_pose_json_ui(value))


def _parse_edits_json(edits: str):
    if not isinstance(edits, str):
        raise kp.PoseFormatError(f"edits is a {type(edits).__name__}; expected JSON text.")
    return json.loads(edits) if edits.strip() else {}


def _edits_problem(edits) -> str | None:
    try:
        kp.parse_edits(_parse_edits_json(edits))
    except json.JSONDecodeError as exc:
        return (f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); set it to {{}} to clear it, "
                "or drag the joints in the preview again.")
    except kp.PoseFormatError as exc:
        return f"{exc} Set it to {{}} to clear it, or drag the joints in the preview again."
    return None


NODES = [LoadDWPose, DWPoseExtract, PoseAlign, PoseRender, LoadPoseKeypoints, SavePoseKeypoints, PoseEdit]
