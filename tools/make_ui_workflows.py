"""Write the UI-format workflows (what ComfyUI's template browser loads) from their API-format twins.

  python tools/make_ui_workflows.py                          # starts a temporary ComfyUI to read /object_info
  python tools/make_ui_workflows.py --object-info info.json  # or reads a saved copy of it

Widget values are laid out in each node's /object_info input order (plus the extra value the frontend
keeps after a seed's control widget and after an upload widget); links are rebuilt from the API
references, a widget that receives a link also gets an input socket naming that widget. Nodes are put
in titled groups by stage (Inputs, Models, Pose check, Face, Animate, Output), each group with a short
note saying what to do there; groups are packed so that the whole graph is as large as possible at the
frontend's fit-to-view zoom. Loader nodes carry their official .pth/.safetensors files in
``properties.models`` for the frontend's missing-models list (DIALOG_SUFFIXES says why not the .onnx
ones); the Models note links every file. A same-name .jpg card shows the title and the stages used.
Some API twins are derived from others (DERIVED: start_here_quick_preview from start_here).

What the frontends read (see README "Workflows"): a custom node pack's templates are listed by file name
only (``/api/workflow_templates``; both the bundled frontend 1.32 and 1.58 make the title and the
description from the file name and search the name and the pack folder's name), so each template's title,
description and search terms live in the workflow's ``extra.identity_animator`` for people and tools.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "workflows" / "api"
OUT = ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PREVIEW_NODES = {"IDA_DWPoseExtract", "IDA_PoseAlign", "IDA_LoadPoseKeypoints", "IDA_SavePoseKeypoints", "IDA_PoseEdit"}
SEARCH_TERMS = ["identity", "StableAnimator", "dance", "animate", "pose", "video"]

# ---------------------------------------------------------------------------------------------------
# stages: the groups every template is cut into, in reading order
STAGES = ["Inputs", "Models", "Pose check", "Face", "Animate", "Output"]
# LiteGraph group colours (its node_colors "groupcolor" values), one per stage
STAGE_COLOURS = {"Inputs": "#b58b2a", "Models": "#88AAAA", "Pose check": "#3f789e", "Face": "#a1309b",
                 "Animate": "#88AA88", "Output": "#b06634"}
STAGE_OF = {
    # Inputs: what the artist brings, and how it is cut to size
    "LoadImage": "Inputs", "LoadVideo": "Inputs", "IDA_DrivingVideo": "Inputs", "IDA_FitReference": "Inputs",
    "IDA_LoadPoseKeypoints": "Inputs", "RepeatImageBatch": "Inputs", "GetImageSize": "Inputs",
    "ImageScale": "Inputs",
    # Models: every file loader
    "IDA_LoadDWPose": "Models", "IDA_LoadFaceAnalysis": "Models", "IDA_LoadSVDBase": "Models",
    "IDA_LoadFaceEncoder": "Models", "IDA_LoadAnimationUNet": "Models", "IDA_LoadPoseNet": "Models",
    "IDA_LoadArcFace": "Models", "ImageOnlyCheckpointLoader": "Models",
    # Pose check: the skeletons that will drive the animation
    "IDA_DWPoseExtract": "Pose check", "IDA_PoseAlign": "Pose check", "IDA_PoseRender": "Pose check",
    "IDA_PoseEdit": "Pose check",
    # Face: the identity that is kept
    "IDA_FaceEmbed": "Face", "IDA_FaceEncode": "Face", "IDA_FaceBoxes": "Face", "MaskToImage": "Face",
    # Animate: sampling
    "IDA_ApplyStableAnimator": "Animate", "IDA_AnimationConditioning": "Animate",
    "IDA_AnimationSampler": "Animate", "IDA_FaceRefineSampler": "Animate", "SVD_img2vid_Conditioning": "Animate",
    "VideoLinearCFGGuidance": "Animate", "CFGGuider": "Animate", "RandomNoise": "Animate",
    "BasicScheduler": "Animate", "SamplerCustomAdvanced": "Animate",
    # Output: decoded, previewed, saved
    "IDA_AnimationDecode": "Output", "SaveVideo": "Output", "PreviewImage": "Output", "SaveImage": "Output",
    "IDA_SavePoseKeypoints": "Output", "IDA_ColorMatch": "Output",
    "IDA_FaceSimilarity": "Output", "PreviewAny": "Output",
}
NOTES = {   # stage -> (heading: what to do, readable at fit-to-view; text: the details)
    "Inputs": ("Drop your picture and a dance video here",
               "*Reference image*: one person, face visible, ideally standing like the dancer. *Driving "
               "video*: the dance. *Fit Reference*: the animation size (512x512 or 576x1024)."),
    "Models": ("Model files: download them once",
               "`tools/models.py download --all` (in this pack's folder), then press **R**. Under "
               "`ComfyUI/models/`:"),
    "Pose check": ("Check that the skeleton fits your picture",
                   "The previews show the dancer's skeleton moved onto your picture: it should stand where "
                   "the person stands. If not, try another *mode* in Pose Align."),
    "Face": ("The face that is kept",
             "Found in your picture: a clear, front-facing face works best."),
    "Animate": ("Press Run: 25 steps take minutes on a GPU",
                "*steps* 25 is the official quality; change *seed* for another take. To check your inputs "
                "first, open **start_here_quick_preview**."),
    "Output": ("Your video is saved here",
               "In `ComfyUI/output/identity_animator/`, at the dance video's speed, with its sound."),
}
KEYPOINTS_SAVED = ("The aligned keypoints are saved",
                   "As a JSON file in `ComfyUI/output/`; *Load Pose Keypoints* reads it back.")
MARKDOWN_NOTE = "MarkdownNote"   # a frontend node (both frontends register it); not in /object_info
FRONTEND_NODES = {"Note", "MarkdownNote"}
# files the frontends' missing-models check can see: its folder listing (/experiment/models/<folder>,
# the bundled frontend) lists only ComfyUI's supported_pt_extensions, so a .onnx entry there is reported
# missing even when it is installed. The .onnx files are named in the Models note instead.
DIALOG_SUFFIXES = (".pth", ".safetensors")


@dataclass
class Template:
    api: str                     # file under workflows/api
    title: str
    description: str
    stages: dict[str, str] = field(default_factory=dict)      # class_type or node id -> stage, overriding STAGE_OF
    notes: dict[str, tuple[str, str]] = field(default_factory=dict)   # stage -> (heading, text), overriding NOTES
    all_stages: bool = False     # a group (with its note) for every stage, even an empty one


QUICK = {"Animate": ("Press Run: a quick look in about a minute",
                     "256x256, 16 frames, 6 steps: to check your inputs and the pose, not the final "
                     "quality. Then open **start_here** for the real thing.")}
# UI name -> template; the first two are the guided pair (start_here_quick_preview's API twin is derived)
WORKFLOWS = {
    "start_here": Template(
        "start_here.json", "Start here: animate your picture with a dance video",
        "The whole StableAnimator graph at 512x512, cut into six steps with a note in each: pictures in, "
        "models, pose check, face, animate, video out.", all_stages=True),
    "start_here_quick_preview": Template(
        "start_here_quick_preview.json", "Start here, quick preview (256x256, 16 frames, 6 steps)",
        "start_here made small and short, to check the inputs and the pose in about a minute before the "
        "full run.", notes=QUICK, all_stages=True),
    "animate_512x512": Template("animate_512x512.json", "Animate a reference image (512x512)",
                                "The full StableAnimator animation at its square training size."),
    "animate_576x1024": Template("animate_576x1024.json", "Animate a reference image (576x1024)",
                                 "The full StableAnimator animation at its portrait training size."),
    "animate_sample_dance": Template(
        "animate_sample_dance.json", "Animate your picture with the sample dance (no video needed)",
        "The full animation driven by a dance that ships with the pack as keypoints: only a picture to bring.",
        notes={"Inputs": ("Drop your picture here",
                          "One person, face visible. The dance ships with the pack (*Load Pose Keypoints*); "
                          "*Fit Reference* sets the size."),
               "Output": ("Your video is saved here", "In `ComfyUI/output/identity_animator/`.")}),
    "animate_face_refine": Template(
        "animate_face_refine.json", "Animate with HJB face refinement",
        "The animation with HJB face refinement in the sampler, for a closer likeness of the face, and "
        "an identity check (CSIM) of every frame.",
        notes={"Animate": ("Press Run: animation with face refinement",
                           "HJB refinement works in the sampler from *start_step* to *end_step*: slower, "
                           "with a closer likeness."),
               "Output": ("Your video is saved here",
                          "*Identity Check*: each frame's likeness to your face (1 = same).")}),
    "animate_long_video": Template(
        "animate_long_video.json", "Long video with sliding windows",
        "Long dance videos: sliding windows shifted every step, chunked decode.",
        notes={"Animate": ("Press Run: a long video in windows",
                           "Windows of *window_length* frames, shifted every step so no seam stays put; "
                           "decoded in chunks.")}),
    "color_match_video": Template(
        "color_match_video.json", "Fix colour drift in a finished animation",
        "Pulls a long animation's colours back to the reference picture's, window by window, and saves it "
        "again with its sound.",
        stages={"IDA_ColorMatch": "Animate"},
        notes={"Inputs": ("Drop your picture and your animation",
                          "*Reference image*: the picture the animation was made from. *Your animation*: the "
                          "video to correct."),
               "Animate": ("Press Run: colours held to your picture",
                           "One correction per window of *window_length* frames, blended between windows; "
                           "*strength* 0 leaves the video as it is."),
               "Output": ("Your video is saved here", "In `ComfyUI/output/identity_animator/`, with its sound.")}),
    "pose_check": Template(
        "pose_check.json", "Check the aligned skeleton before animating",
        "DWPose, Pose Align and the skeletons only: check the fit in seconds before spending GPU time.",
        stages={"PreviewImage": "Pose check"}, notes={"Output": KEYPOINTS_SAVED}),
    "pose_from_keypoints_json": Template(
        "pose_from_keypoints_json.json", "Poses from a POSE_KEYPOINT JSON (comfyui_controlnet_aux)",
        "Reference and driving poses from keypoint JSON files instead of DWPose.",
        stages={"PreviewImage": "Pose check"},
        notes={"Inputs": ("Pick two keypoint JSON files",
                          "From `ComfyUI/input/`: the reference's pose and the dance's poses, e.g. saved by "
                          "comfyui_controlnet_aux."), "Output": KEYPOINTS_SAVED}),
    "face_embed_boxes": Template(
        "face_embed_boxes.json", "Face embedding and face boxes",
        "The reference's face embedding and the per-frame face boxes, with previews.",
        stages={"IDA_DWPoseExtract": "Face", "4": "Face"},
        notes={"Inputs": ("Drop a picture with a face", "One person, face visible."),
               "Face": ("Check the face and its boxes",
                        "The previews show the aligned face and the face box of each frame."),
               "Output": ("The face boxes", "Previewed only: nothing is saved.")}),
    "svd_img2vid_face_refine": Template(
        "svd_img2vid_face_refine.json", "SVD img2vid with HJB face refinement",
        "HJB face refinement on ComfyUI's own SVD img2vid graph (core nodes and SamplerCustomAdvanced).",
        stages={"IDA_DWPoseExtract": "Face", "GetImageSize": "Face"},
        notes={"Inputs": ("Drop your picture", "The video starts from it; *amount* sets its length."),
               "Face": ("The face that is kept", "Found in your picture, and boxed in every frame."),
               "Animate": ("Press Run: core SVD img2vid",
                           "ComfyUI's own sampler nodes; the Face Refine Sampler plugs into "
                           "SamplerCustomAdvanced.")}),
}
# derived API twins: name -> (source API file, {class_type: {input: value}})
DERIVED = {
    "start_here_quick_preview.json": ("start_here.json", {
        "IDA_FitReference": {"width": 256, "height": 256},
        "IDA_DrivingVideo": {"frame_cap": 16},
        "IDA_AnimationSampler": {"steps": 6},
        "SaveVideo": {"filename_prefix": "identity_animator/quick_preview"},
    }),
}

# ---------------------------------------------------------------------------------------------------
# layout (canvas units). A node's rectangle is pos, size plus LiteGraph's title bar above pos.
TITLE_H = 30
NODE_W = 264
GROUP_FONT = 34                      # group title size; LiteGraph's title bar is 1.4 times it
GROUP_TITLE_H = GROUP_FONT * 1.4
PAD = 12                             # group edge to its nodes
GAP = 14                             # between nodes (besides the title bar)
GROUP_GAP = 24                       # between groups
# the canvases the layout is fitted to: the browser tests' viewport, a 1080p screen's browser window
VIEWS = ((1600, 1000), (1920, 950))
FIT_ZOOM = 0.75                      # the frontend's fitView fills 75% of the canvas with the nodes' bounds
LOW_QUALITY_ZOOM = 0.575             # below 8 px / 14 px LiteGraph draws nodes as boxes without text


def load_catalog():
    """models/catalog.py, read by path (it has no imports; importing the package would need torch)."""
    spec = importlib.util.spec_from_file_location("ida_catalog", ROOT / "models" / "catalog.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ida_catalog", module)
    spec.loader.exec_module(module)
    return module


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def inputs_in_order(node_info: dict):
    for section in ("required", "optional"):
        for name in node_info["input_order"].get(section, []):
            yield name, node_info["input"][section][name]


def guessed_info(node: dict, prompt: dict, info: dict) -> dict:
    """A stand-in /object_info entry for a node type the server does not have (yet): its linked inputs
    become sockets typed by their source, its literal values widgets, in the API prompt's order."""
    inputs = {}
    for name, v in node["inputs"].items():
        if is_link(v):
            src = prompt[v[0]]
            src_info = info.get(src["class_type"]) or guessed_info(src, prompt, info)
            outputs = src_info["output"]
            inputs[name] = [outputs[v[1]] if v[1] < len(outputs) else "*", {}]
        else:
            kind = {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}.get(type(v), "STRING")
            inputs[name] = [kind, {"default": v}]
    n_out = 1 + max((v[1] for other in prompt.values() for v in other["inputs"].values()
                     if is_link(v) and prompt[v[0]] is node), default=0)
    return {"input": {"required": inputs}, "input_order": {"required": list(inputs)},
            "output": ["*"] * n_out, "output_name": [f"output_{i}" for i in range(n_out)],
            "display_name": node["class_type"], "guessed": True}


