"""Readable errors for model files that load but are not what their slot needs.

* Tensor layouts checked against each other. The small StableAnimator modules take their widths from
  the checkpoint; read from one tensor, a single damaged shape would define its own configuration, pass
  every later check, and fail at run time with a matrix-size error far from the file. Here each width is
  read from every tensor that carries it and the majority decides, so the tensor that disagrees is the
  one named.
* ONNX files that onnxruntime cannot open, described by file instead of by onnxruntime's status code.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from .checkpoint import CheckpointError, describe_key_mismatch

MAX_LISTED = 4     # problems quoted in one message; more only add noise


@dataclass(frozen=True)
class Width:
    """An axis whose size is ``times`` x the width called ``name`` (shared by every axis of that name)."""

    name: str
    times: int = 1


@dataclass(frozen=True)
class Fixed:
    """An axis whose size the official model fixes; ``why`` is quoted when a file disagrees."""

    size: int
    why: str


Axis = Width | Fixed


def agreed_widths(sd: Mapping, layout: Mapping[str, tuple[Axis, ...]], what: str, path: str,
                  fix: str) -> dict[str, int]:
    """The widths that the tensors of ``sd`` agree on, given ``layout`` (tensor name -> its axes).

    Raises :class:`CheckpointError` when a tensor is missing or unexpected, or when a shape disagrees with
    the others or with a fixed size; the message names each such tensor, its shape, the shape it needs
    and ``fix``."""
    _require_names(sd, layout, what, path)
    shapes = {k: tuple(int(n) for n in sd[k].shape) for k in layout}
    votes = _votes(shapes, layout)
    widths, ties = _majorities(votes)
    problems = [p for name, axes in layout.items() if (p := _shape_problem(name, shapes[name], axes, widths, votes))]
    problems += [_disagreement(width, votes[width]) for width in ties]
    if problems:
        where = f" ({path})" if path else ""
        more = len(problems) - MAX_LISTED
        listed = " ".join(problems[:MAX_LISTED]) + (f" ({more} more.)" if more > 0 else "")
        head = "a tensor whose shape does not fit the others" if len(problems) == 1 and not ties else \
            "tensors whose shapes do not fit together"
        raise CheckpointError(f"{what}{where} has {head}. {listed} The file is damaged or was changed after "
                              f"training. {fix}")
    return widths


def _require_names(sd, layout, what, path) -> None:
    missing, unexpected = sorted(set(layout) - set(sd)), sorted(set(sd) - set(layout))
    if missing or unexpected:
        raise CheckpointError(describe_key_mismatch(what, path, missing, unexpected))


def _votes(shapes, layout) -> dict[str, list[tuple[str, int, float]]]:
    """Width name -> ``(tensor, axis, size / times)`` for every axis that carries it."""
    votes: dict[str, list[tuple[str, int, float]]] = {}
    for name, axes in layout.items():
        shape = shapes[name]
        if len(shape) != len(axes):     # a tensor of the wrong rank says nothing reliable about any width
            continue
        for i, axis in enumerate(axes):
            if isinstance(axis, Width):
                size = shape[i] // axis.times if shape[i] % axis.times == 0 else shape[i] / axis.times
                votes.setdefault(axis.name, []).append((name, i, size))
    return votes


def _majorities(votes) -> tuple[dict[str, int], list[str]]:
    widths, ties = {}, []
    for width, cast in votes.items():
        ranked = Counter(size for _, _, size in cast).most_common()
        top, count = ranked[0]
        if (len(ranked) > 1 and ranked[1][1] == count) or not isinstance(top, int):
            ties.append(width)
        else:
            widths[width] = top
    return widths, ties


def _expected(axes, widths) -> list:
    return [a.size if isinstance(a, Fixed) else widths[a.name] * a.times if a.name in widths else "?" for a in axes]


def _shape_problem(name, shape, axes, widths, votes) -> str | None:
    expected = _expected(axes, widths)
    if len(shape) != len(axes):
        rank = "be a single number" if not axes else f"have {len(axes)} dimensions, {expected}"
        return f"{name} is {list(shape)} but must {rank}."
    reasons = []
    for i, (axis, size, want) in enumerate(zip(axes, shape, expected)):
        if want == "?" or size == want:
            continue
        if isinstance(axis, Fixed):
            reasons.append(f"dimension {i} must be {want} ({axis.why})")
        else:
            agree = [t for t, _, s in votes[axis.name] if s == widths[axis.name] and t != name]
            times = f"{axis.times} x " if axis.times > 1 else ""
            reasons.append(f"dimension {i} is {times}the {axis.name}, which is {widths[axis.name]} in "
                           f"{_some(agree)}")
    return f"{name} is {list(shape)}, expected {expected}: {'; '.join(reasons)}." if reasons else None


def _disagreement(width, cast) -> str:
    carriers = ", ".join(f"{t} (dimension {i}: {s:g})" for t, i, s in cast)
    return f"These tensors must agree on the {width} but do not, so it cannot be told which one is damaged: {carriers}."


def _some(names: list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names) or "no other tensor"
    return f"{names[0]}, {names[1]} and {len(names) - 2} more tensors"


# --- ONNX files ------------------------------------------------------------------------------------

# onnxruntime's status names for a file that is not a readable model (as opposed to, say, a GPU problem)
_DAMAGED = ("INVALID_PROTOBUF", "INVALID_GRAPH", "NO_MODEL", "No graph was found", "Protobuf parsing failed")


def onnx_load_message(path: str, exc: BaseException, what: str) -> str:
    """Plain sentences for an onnxruntime failure to open ``path`` (``what`` names the slot or model)."""
    said = " ".join(str(exc).split()) or type(exc).__name__
    size = f"{os.path.getsize(path):,} bytes" if os.path.isfile(path) else "missing"
    name = os.path.basename(path)
    if any(mark in said for mark in _DAMAGED):
        return (f"{what} '{name}' ({path}, {size}) is not a readable ONNX model: the file is damaged or incomplete. "
                f"Delete it and download it again (python tools/models.py download {name}, for the official "
                f"files). (onnxruntime: {said[:300]})")
    return (f"onnxruntime could not open {what} '{name}' ({path}, {size}): {said[:400]}. If the file is damaged "
            "or incomplete, delete it and download it again.")
