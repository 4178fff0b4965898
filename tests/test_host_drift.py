"""What newer ComfyUI (0.38, DynamicVRAM on by default on NVIDIA GPUs) changes for the pack, emulated on
the CPU host: each test re-creates one host mechanism and fails if the pack's answer to it is reverted.

* lazy Linear layers (weights created only when their state dict arrives),
* VAE modules that must never be copied (allocator-owned buffers),
* the context handler's anchor frame (``causal_window_fix``),
* out-of-memory reported through another exception class (``model_management.is_oom``).

docs/compatibility.md says which of these were also checked on a real newer host.
"""
from __future__ import annotations

import copy

import pytest
import torch

import comfy.model_management as mm
from identity_animator.nodes.decode import _decode_on_cpu, decode_chunks
from conftest import decode_with_gradients
from ida_host_emulation import AllocatorHandle, emulate_dynamic_unet_loading, make_linear_lazy


# --- VAE modules that refuse to be copied --------------------------------------------------------

@pytest.fixture
def uncopyable_vae(svd_vae, monkeypatch):
    for module in svd_vae.first_stage_model.modules():
        monkeypatch.setattr(module, "_v", AllocatorHandle(), raising=False)
    with pytest.raises(RuntimeError, match="allocator-owned"):
        copy.deepcopy(svd_vae.first_stage_model.decoder)        # the emulation bites
    return svd_vae


def test_refinement_decoder_is_built_not_copied_and_leaves_the_vae_intact(uncopyable_vae):
    vae = uncopyable_vae
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.5
    before = vae.decode(z)
    dec, out, zz = decode_with_gradients(vae, z)
    assert zz.grad is not None and zz.grad.abs().sum() > 0
    assert torch.allclose(((out.detach() + 1) / 2).clamp(0, 1).movedim(1, -1), before.float(), atol=1e-3)
    assert not any(p is q for p in dec.decoder.parameters() for q in vae.first_stage_model.parameters())
    del dec, out, zz
    assert torch.equal(vae.decode(z), before)         # the live VAE decodes bit-identically afterwards


def test_cpu_decode_is_built_not_copied(uncopyable_vae):
    vae = uncopyable_vae
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 0.5
    before = vae.decode(z)
    decode = _decode_on_cpu(vae)
    assert torch.allclose(decode(z), before, atol=1e-3)
    del decode
    assert torch.equal(vae.decode(z), before)


# --- out-of-memory through another exception class ------------------------------------------------

class AcceleratorOOM(RuntimeError):
    """Like ``torch.AcceleratorError`` carrying an out-of-memory code: not an ``OOM_EXCEPTION``."""


def _decoder_that_fails_above(limit, exc_type, calls):
    def decode(z):
        calls.append(z.shape[0])
        if z.shape[0] > limit:
            raise exc_type("CUDA error: out of memory (simulated)")
        return z.mean(1, keepdim=True).repeat(1, 3, 1, 1).movedim(1, -1)
    return decode


def test_oom_of_another_class_is_retried_with_smaller_chunks(monkeypatch):
    assert not issubclass(AcceleratorOOM, mm.OOM_EXCEPTION)
    monkeypatch.setattr(mm, "is_oom", lambda e: isinstance(e, (mm.OOM_EXCEPTION, AcceleratorOOM)), raising=False)
    calls = []
    z = torch.randn(7, 4, 2, 2)
    out = decode_chunks(_decoder_that_fails_above(2, AcceleratorOOM, calls), z, 8)
    assert calls[:3] == [7, 3, 1] and torch.allclose(out[..., 0], z.mean(1))


def test_without_a_host_oom_test_only_the_oom_class_is_retried(monkeypatch):
    monkeypatch.delattr(mm, "is_oom", raising=False)    # ComfyUI 0.3.75
    with pytest.raises(AcceleratorOOM):
        decode_chunks(_decoder_that_fails_above(2, AcceleratorOOM, []), torch.randn(4, 4, 2, 2), 8)
    calls = []
    decode_chunks(_decoder_that_fails_above(2, mm.OOM_EXCEPTION, calls), torch.randn(4, 4, 2, 2), 8)
    assert calls[:2] == [4, 2]


def test_errors_that_are_not_oom_are_never_retried(monkeypatch):
    monkeypatch.setattr(mm, "is_oom", lambda e: False, raising=False)
    calls = []
    with pytest.raises(AcceleratorOOM):
        decode_chunks(_decoder_that_fails_above(2, AcceleratorOOM, calls), torch.randn(4, 4, 2, 2), 8)
    assert calls == [4]


# --- Linear layers whose weights exist only once loaded -------------------------------------------

@pytest.fixture
def lazy_linear(monkeypatch):
    return make_linear_lazy(monkeypatch)