def node_info_for(node: dict, prompt: dict, info: dict) -> dict:
    known = info.get(node["class_type"])
    if known is None:
        print(f"  warning: {node['class_type']} is not in /object_info; its widgets are guessed from the API prompt")
        return guessed_info(node, prompt, info)
    return known


def linked_widget_value(prompt: dict, link, name: str, opts: dict):
    """The value a linked widget keeps in widgets_values: the source's same-name widget when it has one
    (Fit Reference width -> Render Skeleton width), else the widget's default."""
    src = prompt[link[0]]["inputs"].get(name)
    if src is not None and not is_link(src):
        return src
    return opts.get("default", 0)


def widget_values(node_info: dict, inputs: dict, prompt: dict | None = None) -> list:
    """The node's widgets_values; a widget fed by a link still has one (what the frontend shows when the
    link is removed)."""
    values = []
    for name, spec in inputs_in_order(node_info):
        if not is_widget(spec):
            continue
        opts = spec[1] if len(spec) > 1 else {}
        value = inputs.get(name, opts.get("default"))
        if is_link(value):
            value = linked_widget_value(prompt, value, name, opts) if prompt else opts.get("default", 0)
        values.append(value)
        if has_control(name, spec):
            values.append("fixed")
        if is_upload(spec):
            values.append("image")
    return values


