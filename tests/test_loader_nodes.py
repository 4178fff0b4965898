"""Loader nodes executed in-process on real ComfyUI objects, with the tiny official-layout files."""
from __future__ import annotations

import copy

import pytest
import torch

import comfy.model_patcher
from identity_animator.models.checkpoint import CheckpointError, load_state_dict
from identity_animator.models.face_encoder import FaceEncoder
from identity_animator.models.id_adapter import IDAdapterWeights
from identity_animator.models.iresnet import IResNet
from identity_animator.models.pose_net import PoseNet
from identity_animator.nodes import loaders


def run(node, **kw):
    return node.execute(**kw).result


def test_unet_loader_splits_out_the_id_adapter(comfy_folders, tiny_set):
    model, id_adapter = run(loaders.LoadAnimationUNet, unet_name="unet.pth", weight_dtype="fp16")
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert type(model.model).__name__ == "SVD_img2vid"
    assert isinstance(id_adapter, IDAdapterWeights)
    assert len(id_adapter.blocks) == 16 and id_adapter.cross_attention_dim == 1024
    assert id_adapter.dtype == torch.float16  # follows the UNet, never below fp16
    raw = load_state_dict(str(tiny_set["unet.pth"]))
    k = raw["down_blocks.1.attentions.1.transformer_blocks.0.attn2.processor.id_to_k.weight"]
    assert torch.equal(id_adapter.blocks[("input", 5)]["to_k"], k.half())
    # every UNet tensor went to the model and every ID tensor to the adapter
    n_unet = sum(1 for _ in model.model.diffusion_model.state_dict())
    assert n_unet + 2 * len(id_adapter.blocks) == len(raw)
    # ComfyUI deep-copies model options on clone: the weights must be shared, not copied
    assert copy.deepcopy(id_adapter) is id_adapter


def test_fp8_unet_keeps_the_id_adapter_in_fp16(comfy_folders):
    model, id_adapter = run(loaders.LoadAnimationUNet, unet_name="unet.pth", weight_dtype="fp8_e4m3fn")
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float8_e4m3fn
    assert id_adapter.dtype == torch.float16


def test_small_module_loaders(comfy_folders):
    (pose,) = run(loaders.LoadPoseNet, pose_net_name="pose_net.pth")
    assert isinstance(pose.model, PoseNet) and pose.model.out_channels == 64
    (face,) = run(loaders.LoadFaceEncoder, face_encoder_name="face_encoder.pth", weight_dtype="bf16")
    assert isinstance(face.model, FaceEncoder) and face.model.proj[0].weight.dtype == torch.bfloat16
    (arc,) = run(loaders.LoadArcFace, glintr100_name="glintr100_torch.pth")
    assert isinstance(arc, IResNet) and arc.input_size == 112


def test_face_encoder_loader_output_runs_with_manual_cast(comfy_folders):
    (face,) = run(loaders.LoadFaceEncoder, face_encoder_name="face_encoder.pth", weight_dtype="fp16")
    out = face.model(torch.randn(1, 512), torch.randn(1, 1, 1024))  # fp32 input, fp16 weights
    assert out.shape == (1, 4, 1024) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_loaders_refuse_files_of_another_kind(comfy_folders):
    with pytest.raises(CheckpointError, match="Not a PoseNet"):
        run(loaders.LoadPoseNet, pose_net_name="face_encoder.pth")
    with pytest.raises(CheckpointError, match="Not a Face Encoder"):
        run(loaders.LoadFaceEncoder, face_encoder_name="unet.pth", weight_dtype="fp32")
    with pytest.raises(CheckpointError, match="Not an ArcFace"):
        run(loaders.LoadArcFace, glintr100_name="pose_net.pth")
    # refused as a choice the list does not offer, before any file is looked up
    with pytest.raises(ValueError, match="pose_net_name: 'absent.pth' is not in ComfyUI/models/stableanimator/"):
        run(loaders.LoadPoseNet, pose_net_name="absent.pth")
    with pytest.raises(ValueError, match=r"'\.\./\.\./\.\./etc/passwd' is not in ComfyUI/models/stableanimator/"):
        run(loaders.LoadPoseNet, pose_net_name="../../../etc/passwd")


def test_loader_prefers_the_converted_safetensors(comfy_folders, caplog):
    from identity_animator.models.checkpoint import convert_to_safetensors

    convert_to_safetensors(str(comfy_folders / "stableanimator" / "pose_net.pth"))
    with caplog.at_level("INFO"):
        (pose,) = run(loaders.LoadPoseNet, pose_net_name="pose_net.pth")
    assert "pose_net.safetensors" in caplog.text
    (comfy_folders / "stableanimator" / "pose_net.safetensors").unlink()


def test_svd_base_loader_uses_comfyui_detection(comfy_folders, svd_xt_file):
    import folder_paths

    ckpts = comfy_folders / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    link = ckpts / "svd_xt.safetensors"
    if not link.exists():
        link.symlink_to(svd_xt_file)
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(ckpts)], folder_paths.supported_pt_extensions)
    folder_paths.filename_list_cache.clear()
    clip_vision, vae = run(loaders.LoadSVDBase, ckpt_name="svd_xt.safetensors")
    assert type(vae.first_stage_model.decoder).__name__ == "VideoDecoder"
    emb = clip_vision.encode_image(torch.rand(1, 64, 64, 3), crop=False).image_embeds
    assert emb.shape == (1, 1024)


def test_comfyui_image_only_checkpoint_loader_accepts_the_test_svd_xt(comfy_folders, svd_xt_file):
    import folder_paths
    from comfy_extras.nodes_video_model import ImageOnlyCheckpointLoader

    ckpts = comfy_folders / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    if not (ckpts / "svd_xt.safetensors").exists():
        (ckpts / "svd_xt.safetensors").symlink_to(svd_xt_file)
    folder_paths.folder_names_and_paths["checkpoints"] = ([str(ckpts)], folder_paths.supported_pt_extensions)
    folder_paths.filename_list_cache.clear()
    model, clip_vision, vae = ImageOnlyCheckpointLoader().load_checkpoint("svd_xt.safetensors")
    assert type(model.model).__name__ == "SVD_img2vid"
    assert clip_vision is not None and vae is not None


def test_convert_command(tiny_set, tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    src = tmp_path / "face_encoder.pth"
    shutil.copy(tiny_set["face_encoder.pth"], src)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoints.py"), str(src), str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 1  # one of the two failed, and it says which and why
    assert "broken.pth" in done.stderr and "not a torch checkpoint" in done.stderr
    out = tmp_path / "face_encoder.safetensors"
    assert out.is_file()
    a, b = load_state_dict(str(src)), load_state_dict(str(out))
    assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)
