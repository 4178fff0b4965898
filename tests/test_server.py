"""The pack inside a real ComfyUI server (``main.py --cpu`` on loopback): node registration, model
folders (including extra_model_paths.yaml), the example workflow through /prompt and /ws, and
readable errors for wrong files."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from conftest import COMFY_DIR, ROOT
from ida_server import ComfyServer

WORKFLOW = ROOT / "tests" / "data" / "unet_svd_preview.json"  # core SVD nodes driving our UNet
OUR_NODES = {"IDA_LoadAnimationUNet", "IDA_LoadPoseNet", "IDA_LoadFaceEncoder", "IDA_LoadArcFace", "IDA_LoadSVDBase",
             "IDA_LoadDWPose", "IDA_DWPoseExtract", "IDA_PoseAlign", "IDA_PoseRender",
             "IDA_LoadFaceAnalysis", "IDA_FaceEmbed", "IDA_FaceEncode", "IDA_FaceBoxes"}
FACE_WORKFLOW = ROOT / "workflows" / "api" / "face_embed_boxes.json"
ANIMATE_WORKFLOW = ROOT / "workflows" / "api" / "animate_512x512.json"
KEYPOINTS_WORKFLOW = ROOT / "workflows" / "api" / "pose_from_keypoints_json.json"
OUR_NODES |= {"IDA_LoadPoseKeypoints", "IDA_SavePoseKeypoints", "IDA_FaceRefineSampler", "IDA_ApplyStableAnimator", "IDA_AnimationConditioning", "IDA_AnimationSampler", "IDA_AnimationWindows",
              "IDA_AnimationSigmas", "IDA_AnimationNoise", "IDA_AnimationDecode"}


def animate_prompt(steps=3, size=64):
    prompt = json.loads(ANIMATE_WORKFLOW.read_text())
    prompt["1"]["inputs"]["image"] = "face_reference.png"
    prompt["8"]["inputs"].update(width=size, height=size)
    prompt["18"]["inputs"]["steps"] = steps
    return prompt
POSE_WORKFLOW = ROOT / "workflows" / "api" / "pose_check.json"


def tiny_prompt(**unet_inputs) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    prompt["4"]["inputs"].update(width=64, height=64, video_frames=3)
    prompt["6"]["inputs"]["steps"] = 2
    prompt["3"]["inputs"].update(unet_inputs)
    return prompt


@pytest.mark.compat
def test_nodes_are_registered_with_tooltips(server):
    info = server.client.get_json("/object_info")
    assert OUR_NODES <= set(info), f"missing: {OUR_NODES - set(info)}\n{server.import_failures()}"
    for node_id in OUR_NODES:
        node = info[node_id]
        assert node["category"].startswith("Identity Animator/")
        assert node["description"]
        for name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(node["output_tooltips"]), f"{node_id} has an output without tooltip"
    assert "IMPORT FAILED" not in "\n".join(l for l in server.log().splitlines() if "identity-animator" in l)


def test_model_folders_include_yaml_paths_and_onnx(server):
    sa = server.client.get_json("/models/stableanimator")
    assert {"unet.pth", "pose_net.pth", "face_encoder.pth", "glintr100_torch.pth", "unet_from_yaml.pth"} <= set(sa)
    assert sorted(server.client.get_json("/models/dwpose")) == ["dw-ll_ucoco_384.onnx", "yolox_l.onnx"]
    combo = server.client.get_json("/object_info/IDA_LoadAnimationUNet")["IDA_LoadAnimationUNet"]["input"]["required"]["unet_name"]
    assert "unet_from_yaml.pth" in combo[1]["options"]


@pytest.mark.compat
def test_example_workflow_runs_through_the_server(server):
    result = server.client.run(tiny_prompt(), timeout=600)
    assert result.status == "success", result.error
    types = result.event_types()
    assert "execution_start" in types and "progress" in types
    executed = {e["data"]["node"] for e in result.events if e["type"] == "executed"}
    assert "8" in executed
    images = result.outputs["8"]["images"]
    out = server.base_dir / "output" / images[0]["subfolder"] / images[0]["filename"]
    assert out.is_file() and out.stat().st_size > 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 3 and im.size == (64, 64)


def test_unet_from_yaml_folder_loads(server):
    result = server.client.run(tiny_prompt(unet_name="unet_from_yaml.pth", weight_dtype="fp32"), timeout=600)
    assert result.status == "success", result.error


def test_wrong_file_in_unet_slot_gives_a_readable_error(server):
    result = server.client.run(tiny_prompt(unet_name="pose_net.pth"), timeout=300)
    assert result.status == "error"
    assert result.error["node_type"] == "IDA_LoadAnimationUNet"
    assert "PoseNet or Face Encoder file, not the Animation UNet" in result.error["exception_message"]
    # the server stays healthy: the next prompt runs
    assert server.client.run(tiny_prompt(), timeout=600).status == "success"


@pytest.mark.compat
def test_pose_workflow_extract_align_render_preview(server):
    prompt = json.loads(POSE_WORKFLOW.read_text())
    result = server.client.run(prompt, timeout=300)
    assert result.status == "success", result.error
    previews = result.outputs["9"]["images"]
    assert len(previews) == 20
    executed = {e["data"]["node"]: e["data"]["output"] for e in result.events if e["type"] == "executed"}
    poses = json.loads(executed["7"]["openpose_json"][0])      # controlnet_aux-style UI payload
    # the reference is fitted to the generation size first, so the aligned poses are on its 512x512 canvas
    assert len(poses) == 20 and poses[0]["canvas_width"] == 512 and len(poses[0]["people"]) == 2
    saved = result.outputs["10"]["pose_files"][0]
    assert json.loads((server.base_dir / "output" / saved["subfolder"] / saved["filename"]).read_text()) == poses
    from PIL import Image

    img = Image.open(server.base_dir / "temp" / previews[0]["subfolder"] / previews[0]["filename"])
    assert img.size == (512, 512) and max(img.convert("L").getextrema()) > 0


def test_pose_align_with_no_person_in_reference_is_a_readable_error(server):
    prompt = json.loads(POSE_WORKFLOW.read_text())
    prompt["7"]["inputs"]["reference_person"] = 5
    result = server.client.run(prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "IDA_PoseAlign"
    assert "reference_person=5 but the reference shows 2 person(s)" in result.error["exception_message"]


def test_face_workflow_embed_and_boxes(server):
    result = server.client.run(json.loads(FACE_WORKFLOW.read_text()), timeout=300)
    assert result.status == "success", result.error
    assert len(result.outputs["4"]["images"]) == 1 and len(result.outputs["9"]["images"]) == 1


def test_face_embed_without_a_face_is_a_readable_error(server):
    prompt = json.loads(FACE_WORKFLOW.read_text())
    prompt["1"]["inputs"]["image"] = "driving.png"          # a plain blue picture: no face
    prompt = {k: v for k, v in prompt.items() if k in {"1", "2", "3", "4"}}
    result = server.client.run(prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "IDA_FaceEmbed"
    assert "No face found in the reference image" in result.error["exception_message"]


@pytest.mark.compat
def test_full_animation_through_the_server(server):
    """Reference image + driving video -> DWPose -> align -> face -> sampler (two windows) -> saved video."""
    # speed is measured by `make bench`, never asserted here: a loaded CI machine is not a benchmark
    result = server.client.run(animate_prompt(), timeout=600)
    assert result.status == "success", result.error
    videos = result.outputs["20"]["images"]
    path = server.base_dir / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    import av

    with av.open(str(path)) as f:
        n = sum(1 for _ in f.decode(video=0))
        assert n == 20
    sampler_progress = [e for e in result.events if e["type"] == "progress" and e["data"]["node"] == "18"]
    assert sampler_progress and sampler_progress[-1]["data"]["value"] == sampler_progress[-1]["data"]["max"] == 3


def test_cancel_mid_sampling_leaves_the_server_healthy(server):
    state = {"sent": False}

    def interrupt_once_sampling(event):
        if not state["sent"] and event["type"] == "progress" and event["data"].get("node") == "18":
            state["sent"] = True
            server.client.interrupt()

    prompt = animate_prompt(steps=200)
    prompt["18"]["inputs"]["seed"] = 5      # not cached from the previous test
    result = server.client.run(prompt, timeout=600, on_event=interrupt_once_sampling)
    assert state["sent"] and result.status == "interrupted"
    again = animate_prompt(steps=1)
    again["18"]["inputs"]["seed"] = 6
    assert server.client.run(again, timeout=600).status == "success"


def test_keypoints_from_a_controlnet_aux_json_file(server):
    from test_keypoints_skeleton import CN_AUX_FRAME

    (server.base_dir / "input" / "reference_pose.json").write_text(json.dumps([CN_AUX_FRAME]))
    frames = []
    for i in range(5):
        f = json.loads(json.dumps(CN_AUX_FRAME))
        f["people"][0]["pose_keypoints_2d"] = [v * 1.5 + (10 * i if k % 3 == 0 else 0) if k % 3 != 2 else v
                                               for k, v in enumerate(f["people"][0]["pose_keypoints_2d"])]
        frames.append(f)
    (server.base_dir / "input" / "driving_poses.json").write_text(json.dumps(frames))
    result = server.client.run(json.loads(KEYPOINTS_WORKFLOW.read_text()), timeout=300)
    assert result.status == "success", result.error
    assert len(result.outputs["5"]["images"]) == 5
    saved = result.outputs["6"]["pose_files"][0]
    aligned = json.loads((server.base_dir / "output" / saved["subfolder"] / saved["filename"]).read_text())
    assert len(aligned) == 5 and aligned[0]["canvas_width"] == 512
    (server.base_dir / "input" / "broken.json").write_text(json.dumps([{"people": []}]))
    prompt = json.loads(KEYPOINTS_WORKFLOW.read_text())
    prompt["2"]["inputs"]["file"] = "broken.json"
    bad = server.client.run(prompt, timeout=300)
    assert bad.status == "error" and "canvas_width" in bad.error["exception_message"]