def depth_of(prompt: dict) -> dict[str, int]:
    depth = {}

    def visit(nid):
        if nid not in depth:
            deps = [v[0] for v in prompt[nid]["inputs"].values() if is_link(v)]
            depth[nid] = 1 + max((visit(d) for d in deps), default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid)
    return depth


# ---------------------------------------------------------------------------------------------------
def has_control(name: str, spec) -> bool:
    """Whether the frontend adds a control_after_generate widget after this widget: when the input asks
    for one, and for any INT called seed or noise_seed unless it says no (both frontends)."""
    opts = spec[1] if len(spec) > 1 else {}
    flag = opts.get("control_after_generate")
    return bool(flag) if flag is not None else (spec[0] == "INT" and name in ("seed", "noise_seed"))


def is_upload(spec) -> bool:
    opts = spec[1] if len(spec) > 1 else {}
    return bool(opts.get("image_upload") or opts.get("video_upload"))


def node_width(title: str) -> int:
    """NODE_W, or wider for a long title: LiteGraph widens a node to its title (14 px text, about 6.4 px
    a character, plus the title bar's 40 px of box and padding)."""
    return max(NODE_W, int(40 + 6.8 * len(title)) + 8)


def node_height(node_type: str, ni: dict, n_sockets: int, values: list) -> int:
    """A little more than LiteGraph's computeSize (a row of 20 px per slot, 24 px per widget, 8 px below;
    the frontend grows a node to that when it loads), with room for what the node shows inside:
    the pack's pose preview (at least 230 px), an upload node's picture or video, a result preview."""
    rows = max(n_sockets, len(ni["output"]), 1)
    multiline = sum(1 for _, spec in inputs_in_order(ni) if is_widget(spec) and len(spec) > 1
                    and spec[1].get("multiline"))
    height = 20 * rows + 24 * len(values) + 8 + 56 * multiline + 10
    if any(is_upload(spec) for _, spec in inputs_in_order(ni)):
        height += 230    # the frontend's image preview asks for about 220 px once the picture loads
    elif node_type in PREVIEW_NODES:
        height += 232
    elif node_type in ("PreviewImage", "SaveImage", "SaveVideo"):
        height += 120
    return height