@pytest.fixture(scope="module")
def tiny_unet(tiny_set):
    from identity_animator.models.checkpoint import load_state_dict
    from identity_animator.models.unet_convert import convert_stableanimator_unet

    return convert_stableanimator_unet(load_state_dict(str(tiny_set["unet.pth"]))).unet


LINEAR_KEY = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"


@pytest.mark.parametrize("weight_dtype, core_path", [("fp16", False), ("fp8_e4m3fn", True)],
                         ids=["fp16 legacy patcher", "fp8 core dynamic loading"])
def test_unet_loads_with_lazy_linear_exactly_as_with_eager_layers(monkeypatch, tiny_unet, weight_dtype, core_path):
    from identity_animator.nodes.svd_model import build_svd_model

    sd = dict(tiny_unet)
    assert sd[LINEAR_KEY].dtype == torch.float32
    eager = build_svd_model(sd, weight_dtype, "eager").model.diffusion_model.state_dict()
    make_linear_lazy(monkeypatch)
    assigned = emulate_dynamic_unet_loading(monkeypatch) if core_path else None
    patcher = build_svd_model(sd, weight_dtype, "lazy")
    lazy = patcher.model.diffusion_model.state_dict()
    if core_path:   # the host's own path was taken, with weights assigned as a dynamic patcher wants
        assert assigned == [True] and patcher.is_dynamic()
        assert set(sd) == set(tiny_unet)       # the caller's dict was not emptied
    assert set(lazy) == set(eager) == set(sd)
    # same dtype and bits for every tensor: no Linear weight kept the file's fp32
    assert lazy[LINEAR_KEY].dtype != torch.float32
    assert all(lazy[k].dtype == eager[k].dtype and torch.equal(lazy[k].float(), eager[k].float()) for k in sd)


@pytest.mark.parametrize("fault", ["missing", "unexpected", "wrong shape", "extra bias"])
def test_unet_with_lazy_linear_still_names_a_bad_tensor(lazy_linear, tiny_unet, fault):
    from identity_animator.models.checkpoint import CheckpointError
    from identity_animator.nodes.svd_model import build_svd_model

    sd = dict(tiny_unet)
    key = LINEAR_KEY
    if fault == "missing":
        del sd[key]
    elif fault == "unexpected":
        key = "input_blocks.1.1.transformer_blocks.0.attn1.to_x.weight"
        sd[key] = torch.zeros(4, 4)
    elif fault == "wrong shape":
        sd[key] = sd[key][:, :-1].clone()
    else:   # to_q has no bias: a lazy Linear would take one silently
        key = LINEAR_KEY.replace(".weight", ".bias")
        sd[key] = torch.zeros(sd[LINEAR_KEY].shape[0])
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        build_svd_model(sd, "fp32", "lazy test")


@pytest.fixture(scope="module")
def tiny_face_encoder(tiny_set):
    from identity_animator.models.checkpoint import load_state_dict

    return load_state_dict(str(tiny_set["face_encoder.pth"]))


def test_face_encoder_loads_with_lazy_linear_in_the_chosen_dtype(lazy_linear, tiny_face_encoder):
    from identity_animator.models.face_encoder import FaceEncoder

    sd = dict(tiny_face_encoder)
    enc = FaceEncoder.from_state_dict(sd, dtype=torch.bfloat16, operations=lazy_linear.manual_cast, source="t")
    eager = FaceEncoder.from_state_dict(sd, dtype=torch.bfloat16, source="t")
    loaded = enc.state_dict()
    assert set(loaded) == set(sd) and {v.dtype for v in loaded.values()} == {torch.bfloat16}
    id_embeds, clip = torch.randn(1, eager.id_dim), torch.randn(1, 1, eager.clip_dim)
    with torch.no_grad():
        assert torch.equal(enc(id_embeds.bfloat16(), clip.bfloat16()), eager(id_embeds.bfloat16(), clip.bfloat16()))


@pytest.mark.parametrize("fault", ["missing", "unexpected", "wrong shape"])
def test_face_encoder_with_lazy_linear_still_names_a_bad_tensor(lazy_linear, tiny_face_encoder, fault):
    from identity_animator.models.checkpoint import CheckpointError
    from identity_animator.models.face_encoder import FaceEncoder

    sd = dict(tiny_face_encoder)
    key = "fusion_model.layers.0.0.to_out.weight"
    if fault == "missing":
        del sd[key]
    elif fault == "unexpected":
        key = "fusion_model.layers.0.0.to_out.bias"
        sd[key] = torch.zeros(sd["fusion_model.layers.0.0.to_out.weight"].shape[0])
    else:
        sd[key] = sd[key][:-1].clone()
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        FaceEncoder.from_state_dict(sd, operations=lazy_linear.manual_cast, source="t")
