"""Safe loading of the official checkpoint files and conversion to safetensors.

The official StableAnimator weights are torch pickles (``.pth``). A pickle can run arbitrary code
when loaded, so they are only ever opened with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers and refuses everything else.

``make convert`` writes a ``.safetensors`` "twin" beside a ``.pth``; the loaders prefer it (no
unpickling, lazy mapping) but only while it still matches its source: the twin records the source's
size, modification time and a hash of its first and last MiB, and a damaged or out-of-date twin is
passed over, with a warning, for the ``.pth`` beside it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors", ".sft")

# What a twin records about its source, in its safetensors metadata (string values only).
SOURCE_NAME = "converted_from"
SOURCE_SIZE = "source_size"
SOURCE_MTIME = "source_mtime_ns"
SOURCE_HASH = "source_head_tail_sha256"
# Hashing the whole 6 GB unet.pth on every load would cost the seconds the twin exists to save.
# A torch zip checkpoint ends with its central directory, which holds a CRC-32 of every tensor
# (and a per-save serialization id), so the last MiB already changes with any tensor's content.
FINGERPRINT_SPAN = 1 << 20

# safetensors' own error for damaged headers; OSError/ValueError for unreadable or odd files
_SAFETENSORS_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unsafe, truncated, or not the expected kind.

    The message always names the file (when known), what is wrong, and what to do about it.
    """


class CheckpointChoice(NamedTuple):
    """Which file to load for the one the user picked, and why another was passed over."""

    path: str
    fallback: str | None = None        # the source to load instead should the twin in ``path`` not read
    warnings: tuple[str, ...] = ()


class LoadedCheckpoint(NamedTuple):
    """Tensors of a checkpoint, the file they came from, and what was passed over on the way."""

    state_dict: dict[str, torch.Tensor]
    path: str                          # the file the tensors came from
    warnings: tuple[str, ...] = ()


def is_safetensors(path: str) -> bool:
    return path.lower().endswith(SAFETENSORS_SUFFIXES)


def twin_path(path: str) -> str | None:
    """The ``.safetensors`` name that ``make convert`` gives a pickle checkpoint, or None for other files."""
    root, ext = os.path.splitext(path)
    return root + ".safetensors" if ext.lower() in PICKLE_SUFFIXES else None


def preferred_path(path: str) -> str:
    """The file to load for ``path``: its ``.safetensors`` twin while that is current, else ``path``.

    Use :func:`load_preferred` to also get the warnings and the fallback on a damaged twin.
    """
    return choose_checkpoint(path).path


def choose_checkpoint(picked: str) -> CheckpointChoice:
    """Pick the twin of ``picked`` when it is readable and still matches ``picked``; say why not otherwise.

    A ``.safetensors`` picked directly is always loaded (the user chose it), with a warning when the
    pickle beside it has changed since it was converted.
    """
    if is_safetensors(picked):
        return CheckpointChoice(picked, warnings=_explicit_twin_warnings(picked))
    twin = twin_path(picked)
    if twin is None or not os.path.isfile(twin):
        return CheckpointChoice(picked)
    if not os.path.isfile(picked):     # only the twin is left: nothing to compare it with
        return CheckpointChoice(twin)
    try:
        metadata = read_metadata(twin)
    except _SAFETENSORS_ERRORS as exc:
        return CheckpointChoice(picked, warnings=(_damaged_twin_warning(twin, picked, exc),))
    reason = stale_reason(twin, metadata, picked)
    if reason:
        return CheckpointChoice(picked, warnings=(_stale_twin_warning(twin, picked, reason),))
    return CheckpointChoice(twin, fallback=picked)


def load_preferred(picked: str) -> LoadedCheckpoint:
    """Load ``picked`` or its current twin; a twin that turns out damaged gives way to ``picked``."""
    choice = choose_checkpoint(picked)
    warnings = choice.warnings
    if choice.fallback is not None:
        try:
            return LoadedCheckpoint(_read_safetensors(choice.path), choice.path, warnings)
        except _SAFETENSORS_ERRORS as exc:  # the header read fine, the tensors did not
            warnings += (_damaged_twin_warning(choice.path, choice.fallback, exc),)
    path = choice.fallback or choice.path
    try:
        return LoadedCheckpoint(load_state_dict(path), path, warnings)
    except CheckpointError as exc:
        if not warnings:
            raise
        # both are unusable: the twin's story belongs in the one message the user sees
        raise CheckpointError(f"{exc} Its twin was no use either: {' '.join(warnings)}") from exc


def read_metadata(path: str) -> dict[str, str]:
    """The safetensors header metadata of ``path`` (reads the header only)."""
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def source_fingerprint(path: str) -> dict[str, str]:
    """Size, modification time and a head+tail hash of ``path``, as safetensors metadata values."""
    st = os.stat(path)
    return {SOURCE_SIZE: str(st.st_size), SOURCE_MTIME: str(st.st_mtime_ns),
            SOURCE_HASH: _head_tail_sha256(path, st.st_size)}


