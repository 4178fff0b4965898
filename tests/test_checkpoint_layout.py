"""The official checkpoint layouts: tiny test files match them, every tensor is accounted for, and bad
files fail with a message that says what is wrong."""
from __future__ import annotations

import os

import pytest
import torch

from identity_animator.models.checkpoint import CheckpointError, convert_to_safetensors, load_state_dict, preferred_path
from identity_animator.models.face_encoder import FaceEncoder
from identity_animator.models.iresnet import IResNet
from identity_animator.models.pose_net import PoseNet
from identity_animator.models.unet_convert import convert_stableanimator_unet, spatial_attention_blocks

OFFICIAL = {"unet.pth": "Animation/unet.pth", "pose_net.pth": "Animation/pose_net.pth",
            "face_encoder.pth": "Animation/face_encoder.pth", "glintr100_torch.pth": "Animation/glintr100_torch.pth"}


def meta_state_dict(shapes: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_tiny_files_use_the_official_key_names(tiny_set, official_keys, name):
    tiny = load_state_dict(str(tiny_set[name]))
    assert set(tiny) == set(official_keys[OFFICIAL[name]])


def test_official_unet_converts_with_every_tensor_placed(official_keys):
    sd = meta_state_dict(official_keys["Animation/unet.pth"])
    conv = convert_stableanimator_unet(sd)
    assert len(conv.unet) + 2 * len(conv.id_adapter) == 1460
    assert len(conv.id_adapter) == 16
    assert sorted(conv.id_adapter) == sorted(spatial_attention_blocks(conv.layout))
    widths = {b: kv["to_k"].shape for b, kv in conv.id_adapter.items()}
    assert widths[("input", 1)] == (320, 1024)
    assert widths[("input", 4)] == (640, 1024)
    assert widths[("middle", 0)] == (1280, 1024)
    assert widths[("output", 11)] == (320, 1024)
    assert conv.unet["input_blocks.0.0.weight"].shape == (320, 8, 3, 3)


def test_official_small_modules_build_from_their_keys(official_keys):
    pn = PoseNet.specs_from_state_dict(meta_state_dict(official_keys["Animation/pose_net.pth"]))
    assert pn == ([(3, 3, 3), (3, 16, 4), (16, 16, 3), (16, 32, 4), (32, 32, 3), (32, 64, 4), (64, 64, 3), (64, 128, 3)], 320)
    fe = FaceEncoder.config_from_state_dict(meta_state_dict(official_keys["Animation/face_encoder.pth"]))
    assert fe == dict(id_dim=512, id_hidden=1024, cross_dim=1024, num_tokens=4, clip_dim=1024, depth=4, inner=1024, ff_hidden=4096)
    with torch.device("meta"):
        enc = FaceEncoder(**fe)
    assert sum(p.numel() for p in enc.parameters()) == 57_183_232  # the published parameter count
    ir = IResNet.config_from_state_dict(meta_state_dict(official_keys["Animation/glintr100_torch.pth"]))
    assert ir == dict(blocks=[3, 13, 30, 3], widths=[64, 128, 256, 512], embedding_dim=512, feature_hw=7)
    with torch.device("meta"):
        net = IResNet(**ir)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == official_keys["Animation/glintr100_torch.pth"]
    with torch.device("meta"):
        pose = PoseNet(*pn)
    assert sum(p.numel() for p in pose.parameters()) == 205_557


def test_truncated_unet_names_the_missing_tensors(official_keys):
    sd = meta_state_dict(official_keys["Animation/unet.pth"])
    del sd["up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor.id_to_v.weight"]
    with pytest.raises(CheckpointError, match="id_to_k without id_to_v"):
        convert_stableanimator_unet(sd)
    sd = meta_state_dict(official_keys["Animation/unet.pth"])
    sd["down_blocks.0.resnets.0.spatial_res_block.lora.weight"] = torch.empty(1, device="meta")
    with pytest.raises(CheckpointError, match="spatial_res_block.lora.weight"):
        convert_stableanimator_unet(sd)


def test_wrong_variants_are_named(official_keys):
    plain_svd = {k: v for k, v in meta_state_dict(official_keys["Animation/unet.pth"]).items() if "processor" not in k}
    with pytest.raises(CheckpointError, match="plain SVD UNet"):
        convert_stableanimator_unet(plain_svd)
    with pytest.raises(CheckpointError, match="PoseNet or Face Encoder"):
        convert_stableanimator_unet(meta_state_dict(official_keys["Animation/pose_net.pth"]))
    with pytest.raises(CheckpointError, match="ComfyUI/SGM layout"):
        convert_stableanimator_unet({"model.diffusion_model.input_blocks.0.0.weight": torch.empty(1)})
    with pytest.raises(CheckpointError, match="Not a PoseNet"):
        PoseNet.from_state_dict(meta_state_dict(official_keys["Animation/face_encoder.pth"]))
    with pytest.raises(CheckpointError, match="Not a Face Encoder"):
        FaceEncoder.from_state_dict(meta_state_dict(official_keys["Animation/pose_net.pth"]))
    with pytest.raises(CheckpointError, match="Not an ArcFace"):
        IResNet.from_state_dict(meta_state_dict(official_keys["Animation/face_encoder.pth"]))


def test_partial_small_checkpoint_is_refused(tiny_set):
    sd = load_state_dict(str(tiny_set["face_encoder.pth"]))
    del sd["fusion_model.layers.3.1.3.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors, e\.g\. fusion_model\.layers\.3\.1\.3\.weight"):
        FaceEncoder.from_state_dict(sd)


class NotWeights:
    def __init__(self):
        self.payload = "anything"


def test_pickles_that_need_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": NotWeights()}, path)
    with pytest.raises(CheckpointError, match=r"Refused to load .*needs code execution.*NotWeights"):
        load_state_dict(str(path))


def test_truncated_file_says_download_again(tiny_set, tmp_path):
    data = open(tiny_set["pose_net.pth"], "rb").read()
    cut = tmp_path / "pose_net.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_state_dict(str(cut))
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(str(tmp_path / "absent.pth"))


def test_convert_writes_safetensors_that_the_loader_prefers(tiny_set, tmp_path):
    src = tmp_path / "pose_net.pth"
    src.write_bytes(open(tiny_set["pose_net.pth"], "rb").read())
    assert preferred_path(str(src)) == str(src)
    dst = convert_to_safetensors(str(src))
    assert dst.endswith(".safetensors") and os.path.isfile(dst)
    assert preferred_path(str(src)) == dst
    a, b = load_state_dict(str(src)), load_state_dict(dst)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