# a note's text at the frontend's default note font: 10 px (Comfy.TextareaWidget.FontSize), a "# "
# heading twice that (its markdown widget leaves the browser's h1 size); the heading is what stays
# readable at fit-to-view zoom, the rest is for a closer look
NOTE_PAD = 16
NOTE_MIN_H = 96


def shown_text(markdown: str) -> str:
    """What the markdown widget shows: link texts without their addresses, no emphasis marks."""
    import re

    return re.sub(r"[*`]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown))


def note_size(heading: str, text: str, width: int) -> list[int]:
    """A MarkdownNote tall enough for its heading and text at ``width``."""
    inner = width - 2 * NOTE_PAD
    heading, text = shown_text(heading), shown_text(text)
    head_lines = len(textwrap.wrap(heading, max(8, int(inner / 11.5))))
    body_lines = len(textwrap.wrap(text, max(16, int(inner / 5.3))))
    height = 2 * NOTE_PAD + head_lines * 24 + 14 + body_lines * 15 + 8
    return [width, max(NOTE_MIN_H, height)]


def to_ui(prompt: dict, info: dict, title: str, template: Template | None = None, catalog=None) -> dict:
    with_notes = template is not None
    template = template or Template("", title, "")
    depth = depth_of(prompt)
    order = sorted(prompt, key=lambda n: (depth[n], int(n)))
    infos = {nid: node_info_for(prompt[nid], prompt, info) for nid in prompt}
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid in order:
        for name, v in prompt[nid]["inputs"].items():
            if is_link(v):
                src, slot = v
                t = infos[src]["output"][slot]
                links.append([len(links) + 1, int(src), slot, int(nid), name, t])
                out_links.setdefault((src, slot), []).append(len(links))
    for k, nid in enumerate(order):
        node, ni = prompt[nid], infos[nid]
        sockets, linked_widgets = [], []
        for name, spec in inputs_in_order(ni):
            link = next((l[0] for l in links if l[3] == int(nid) and l[4] == name), None)
            if not is_widget(spec):
                sockets.append({"name": name, "type": spec[0], "link": link})
            elif link is not None:   # a widget fed by a link: a socket that names its widget
                linked_widgets.append({"name": name, "type": widget_type(spec), "widget": {"name": name},
                                       "link": link})
        inputs = sockets + linked_widgets
        for l in links:   # the UI format names the target slot by index
            if l[3] == int(nid) and isinstance(l[4], str):
                l[4] = next(i for i, s in enumerate(inputs) if s["name"] == l[4])
        outputs = [{"name": n, "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                   for i, (n, t) in enumerate(zip(ni["output_name"], ni["output"]))]
        values = widget_values(ni, node["inputs"], prompt)
        title = node.get("_meta", {}).get("title", ni["display_name"])
        properties = {"Node name for S&R": node["class_type"]}
        if catalog is not None:
            files = [m.frontend_entry() for m in catalog.for_node(node["class_type"])
                     if m.name.endswith(DIALOG_SUFFIXES)]
            if files:
                properties["models"] = files
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [0, 0],
                      "size": [node_width(title), node_height(node["class_type"], ni, len(sockets), values)],
                      "flags": {}, "order": k, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "title": title,
                      "properties": properties, "widgets_values": values})
    stage_of = {n["id"]: stage_for(prompt[str(n["id"])]["class_type"], str(n["id"]), template) for n in nodes}
    stages = [s for s in STAGES if template.all_stages or s in stage_of.values()]
    models = workflow_models(prompt, catalog) if catalog is not None else []
    notes = {}
    next_id = max(int(n) for n in prompt) + 1
    for s in (stages if with_notes else []):
        heading, text = template.notes.get(s, NOTES[s])
        if s == "Models" and models:
            text = text + " " + models_line(models)
        elif s == "Models":
            text = "Nothing to download for this one."
        notes[s] = {"id": next_id, "type": MARKDOWN_NOTE, "pos": [0, 0], "size": [NODE_W, 0], "flags": {},
                    "order": len(nodes) + len(notes), "mode": 0, "inputs": [], "outputs": [],
                    "title": f"{s}: what to do", "properties": {}, "widgets_values": [f"# {heading}\n\n{text}"],
                    "color": "#432", "bgcolor": "#653"}
        next_id += 1
    groups = layout(nodes, stage_of, stages, notes)
    extra = {"identity_animator": {"title": title, "description": template.description,
                                   "search_terms": SEARCH_TERMS, "stages": stages,
                                   "models": [m.frontend_entry() for m in models]}}
    return {"last_node_id": next_id - 1, "last_link_id": len(links), "nodes": nodes + list(notes.values()),
            "links": links, "groups": groups, "config": {}, "extra": extra, "version": 0.4}


def stage_for(class_type: str, nid: str, template: Template) -> str:
    stage = template.stages.get(nid) or template.stages.get(class_type) or STAGE_OF.get(class_type)
    if stage is None:
        print(f"  warning: no stage for {class_type}: put it in STAGE_OF; it goes in Animate for now")
        stage = "Animate"
    return stage


def workflow_models(prompt: dict, catalog) -> list:
    seen = []
    for node in prompt.values():
        for m in catalog.for_node(node["class_type"]):
            if m not in seen:
                seen.append(m)
    return seen


def models_line(models: list) -> str:
    """Every model file of the workflow as a link to its official address, by folder under ComfyUI/models."""
    by_folder: dict[str, list[str]] = {}
    for m in models:
        folder, _, name = f"{m.folder}/{m.name}".rpartition("/")
        by_folder.setdefault(folder, []).append(f"[{name}]({m.url()})")
    return " ".join(f"`{folder}/`: " + ", ".join(files) + "." for folder, files in by_folder.items())


# ---------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One stage's group: its nodes in columns, its note across the top or at the head of the first column."""
    stage: str
    note: dict | None
    columns: list[list[dict]]
    note_on_top: bool = True

    @property
    def inner_width(self) -> int:
        widths = self.column_widths()
        return sum(widths) + GAP * max(len(widths) - 1, 0)

    def column_widths(self) -> list[int]:
        return [max(n["size"][0] for n in col) for col in self.columns] or [NODE_W]

    @staticmethod
    def column_height(col) -> float:
        return sum(TITLE_H + n["size"][1] for n in col) + GAP * max(len(col) - 1, 0)

    def note_height(self) -> float:
        return TITLE_H + note_size(*split_note(self.note), self.inner_width)[1] if self.note and self.note_on_top else 0

    def size(self) -> tuple[float, float]:
        note_h = self.note_height()
        body = max((self.column_height(c) for c in self.columns), default=0)
        height = GROUP_TITLE_H + PAD + note_h + (GAP if note_h and body else 0) + body + PAD
        return self.inner_width + 2 * PAD, height


def block_options(stage: str, members: list[dict], note: dict | None) -> list[Block]:
    """The ways to lay out one group that are not worse in both width and height than another."""
    options = []
    for k in range(1, min(4, max(len(members), 1)) + 1):
        options.append(Block(stage, note, columns_for(members, k)))
        if note is not None and members:   # the note as the head of the first column, at node width
            note["size"] = note_size(*split_note(note), NODE_W)
            cols = columns_for([note, *members], k)
            if len(cols) == k and cols[0][0] is note:
                options.append(Block(stage, note, cols, note_on_top=False))
    sized = [(b.size(), b) for b in options]
    return [b for (w, h), b in sized
            if not any((w2 <= w and h2 <= h) and (w2, h2) != (w, h) for (w2, h2), _ in sized)]


def split_note(note: dict) -> tuple[str, str]:
    heading, _, text = note["widgets_values"][0].partition("\n\n")
    return heading.removeprefix("# "), text


def columns_for(nodes: list[dict], k: int) -> list[list[dict]]:
    """``nodes`` (in graph order) cut into ``k`` consecutive columns, the tallest as short as it can be."""
    if not nodes:
        return []
    from itertools import combinations

    k = max(1, min(k, len(nodes)))
    best = None
    for cuts in combinations(range(1, len(nodes)), k - 1):   # a dozen nodes at most: try every cut
        bounds = (0, *cuts, len(nodes))
        cost = max(Block.column_height(nodes[a:b]) for a, b in zip(bounds, bounds[1:]))
        if best is None or cost < best[0]:
            best = (cost, bounds)
    return [nodes[a:b] for a, b in zip(best[1], best[1][1:])]


def fit_scale(width: float, height: float, view: tuple[int, int] = VIEWS[0]) -> float:
    """The zoom of the frontend's fit-to-view (LiteGraph's DragAndScale.fitToBounds) on a canvas of ``view``:
    the nodes' bounds fill 75% of it. Below about 0.57 (8 px over its 14 px node font, at a device pixel
    ratio of 1) LiteGraph draws nodes as plain boxes without text."""
    return min(FIT_ZOOM * view[0] / max(width, 300), FIT_ZOOM * view[1] / max(height, 300))


def partitions(n: int):
    """Every way to cut 0..n-1 into consecutive runs (the stages keep their reading order)."""
    for mask in range(1 << max(n - 1, 0)):
        runs, run = [], [0]
        for i in range(1, n):
            if mask >> (i - 1) & 1:
                runs.append(run)
                run = []
            run.append(i)
        runs.append(run)
        yield runs


def arrangement(sizes: list[tuple[float, float]], runs: list[list[int]], by_rows: bool):
    """Rectangles (x, y, w, h) for the groups: ``runs`` are rows of groups side by side (by_rows) or
    columns of groups one above the other; groups sharing a row get its height, a column its width."""
    rects = [None] * len(sizes)
    along = 0.0
    for run in runs:
        if by_rows:
            h = max(sizes[i][1] for i in run)
            x = 0.0
            for i in run:
                rects[i] = (x, along, sizes[i][0], h)
                x += sizes[i][0] + GROUP_GAP
            along += h + GROUP_GAP
        else:
            w = max(sizes[i][0] for i in run)
            y = 0.0
            for i in run:
                rects[i] = (along, y, w, sizes[i][1])
                y += sizes[i][1] + GROUP_GAP
            along += w + GROUP_GAP
    width = max(r[0] + r[2] for r in rects)
    height = max(r[1] + r[3] for r in rects)
    return rects, width, height


def layout(nodes: list[dict], stage_of: dict[int, str], stages: list[str], notes: dict[str, dict]) -> list[dict]:
    """Place every node and note; return the groups. Each group gets its stage's nodes in 1-4 columns;
    groups go in rows, or in columns, in stage order. The winner is drawn with its text at fit-to-view on
    the most VIEWS, then shows the graph largest on the worst of them, then takes the least area."""
    from itertools import product

    members = {s: [n for n in nodes if stage_of[n["id"]] == s] for s in stages}
    choices = [block_options(s, members[s], notes.get(s)) for s in stages]
    sizes_of = [[b.size() for b in c] for c in choices]
    best = None
    runs_all = list(partitions(len(stages)))
    for pick in product(*[range(len(c)) for c in choices]):
        sizes = [sizes_of[i][k] for i, k in enumerate(pick)]
        for by_rows in (True, False):
            for runs in runs_all:
                rects, w, h = arrangement(sizes, runs, by_rows)
                scales = [fit_scale(w, h, v) for v in VIEWS]
                score = (sum(z >= LOW_QUALITY_ZOOM for z in scales), round(min(scales), 4), -w * h)
                if best is None or score > best[0]:
                    best = (score, pick, rects)
    _, pick, rects = best
    groups = []
    for i, s in enumerate(stages):
        b = choices[i][pick[i]]
        x, y, w, h = rects[i]
        top = y + GROUP_TITLE_H + PAD
        if b.note and b.note_on_top:
            b.note["size"] = note_size(*split_note(b.note), b.inner_width)
            b.note["pos"] = [x + PAD, top + TITLE_H]
            top += TITLE_H + b.note["size"][1] + GAP
        elif b.note:
            b.note["size"] = note_size(*split_note(b.note), NODE_W)
        cx = x + PAD
        for col, col_w in zip(b.columns, b.column_widths()):
            cy = top
            for n in col:
                n["pos"] = [cx, cy + TITLE_H]
                cy += TITLE_H + n["size"][1] + GAP
            cx += col_w + GAP
        groups.append({"id": i + 1, "title": s, "bounding": [round(x), round(y), round(w), round(h)],
                       "color": STAGE_COLOURS[s], "font_size": GROUP_FONT, "flags": {}})
    for n in nodes + list(notes.values()):
        n["pos"] = [round(v) for v in n["pos"]]
    return groups


# ---------------------------------------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def thumbnail(path: Path, title: str, ui: dict | None = None, prompt: dict | None = None) -> None:
    """A card for the template browser: the title, the six stages numbered in order (the ones the template
    uses in their group colour, with their node count), a skeleton, and the key settings."""
    from PIL import Image, ImageDraw

    W, H = 512, 384
    img = Image.new("RGB", (W, H), (24, 26, 32))
    d = ImageDraw.Draw(img)
    pts = [(62, 150), (62, 176), (38, 178), (28, 208), (22, 236), (86, 178), (96, 208), (102, 236), (48, 232),
           (46, 268), (44, 300), (76, 232), (78, 268), (80, 300)]
    limbs = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0)]
    colors = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
              (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255)]
    for (a, b), c in zip(limbs, colors):
        d.line([pts[a], pts[b]], fill=tuple(int(v * 0.7) for v in c), width=5)
    d.text((16, 12), "Identity Animator", fill=(150, 150, 160), font=_font(18))
    y = 38
    for line in textwrap.wrap(title, 34)[:3]:
        d.text((16, y), line, fill=(235, 235, 235), font=_font(24))
        y += 30
    counts = {s: 0 for s in STAGES}
    for g in (ui or {}).get("groups", []):
        bx, by, bw, bh = g["bounding"]
        counts[g["title"]] = sum(1 for n in ui["nodes"] if n["type"] not in FRONTEND_NODES
                                 and bx <= n["pos"][0] < bx + bw and by <= n["pos"][1] < by + bh)
    chip_w, chip_h, x0, y0 = 116, 78, 130, 134
    for i, stage in enumerate(STAGES):
        x, yy = x0 + (i % 3) * (chip_w + 8), y0 + (i // 3) * (chip_h + 8)
        colour = tuple(int(STAGE_COLOURS[stage][k:k + 2], 16) for k in (1, 3, 5))
        used = counts[stage] > 0
        fill = tuple(int(c * 0.6) for c in colour) if used else (34, 36, 42)
        d.rounded_rectangle([x, yy, x + chip_w, yy + chip_h], radius=8, fill=fill,
                            outline=colour if used else (70, 72, 80), width=2)
        d.text((x + 8, yy + 6), str(i + 1), fill=(255, 255, 255) if used else (110, 110, 120), font=_font(22))
        d.text((x + 8, yy + 34), stage, fill=(245, 245, 245) if used else (110, 110, 120), font=_font(16))
        if used:
            d.text((x + 8, yy + 56), f"{counts[stage]} node{'s' if counts[stage] > 1 else ''}",
                   fill=(225, 225, 225), font=_font(13))
    d.text((16, H - 38), settings_line(prompt or {}), fill=(205, 205, 205), font=_font(16))
    img.save(path, quality=90)


def settings_line(prompt: dict) -> str:
    """The template's key numbers: size, steps, frames, refinement."""
    parts = []
    for node in prompt.values():
        t, inp = node["class_type"], node["inputs"]
        if t in ("IDA_FitReference", "IDA_PoseRender", "IDA_FaceBoxes") and not is_link(inp.get("width")) \
                and "width" in inp and not any(p.endswith("px") for p in parts):
            parts.append(f"{inp['width']}x{inp['height']} px")
        elif t in ("IDA_AnimationSampler", "BasicScheduler") and "steps" in inp:
            parts.append(f"{inp['steps']} steps")
        elif t == "IDA_DrivingVideo" and inp.get("frame_cap"):
            parts.append(f"{inp['frame_cap']} frames")
        elif t == "IDA_FaceRefineSampler":
            parts.append("HJB face refinement")
        elif t == "IDA_AnimationSampler" and inp.get("shift"):
            parts.append("sliding windows")
    return "  ·  ".join(dict.fromkeys(parts)) or "no sampling: checks only"


# ---------------------------------------------------------------------------------------------------
def derive_api() -> None:
    """Write the API twins that are other twins with a few values changed (DERIVED)."""
    for name, (source, changes) in DERIVED.items():
        prompt = json.loads((API / source).read_text())
        for node in prompt.values():
            for key, value in changes.get(node["class_type"], {}).items():
                node["inputs"][key] = value
        (API / name).write_text(dump_api(prompt))


def dump_api(prompt: dict) -> str:
    """The API files' layout: one node a line."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in prompt.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def build(info: dict) -> dict[str, dict]:
    catalog = load_catalog()
    derive_api()
    out = {}
    for name, template in WORKFLOWS.items():
        prompt = json.loads((API / template.api).read_text())
        out[name] = (prompt, to_ui(prompt, info, template.title, template, catalog))
    return out


def object_info(argv: list[str]) -> dict:
    """/object_info of a temporary ComfyUI with this pack, or of a saved copy (``--object-info FILE``)."""
    if "--object-info" in argv:
        return json.loads(Path(argv[argv.index("--object-info") + 1]).read_text())
    sys.path.insert(0, str(ROOT / "tests"))
    from ida_server import ComfyServer

    with ComfyServer(ROOT / ".host" / "ComfyUI", Path(tempfile.mkdtemp())) as server:
        return server.client.get_json("/object_info")


def main(argv: list[str]) -> int:
    info = object_info(argv)
    hashes = {}
    for name, (prompt, ui) in build(info).items():
        (OUT / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n")
        thumb = OUT / f"{name}.jpg"
        thumbnail(thumb, WORKFLOWS[name].title, ui, prompt)
        digest = hashlib.sha256(thumb.read_bytes()).hexdigest()
        assert digest not in hashes, f"{name}.jpg is the same picture as {hashes.get(digest)}.jpg"
        hashes[digest] = name
        print(f"wrote workflows/{name}.json (+ .jpg)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
