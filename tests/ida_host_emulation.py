"""Newer ComfyUI mechanisms re-created on the CPU host (0.3.75), for tests that must fail if the pack's
answer to them is reverted. Each follows what the host's source does (read, in docs/compatibility.md),
not what the pack expects.
"""
from __future__ import annotations

import torch

import comfy.context_windows as cw


class AllocatorHandle:
    """Stands in for DynamicVRAM's per-module allocation (``_v``/``_pin_state``): a native pointer whose
    destructor frees memory the live VAE still uses, so a copy of it is a double free."""

    def __deepcopy__(self, memo):
        raise RuntimeError("allocator-owned buffer copied: freeing the copy would free the live VAE's memory")

    def __reduce_ex__(self, protocol):
        raise RuntimeError("allocator-owned buffer pickled")


def _lazy_init(self, in_features, out_features, bias=True, device=None, dtype=None):
    # DynamicVRAM: no parameters at construction; they are created from the state dict
    torch.nn.Module.__init__(self)
    self.in_features, self.out_features = in_features, out_features
    self.weight, self.bias, self._lazy_bias = None, None, bias


def _lazy_load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    # takes whatever tensor arrives, in its own dtype and shape, as the host does; reports leftovers
    assign = local_metadata.get("assign_to_params_buffers", False)
    for key, value in state_dict.items():
        name = key[len(prefix):]
        if name in ("weight", "bias"):
            setattr(self, name, torch.nn.Parameter(value if assign else value.clone(), requires_grad=False))
        else:
            unexpected_keys.append(key)
    if self.weight is None:
        missing_keys.append(prefix + "weight")
        self.weight = torch.nn.Parameter(torch.zeros(self.out_features, self.in_features), requires_grad=False)
    if self.bias is None and self._lazy_bias:
        missing_keys.append(prefix + "bias")
        self.bias = torch.nn.Parameter(torch.zeros(self.out_features), requires_grad=False)


def make_linear_lazy(monkeypatch):
    """ComfyUI's Linear (plain, manual-cast and fp8 inherit it) as DynamicVRAM makes it."""
    import comfy.ops

    monkeypatch.setattr(comfy.ops.disable_weight_init.Linear, "__init__", _lazy_init)
    monkeypatch.setattr(comfy.ops.disable_weight_init.Linear, "_load_from_state_dict", _lazy_load)
    probe = comfy.ops.manual_cast.Linear(4, 2)
    assert probe.weight is None and "weight" not in probe.state_dict()   # the emulation bites
    return comfy.ops


def emulate_anchor_frames(monkeypatch):
    """``causal_window_fix`` (newer ``comfy/context_windows.py``, default on): a handler takes the flag;
    when it is on, each window that does not start at frame 0 gets the frame before it as an anchor,
    prepended to every tensor sliced for the window and cut off the model's output again. The window's
    ``index_list`` itself never holds the anchor."""
    handler, window_cls = cw.IndexListContextHandler, cw.IndexListContextWindow
    plain_init, plain_get, plain_evaluate = handler.__init__, window_cls.get_tensor, handler.evaluate_context_windows

    def __init__(self, *args, causal_window_fix=True, **kwargs):
        plain_init(self, *args, **kwargs)
        self.causal_window_fix = causal_window_fix

    def get_tensor(self, full, device=None, dim=None, **kwargs):
        anchor = getattr(self, "causal_anchor_index", None)
        d = self.dim if dim is None else dim
        if anchor is None or (d == 0 and full.shape[d] == 1):
            return plain_get(self, full, device, dim)
        return full[[slice(None)] * d + [[anchor] + list(self.index_list)]].to(device)

    def evaluate_context_windows(self, calc_cond_batch, model, x_in, conds, timestep, windows, model_options,
                                 device=None, first_device=None):
        if self.causal_window_fix:
            for _, window in windows:
                if 0 <= window.index_list[0] - 1 < x_in.size(self.dim):
                    window.causal_anchor_index = window.index_list[0] - 1
        results = plain_evaluate(self, calc_cond_batch, model, x_in, conds, timestep, windows, model_options,
                                 device, first_device)
        trim = lambda r, t: t.narrow(self.dim, 1, t.size(self.dim) - 1) if hasattr(r.window, "causal_anchor_index") else t
        return [r._replace(sub_conds_out=[trim(r, t) for t in r.sub_conds_out]) for r in results]

    monkeypatch.setattr(handler, "__init__", __init__)
    monkeypatch.setattr(window_cls, "get_tensor", get_tensor)
    monkeypatch.setattr(handler, "evaluate_context_windows", evaluate_context_windows)


def emulate_dynamic_unet_loading(monkeypatch):
    """Newer core loading for dynamic VRAM: ``comfy.model_patcher.CoreModelPatcher`` (rebound to the
    dynamic patcher at startup, ``is_dynamic()`` True) and ``BaseModel.load_model_weights(sd, prefix,
    assign=...)``, which pops the prefixed keys and loads them non-strictly, only logging leftovers.
    Returns the list of ``assign`` values the pack passed."""
    import logging

    import comfy.model_base
    import comfy.model_patcher

    class DynamicPatcher(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

    calls = []

    def load_model_weights(self, sd, unet_prefix="", assign=False):
        calls.append(assign)
        to_load = {k[len(unet_prefix):]: sd.pop(k) for k in list(sd) if k.startswith(unet_prefix)}
        missing, unexpected = self.diffusion_model.load_state_dict(to_load, strict=False, assign=assign)
        if missing or unexpected:
            logging.warning("unet missing: %s unexpected: %s", missing, unexpected)
        return self

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicPatcher, raising=False)
    monkeypatch.setattr(comfy.model_base.BaseModel, "load_model_weights", load_model_weights)
    return calls
