"""Input checks every pack node makes itself, whatever the host checks.

ComfyUI checks a widget's declared range and options only for values written in the prompt, and
skips that for every input its node's ``validate_inputs`` names (for all of them when it takes
``**kwargs``); values that come through a link (a primitive node, another node's output) are never
checked and reach ``validate_inputs`` as ``None``. So a pack node:

* declares its cross-input rules in ``rules`` and the inputs they read in ``rule_inputs``
  (values may be ``None``: not known before the run);
* gets a ``validate_inputs`` made from its schema that names only those inputs and its option lists
  (which 0.3.75 never checks for V3 nodes), so the host still range-checks the rest and a message is
  repeated once per input it concerns, not once per input of the node;
* is checked again when it runs: every declared range and option, and its rules, on the values it
  actually got, before any work is done.
"""
from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Mapping

from comfy_api.latest import io


class InvalidInput(ValueError):
    """An input value a node cannot use; the message names the node by its display name, the input and the fix.

    ComfyUI reports an exception's type as ``module.ClassName``, and a custom node pack's module is named
    after the pack folder's path on disk (``/home/.../custom_nodes/<folder>.nodes.validation``); the
    frontend shows that type in its error report and the issues panel. So it is given the pack's name:
    the type reads ``Identity Animator.InvalidInput``.
    """

    __module__ = "Identity Animator"


InputError = InvalidInput   # the name the nodes raise it by


def _declared(cls) -> list:
    return [i for i in cls.define_schema().inputs if isinstance(i, (io.Int.Input, io.Float.Input, io.Combo.Input))]