def stale_reason(twin: str, metadata: Mapping[str, str], source: str) -> str | None:
    """Why ``twin`` no longer stands for ``source`` (None while it does)."""
    st = os.stat(source)
    if SOURCE_SIZE not in metadata:
        # written before twins recorded their source: the modification times are all there is
        if st.st_mtime > os.path.getmtime(twin):
            return (f"{os.path.basename(source)} is newer than the twin, and the twin (from an older "
                    "`make convert`) does not record which version it was converted from")
        return None
    try:
        size, mtime = int(metadata[SOURCE_SIZE]), int(metadata.get(SOURCE_MTIME, "-1"))
    except ValueError:
        return "the twin's record of its source is unreadable"
    if size != st.st_size:
        return f"{os.path.basename(source)} is now {st.st_size:,} bytes, the twin was converted from {size:,} bytes"
    if mtime == st.st_mtime_ns:
        return None
    # A copy, a restore or a second download of the same file changes only the time: the hash decides.
    if metadata.get(SOURCE_HASH) != _head_tail_sha256(source, st.st_size):
        return (f"{os.path.basename(source)} has changed since the twin was converted from it "
                "(same size, different content)")
    return None


def _head_tail_sha256(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_SPAN))
        if size > FINGERPRINT_SPAN:
            f.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
            h.update(f.read(FINGERPRINT_SPAN))
    return h.hexdigest()


def _reconvert(source: str) -> str:
    return f'Re-run `make convert FILES="{source}"` to rewrite the twin, or delete it.'


def _damaged_twin_warning(twin: str, source: str, exc: BaseException) -> str:
    return (f"Could not read {twin}, the .safetensors twin converted from {source} ({_first_line(exc)}). "
            f"Loading {source} instead. {_reconvert(source)}")


def _stale_twin_warning(twin: str, source: str, reason: str) -> str:
    return f"{twin} is out of date: {reason}. Loading {source} instead. {_reconvert(source)}"


def _source_beside(twin: str, metadata: Mapping[str, str] | None = None) -> str | None:
    """The pickle that ``twin`` was (or, by its name, would have been) converted from, if it is still there."""
    folder, root = os.path.dirname(twin), os.path.splitext(twin)[0]
    named = (metadata or {}).get(SOURCE_NAME)
    candidates = ([os.path.join(folder, named)] if named else []) + [root + ext for ext in PICKLE_SUFFIXES]
    return next((c for c in candidates if c != twin and os.path.isfile(c)), None)


def _explicit_twin_warnings(path: str) -> tuple[str, ...]:
    try:
        metadata = read_metadata(path)
    except _SAFETENSORS_ERRORS:
        return ()                      # load_state_dict reports the damage, naming the pickle beside it
    source = _source_beside(path, metadata)
    reason = stale_reason(path, metadata, source) if source else None
    if not reason:
        return ()
    return (f"{path} is out of date: {reason}. Loading it anyway, as it was selected; select "
            f"{os.path.basename(source)} to load the original. {_reconvert(source)}",)


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a flat ``name -> tensor`` state dict from ``.safetensors`` or a torch pickle, safely."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if is_safetensors(path):
        try:
            return _read_safetensors(path)
        except _SAFETENSORS_ERRORS as exc:
            raise CheckpointError(damaged_safetensors_message(path, exc)) from exc
    return _load_pickle_weights_only(path)


def damaged_safetensors_message(path: str, exc: BaseException) -> str:
    """What to say about a ``.safetensors`` file that does not read: a twin is re-made, not downloaded."""
    what = f"Could not read {path} as safetensors ({_first_line(exc)}). The file is damaged or incomplete."
    source = _source_beside(path)
    if source is not None:
        return (f"{what} It is the converted twin of {source}: select {os.path.basename(source)} instead. "
                f"{_reconvert(source)}")
    return f"{what} Download it again."


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(path, device="cpu"))


def _load_pickle_weights_only(path: str) -> dict[str, torch.Tensor]:
    try:
        # mmap keeps a 6 GB unet.pth from being read into memory twice
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip_checkpoint(path))
    except pickle.UnpicklingError as exc:
        # Raised "from None": torch's text advises weights_only=False, which would run the file's code,
        # and ComfyUI logs the chained cause of a node's error in full.
        raise CheckpointError(_unpickling_refusal(path, exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"Could not read {path} ({_first_line(exc)}). The file is truncated or damaged "
            f"(size {os.path.getsize(path):,} bytes); download it again."
        ) from exc
    return _as_flat_state_dict(obj, path)


def _unpickling_refusal(path: str, exc: pickle.UnpicklingError) -> str:
    global_ref = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if global_ref is None:  # not a pickle of code, just not a pickle
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
        return (f"Could not read {path}: it is not a torch checkpoint, or it is damaged "
                f"({detail.group(1) + ', ' if detail else ''}size {os.path.getsize(path):,} bytes). Download it again.")
    return (f"Refused to load {path}: it needs code execution to unpickle (it references "
            f"{global_ref.group(1)}). Only plain tensor state dicts are loaded. Use the official file, "
            "or re-save it as a state dict of tensors (torch.save(model.state_dict(), ...)).")


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
    """Write ``src`` (a ``.pth`` state dict) as ``.safetensors`` next to it; returns the new path.

    The twin records ``src``'s size, modification time and head+tail hash, so a loader can tell when
    ``src`` has since been replaced (see :func:`stale_reason`).
    """
    from safetensors.torch import save_file

    dst = dst or os.path.splitext(src)[0] + ".safetensors"
    # taken before reading: a file replaced while it is converted then shows as changed, never as current
    fingerprint = source_fingerprint(src)
    sd = _load_pickle_weights_only(src) if not is_safetensors(src) else load_state_dict(src)
    # safetensors refuses shared or non-contiguous storage; mmap'd pickles may have both
    sd = {k: v.contiguous().clone() for k, v in sd.items()}
    tmp = dst + ".partial"
    save_file(sd, tmp, metadata={"format": "pt", SOURCE_NAME: os.path.basename(src), **fingerprint})
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
