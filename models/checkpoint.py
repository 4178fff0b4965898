"""Safe loading of the official checkpoint files and conversion to safetensors.

The official StableAnimator weights are torch pickles (``.pth``). A pickle can run arbitrary code
when loaded, so they are only ever opened with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers and refuses everything else.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, truncated, or not the expected kind.

    The message always names the file (when known), what is wrong, and what to do about it.
    """


def preferred_path(path: str) -> str:
    """Return the ``.safetensors`` twin of a ``.pth`` file when one exists beside it.

    ``convert`` writes that twin; it loads faster, maps lazily, and needs no unpickling.
    """
    root, ext = os.path.splitext(path)
    if ext.lower() in (".pth", ".pt", ".bin", ".ckpt"):
        twin = root + ".safetensors"
        if os.path.isfile(twin):
            return twin
    return path


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a flat ``name -> tensor`` state dict from ``.safetensors`` or a torch pickle, safely."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file

        try:
            return dict(load_file(path, device="cpu"))
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise CheckpointError(
                f"Could not read {path} as safetensors ({exc}). The file is damaged or incomplete; "
                "download it again."
            ) from exc
    return _load_pickle_weights_only(path)


def _load_pickle_weights_only(path: str) -> dict[str, torch.Tensor]:
    try:
        # mmap keeps a 6 GB unet.pth from being read into memory twice
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip_checkpoint(path))
    except pickle.UnpicklingError as exc:
        global_ref = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if global_ref is None:  # not a pickle of code, just not a pickle
            raise CheckpointError(
                f"Could not read {path}: it is not a torch checkpoint, or it is damaged "
                f"(size {os.path.getsize(path):,} bytes). Download it again."
            ) from exc
        raise CheckpointError(
            f"Refused to load {path}: it needs code execution to unpickle (it references "
            f"{global_ref.group(1)}). Only plain tensor state dicts are loaded. Use the official file, "
            "or re-save it as a state dict of tensors (torch.save(model.state_dict(), ...))."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"Could not read {path} ({_first_line(exc)}). The file is truncated or damaged "
            f"(size {os.path.getsize(path):,} bytes); download it again."
        ) from exc
    return _as_flat_state_dict(obj, path)


def _is_zip_checkpoint(path: str) -> bool:
    return zipfile.is_zipfile(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _as_flat_state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    # Training scripts sometimes wrap the weights; the official files are bare state dicts.
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path} is not a flat state dict: entries {bad[:5]} are not tensors."
        )
    return dict(obj)


def convert_to_safetensors(src: str, dst: str | None = None) -> str:
    """Write ``src`` (a ``.pth`` state dict) as ``.safetensors`` next to it; returns the new path."""
    from safetensors.torch import save_file

    dst = dst or os.path.splitext(src)[0] + ".safetensors"
    sd = _load_pickle_weights_only(src) if not src.endswith(".safetensors") else load_state_dict(src)
    # safetensors refuses shared or non-contiguous storage; mmap'd pickles may have both
    sd = {k: v.contiguous().clone() for k, v in sd.items()}
    tmp = dst + ".partial"
    save_file(sd, tmp, metadata={"format": "pt", "converted_from": os.path.basename(src)})
    os.replace(tmp, dst)
    logger.info("Converted %s -> %s (%d tensors)", src, dst, len(sd))
    return dst


def module_shapes(build: Callable[..., nn.Module]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the module that ``build(device="meta", operations=torch.nn)`` makes.

    The expected layout comes from plain torch layers on the meta device (no memory, no init cost),
    never from the module that will hold the weights: a host may create layers whose weights do not
    exist until they are loaded (ComfyUI's DynamicVRAM leaves ``Linear.weight`` as ``None``).
    """
    return {k: tuple(v.shape) for k, v in build(device="meta", operations=nn).state_dict().items()}


def require_tensors(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str,
                    path: str = "") -> None:
    """Raise a readable error unless ``sd`` has exactly the ``expected`` names, each with its shape."""
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        shapes = [f"{k} is {list(sd[k].shape)}, expected {list(expected[k])}" for k in wrong]
        raise CheckpointError(describe_key_mismatch(what, path, missing, unexpected, shapes))


def cast_floating(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype`` (others untouched), so a weight created at load time never keeps the
    file's dtype."""
    if dtype is None:
        return dict(sd)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                 what: str, path: str = "", dtype: torch.dtype | None = None) -> nn.Module:
    """Load ``sd`` into ``model`` after checking every tensor against ``expected``; then confirm that the
    module holds exactly those tensors (a lazily created layer that ignored one would be caught here)."""
    require_tensors(sd, expected, what, path)
    try:
        model.load_state_dict(cast_floating(sd, dtype), strict=True)
    except RuntimeError as exc:   # the module disagrees with its own expected layout
        raise CheckpointError(f"{what}{f' ({path})' if path else ''} could not be loaded: {' '.join(str(exc).split())[:600]}") from exc
    require_tensors(model.state_dict(), expected, f"{what} after loading", path)
    return model


def describe_key_mismatch(what: str, path: str, missing: list[str], unexpected: list[str],
                          wrong_shapes: list[str] = ()) -> str:
    where = f" ({path})" if path else ""
    parts = [f"{what}{where} does not match the expected layout."]
    if missing:
        parts.append(f"{len(missing)} missing tensors, e.g. {', '.join(missing[:6])}.")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors, e.g. {', '.join(unexpected[:6])}.")
    if wrong_shapes:
        parts.append(f"{len(wrong_shapes)} tensors of the wrong shape, e.g. {'; '.join(wrong_shapes[:4])}.")
    parts.append(
        "The file is truncated, from another model, or was saved by a different version. "
        "Use the official file from the StableAnimator release for this slot."
    )
    return " ".join(parts)