def _range_problem(inp, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a whole number" if isinstance(inp, io.Int.Input) else "a number"
        return f"{inp.id} is {value!r}; it must be {kind}."
    if isinstance(inp, io.Int.Input) and isinstance(value, float) and not value.is_integer():
        return f"{inp.id} is {value!r}; it must be a whole number."
    if isinstance(value, float) and not math.isfinite(value):
        return f"{inp.id} is {value!r}; it must be a finite number."
    low, high = inp.min, inp.max
    if low is not None and value < low or high is not None and value > high:
        return f"{inp.id} is {value}; it must be between {low} and {high}. Set it inside that range."
    return None


def _model_file_problem(cls, inp, value) -> str | None:
    """For a loader's file list: the official file, its folder, address and download command."""
    from ..models import catalog
    from .folders import missing_model_message

    official = catalog.by_name(catalog.FILE_INPUTS.get((cls.define_schema().node_id, inp.id), ""))
    if official is None:
        return None
    return f"{inp.id}: {missing_model_message(official.folder, value, official)}"


def _option_problem(cls, inp, value) -> str | None:
    options = list(inp.options or [])
    if value in options:
        return None
    model = _model_file_problem(cls, inp, value)
    if model:
        return model
    shown = ", ".join(map(str, options[:12])) + (f" (and {len(options) - 12} more)" if len(options) > 12 else "")
    return (f"{inp.id} is {value!r}, which is not one of its choices: {shown or 'none are available'}. Pick one of "
            "them; a file added since the list was made appears after refreshing the node definitions (press R).")


def declared_problems(cls, values: Mapping) -> list[str]:
    """Messages for the known values in ``values`` outside their declared range or options."""
    problems = []
    for inp in _declared(cls):
        value = values.get(inp.id)
        if value is None or inp.id in cls.own_checks:
            continue
        problem = _option_problem(cls, inp, value) if isinstance(inp, io.Combo.Input) else _range_problem(inp, value)
        if problem:
            problems.append(problem)
    return problems


def _display(cls) -> str:
    return cls.define_schema().display_name or cls.__name__


def _problems(cls, values: Mapping) -> list[str]:
    """Declared ranges and options first; the rules only on values that passed them."""
    problems = declared_problems(cls, values)
    if not problems:
        rule = cls.rules(values)
        problems = [rule] if rule else []
    return problems


def verdict(cls, **values) -> bool | str:
    """For ``validate_inputs``: True, or one message for all of the node's problems, led by the node's display
    name as when it runs (the host's validation report names the node only by its id, ``IDA_...``)."""
    problems = _problems(cls, values)
    return True if not problems else f"{_display(cls)}: " + " ".join(problems)


def _checked_execute(execute):
    signature = inspect.signature(execute)

    @functools.wraps(execute)
    def run(cls, *args, **kwargs):
        values = signature.bind(cls, *args, **kwargs).arguments
        values.pop(next(iter(signature.parameters)))
        problems = _problems(cls, values)
        if problems:
            raise InputError(f"{_display(cls)}: " + " ".join(problems))
        return execute(cls, *args, **kwargs)

    run.ida_checked = True
    return run


class _SchemaValidation:
    """``validate_inputs`` for a node class, with a signature made from its schema on first use (not
    at import: a schema lists model files). The host reads that signature to decide what to pass."""

    def __init__(self):
        self._signatures = {}

    def _signature(self, owner) -> inspect.Signature:
        if owner not in self._signatures:
            try:
                inputs = owner.define_schema().inputs
            except NotImplementedError:   # the base class itself, which has no schema
                inputs = []
            combos = [i.id for i in inputs if isinstance(i, io.Combo.Input)]
            names = list(dict.fromkeys([*combos, *owner.rule_inputs]))
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
            params = [inspect.Parameter("cls", kind)] + [inspect.Parameter(n, kind, default=None) for n in names]
            self._signatures[owner] = inspect.Signature(params)
        return self._signatures[owner]

    def __get__(self, obj, owner):
        def validate_inputs(cls, **values):
            return verdict(cls, **values)

        validate_inputs.__signature__ = self._signature(owner)
        return types.MethodType(validate_inputs, owner)


class Node(io.ComfyNode):
    """Base of every pack node: its declared ranges, options and ``rules`` hold when it runs."""

    # the inputs ``rules`` reads (checked at validation where the prompt gives them)
    rule_inputs: tuple[str, ...] = ()
    # inputs whose declared options are only a hint (a file list) and which ``rules`` checks instead
    own_checks: tuple[str, ...] = ()
    validate_inputs = _SchemaValidation()

    @classmethod
    def rules(cls, values: Mapping) -> str | None:
        """Cross-input rules: a message naming the inputs and the fix, or None. Values may be None."""
        return None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("execute")
        # the host makes locked copies of node classes, which arrive here already checked
        if isinstance(own, classmethod) and not getattr(own.__func__, "ida_checked", False):
            cls.execute = classmethod(_checked_execute(own.__func__))


def known(*values) -> bool:
    """True when none of ``values`` is None (an input linked from another node is unknown until it runs)."""
    return all(v is not None for v in values)


# Four times the area of StableAnimator's largest training size (576x1024). Past it the VAE alone
# needs several GiB per frame chunk and the spatial attention grows with the square of the pixels;
# the model was never trained there, so such a size is refused before anything loads.
MAX_GENERATION_PIXELS = 4 * 576 * 1024


def generation_size_problem(width: int, height: int) -> str | None:
    if width % 64 or height % 64:
        return (f"the generation size {width}x{height} is not a multiple of 64 on both sides (StableAnimator: "
                "512x512 or 576x1024). Set width and height in Fit Reference to Size (or in Render Skeleton without it).")
    if width * height > MAX_GENERATION_PIXELS:
        return (f"the generation size {width}x{height} is {width * height / 1e6:.1f} MP, over this pack's limit of "
                f"{MAX_GENERATION_PIXELS / 1e6:.2f} MP (four times StableAnimator's largest training size, 576x1024). "
                "Lower width and height in Fit Reference to Size (or in Render Skeleton without it); upscale the video "
                "afterwards instead.")
    return None


def memory_problem(what: str, nbytes: int, fix: str) -> str | None:
    """A message when making ``nbytes`` at once would take more than half the memory free now: such an
    allocation gets the server killed by the system (every queued prompt lost), so it is refused."""
    import psutil   # a ComfyUI requirement

    free = psutil.virtual_memory().available
    if nbytes <= free // 2:
        return None
    return (f"{what} would take {nbytes / 2**30:.1f} GiB at once, more than half of the {free / 2**30:.1f} GiB of "
            f"memory free now. {fix}")
