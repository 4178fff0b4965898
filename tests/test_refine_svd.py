"""Face Refine Sampler on ComfyUI's own SVD img2vid graph (supplement section K: HJB face optimisation
helps SVD-family backbones that have no face components): core ImageOnlyCheckpointLoader,
SVD_img2vid_Conditioning, VideoLinearCFGGuidance and SamplerCustomAdvanced with our sampler, through
the real server on tiny random weights."""
from __future__ import annotations

import json

from conftest import ROOT

SVD_WORKFLOW = ROOT / "workflows" / "api" / "svd_img2vid_face_refine.json"
CORE_SVD = {"ImageOnlyCheckpointLoader", "SVD_img2vid_Conditioning", "VideoLinearCFGGuidance", "CFGGuider",
            "SamplerCustomAdvanced"}


def svd_prompt(frames=3, size=64):
    prompt = json.loads(SVD_WORKFLOW.read_text())
    prompt["1"]["inputs"]["image"] = "face_reference.png"
    prompt["2"]["inputs"]["amount"] = frames
    prompt["5"]["inputs"].update(width=size, height=size)      # Face Boxes sets the video size
    prompt["14"]["inputs"]["steps"] = 2
    prompt["18"]["inputs"].update(end_step=1, iterations=1)
    return prompt


def test_workflow_is_the_core_svd_graph_with_our_sampler():
    prompt = json.loads(SVD_WORKFLOW.read_text())
    types = {n["class_type"] for n in prompt.values()}
    assert CORE_SVD <= types
    # no StableAnimator model parts and no KSampler: the face refinement is the only pack piece in sampling
    assert not types & {"KSampler", "IDA_LoadAnimationUNet", "IDA_ApplyStableAnimator", "IDA_AnimationSampler"}
    sampler = next(n for n in prompt.values() if n["class_type"] == "SamplerCustomAdvanced")
    assert prompt[sampler["inputs"]["sampler"][0]]["class_type"] == "IDA_FaceRefineSampler"
    refine = next(n for n in prompt.values() if n["class_type"] == "IDA_FaceRefineSampler")["inputs"]
    assert refine["face_landmarks"] == ["5", 1] and refine["framing"] == "arcface"
    loader = next(k for k, n in prompt.items() if n["class_type"] == "ImageOnlyCheckpointLoader")
    assert refine["vae"] == [loader, 2]


def test_face_refine_sampler_runs_on_the_core_svd_img2vid_graph(server):
    start = len(server.log())
    result = server.client.run(svd_prompt(), timeout=600)
    assert result.status == "success", result.error
    log = server.log()[start:]
    assert "Face refinement: framing arcface, decoder in fp32" in log and "3 of 3 frames with a face" in log
    assert "Face refinement step 0/2: identity similarity" in log and "Face refinement step 1/2" in log
    videos = result.outputs["21"]["images"]
    path = server.base_dir / "output" / videos[0]["subfolder"] / videos[0]["filename"]
    import av

    with av.open(str(path)) as f:
        frames = list(f.decode(video=0))
    assert len(frames) == 3 and (frames[0].width, frames[0].height) == (64, 64)
