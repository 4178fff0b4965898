"""PoseNet, Face Encoder and ArcFace iresnet against independent re-statements of the published
formulas (``shared/reference/stableanimator.md`` §1.2-1.4), on the same tiny random weights, fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from identity_animator.models.checkpoint import load_state_dict
from identity_animator.models.face_encoder import FaceEncoder
from identity_animator.models.iresnet import IResNet
from identity_animator.models.pose_net import PoseNet

TOL = 1e-5


def posenet_reference(sd, x):
    # published table: conv index -> stride (kernel 4 at the three downsampling steps), padding 1, SiLU after each
    for idx, stride in [(0, 1), (2, 2), (4, 1), (6, 2), (8, 1), (10, 2), (12, 1), (14, 1)]:
        x = F.silu(F.conv2d(x, sd[f"conv_layers.{idx}.weight"], sd[f"conv_layers.{idx}.bias"], stride=stride, padding=1))
    return F.conv2d(x, sd["final_proj.weight"], sd["final_proj.bias"]) * sd["scale"]


def test_posenet_matches_published_formula(tiny_set):
    sd = load_state_dict(str(tiny_set["pose_net.pth"]))
    net = PoseNet.from_state_dict(sd)
    x = torch.rand(3, 3, 64, 48) * 2 - 1
    out = net(x)
    assert out.shape == (3, 64, 8, 6)  # [F, model_channels, H/8, W/8]
    assert (out - posenet_reference(sd, x)).abs().max() < TOL
    assert torch.equal(net(x.unsqueeze(0)), out)  # 5-D input is flattened over frames


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])


def face_encoder_reference(sd, id_embeds, clip_embeds, num_tokens=4, dim_head=64):
    d = sd["norm.weight"].shape[0]
    h = F.linear(F.gelu(F.linear(id_embeds, sd["proj.0.weight"], sd["proj.0.bias"])), sd["proj.2.weight"], sd["proj.2.bias"])
    lat = _ln(h.view(-1, num_tokens, d), sd, "norm")
    x = F.linear(clip_embeds, sd["fusion_model.proj_in.weight"], sd["fusion_model.proj_in.bias"])
    layer = 0
    while f"fusion_model.layers.{layer}.0.to_q.weight" in sd:
        p = f"fusion_model.layers.{layer}"
        xn, ln = _ln(x, sd, f"{p}.0.norm1"), _ln(lat, sd, f"{p}.0.norm2")
        q = ln @ sd[f"{p}.0.to_q.weight"].T
        kv = torch.cat([xn, ln], dim=1) @ sd[f"{p}.0.to_kv.weight"].T
        k, v = kv.split(kv.shape[-1] // 2, dim=-1)
        heads = q.shape[-1] // dim_head
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, dim_head).permute(0, 2, 1, 3)
        attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / dim_head ** 0.5, dim=-1) @ split(v)
        lat = attn.permute(0, 2, 1, 3).reshape(lat.shape[0], lat.shape[1], -1) @ sd[f"{p}.0.to_out.weight"].T + lat
        ff = F.gelu(_ln(lat, sd, f"{p}.1.0") @ sd[f"{p}.1.1.weight"].T) @ sd[f"{p}.1.3.weight"].T
        lat = ff + lat
        layer += 1
    out = F.linear(lat, sd["fusion_model.proj_out.weight"], sd["fusion_model.proj_out.bias"])
    return _ln(out, sd, "fusion_model.norm_out")


def test_face_encoder_matches_published_formula(tiny_set):
    sd = load_state_dict(str(tiny_set["face_encoder.pth"]))
    enc = FaceEncoder.from_state_dict(sd)
    id_embeds = torch.randn(2, 512) * 20  # raw (not normalised) ArcFace embeddings are large
    clip = torch.randn(2, 1, 1024)
    out = enc(id_embeds, clip)
    assert out.shape == (2, 4, 1024)
    assert (out - face_encoder_reference(sd, id_embeds, clip)).abs().max() < TOL
    # shortcut=True (not used at inference) adds the projected tokens back
    assert not torch.allclose(enc(id_embeds, clip, shortcut=True), out)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)


def iresnet_reference(sd, x):
    x = F.prelu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"), sd["prelu.weight"])
    layer = 1
    while f"layer{layer}.0.conv1.weight" in sd:
        b = 0
        while f"layer{layer}.{b}.conv1.weight" in sd:
            p, stride = f"layer{layer}.{b}", 2 if b == 0 else 1
            out = F.conv2d(_bn(x, sd, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(_bn(out, sd, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = out + x
            b += 1
        layer += 1
    x = F.linear(_bn(x, sd, "bn2").flatten(1), sd["fc.weight"], sd["fc.bias"])
    return F.batch_norm(x, sd["features.running_mean"], sd["features.running_var"], sd["features.weight"], sd["features.bias"], False, 0.0, 1e-5)


def test_iresnet_matches_published_formula(tiny_set):
    sd = load_state_dict(str(tiny_set["glintr100_torch.pth"]))
    net = IResNet.from_state_dict(sd)
    assert net.input_size == 112
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    out = net(x)
    assert out.shape == (2, 512)
    ref = iresnet_reference(sd, x)
    assert (out - ref).abs().max() <= TOL * ref.abs().max()


def test_iresnet_gives_gradients_to_its_input(tiny_set):
    net = IResNet.from_state_dict(load_state_dict(str(tiny_set["glintr100_torch.pth"])))
    x = (torch.rand(1, 3, 112, 112) * 2 - 1).requires_grad_(True)
    net(x).norm().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
