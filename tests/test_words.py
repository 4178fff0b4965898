"""Words an artist reads: every socket and widget has a tooltip, the settings that act only with one
sampler say so first (and the frontend greys them out), and error messages name nodes by their display
names, never by their ``IDA_`` ids.

Fast on purpose: the node schemas are read from the source (importing the node modules pulls in
ComfyUI's model code, over 10 s of CPU); tests/test_packaging.py checks the built schemas too."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

HEUN_ONLY_PREFIX = "heun_churn only:"
NODE_FILES = sorted((ROOT / "nodes").glob("*.py"))


class Module:
    """One node module's source: its string constants, helper functions and node schemas."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text())
        self.consts, self.funcs = {}, {}
        for stmt in self.tree.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                value = stmt.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    self.consts[stmt.targets[0].id] = value.value
                elif isinstance(value, ast.Lambda):
                    self.funcs[stmt.targets[0].id] = value
            elif isinstance(stmt, ast.FunctionDef):
                self.funcs[stmt.name] = stmt

    def text(self, expr) -> str | None:
        """A tooltip expression's text ('' for none), or None when it cannot be read from the source."""
        if expr is None:
            return ""
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name) and expr.id in self.consts:
            return self.consts[expr.id]
        if isinstance(expr, ast.JoinedStr):
            return "".join(v.value for v in expr.values if isinstance(v, ast.Constant))
        return None

    def items(self, expr):
        """(name, tooltip text) of every input or output that ``expr`` (a schema's list) declares."""
        if isinstance(expr, ast.List):
            for element in expr.elts:
                yield from self.items(element)
        elif isinstance(expr, ast.Starred) and isinstance(expr.value, ast.Call):
            helper = self.funcs.get(getattr(expr.value.func, "id", None))
            if isinstance(helper, ast.Lambda) and isinstance(helper.body, ast.List):
                yield from self.items(helper.body)
            else:
                yield ast.unparse(expr), None
        elif isinstance(expr, ast.Call) and getattr(expr.func, "attr", None) in ("Input", "Output"):
            keywords = {k.arg: k.value for k in expr.keywords}
            name = expr.args[0] if expr.args else keywords.get("display_name")
            yield getattr(name, "value", ast.unparse(expr)), self.text(keywords.get("tooltip"))
        elif isinstance(expr, ast.Call) and isinstance(self.funcs.get(getattr(expr.func, "id", None)), ast.FunctionDef):
            yield from self._helper_items(expr, self.funcs[expr.func.id])
        else:
            yield ast.unparse(expr), None

    def _helper_items(self, call, helper):
        """A helper that makes an input (``_weights_combo(hint, tooltip)``): the argument it passes on as
        the tooltip, named by the helper's first argument."""
        params = [a.arg for a in helper.args.args]
        passed = {**dict(zip(params, call.args)), **{k.arg: k.value for k in call.keywords}}
        for node in ast.walk(helper):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Input":
                tip = next((k.value for k in node.keywords if k.arg == "tooltip"), None)
                if isinstance(tip, ast.Name) and tip.id in passed:
                    first = passed.get(params[0]) if params else None
                    yield getattr(first, "value", ast.unparse(call)), self.text(passed[tip.id])
                    return
        yield ast.unparse(call), None

    def schemas(self):
        """node id -> (display name, [(input, tooltip)], [(output, tooltip)]) of every IDA_ node here."""
        out = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Schema":
                keywords = {k.arg: k.value for k in node.keywords}
                node_id = getattr(keywords.get("node_id"), "value", None)
                if isinstance(node_id, str) and node_id.startswith("IDA_"):
                    out[node_id] = (getattr(keywords.get("display_name"), "value", None),
                                    list(self.items(keywords.get("inputs", ast.List(elts=[])))),
                                    list(self.items(keywords.get("outputs", ast.List(elts=[])))))
        return out


@pytest.fixture(scope="module")
def schemas():
    out = {}
    for path in NODE_FILES:
        out.update(Module(path).schemas())
    return out


def test_the_source_reader_finds_every_node(schemas):
    """Every class a NODES list registers has a schema here (so a node the reader missed fails)."""
    registered = set()
    for path in NODE_FILES:
        tree = ast.parse(path.read_text())
        classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "NODES":
                for name in stmt.value.elts:
                    ids = [n.value for n in ast.walk(classes[name.id]) if isinstance(n, ast.Constant)
                           and isinstance(n.value, str) and n.value.startswith("IDA_")]
                    registered.add(ids[0])
    assert registered and registered <= set(schemas), sorted(registered - set(schemas))


def test_every_input_and_output_has_a_tooltip(schemas):
    unreadable = [f"{node_id}: {name}" for node_id, (_, inputs, outputs) in schemas.items()
                  for name, tip in [*inputs, *outputs] if tip is None]
    assert not unreadable, ("tooltips this test cannot read from the source (write them as string literals, "
                            f"module-level constants or helper arguments): {unreadable}")
    missing = [f"{node_id}.{name}" for node_id, (_, inputs, outputs) in schemas.items()
               for name, tip in [*inputs, *outputs] if not tip.strip()]
    assert not missing, f"no tooltip: {missing}"


def heun_churn_only_inputs() -> set[str]:
    """The Face Refine Sampler inputs that reach the sampler only for heun_churn: the keys of the
    ``extra`` dict its ``execute`` builds (read from the source, so a new one is not missed)."""
    tree = ast.parse((ROOT / "nodes" / "refine.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FaceRefineSampler")
    execute = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "execute")
    for node in ast.walk(execute):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "extra":
            dicts = [d for d in ast.walk(node.value) if isinstance(d, ast.Dict)]
            return {key.value for d in dicts for key in d.keys}
    raise AssertionError("FaceRefineSampler.execute builds no `extra` options")


def test_heun_churn_only_settings_say_so_first(schemas):
    only = heun_churn_only_inputs()
    assert only == {"s_churn", "s_tmin", "s_tmax", "s_noise"}
    tips = dict(schemas["IDA_FaceRefineSampler"][1])
    assert {name for name, tip in tips.items() if tip.startswith(HEUN_ONLY_PREFIX)} == only
    assert "heun_churn" in tips["sampler"] and "euler" in tips["sampler"]


def test_the_frontend_greys_out_exactly_those_settings():
    js = (ROOT / "web" / "js" / "ida_refine_widgets.js").read_text()
    listed = re.search(r"HEUN_ONLY\s*=\s*\[([^\]]*)\]", js)
    assert listed, "web/js/ida_refine_widgets.js lists no HEUN_ONLY widgets"
    assert set(re.findall(r"\"(\w+)\"", listed.group(1))) == heun_churn_only_inputs()
    assert '"IDA_FaceRefineSampler"' in js and 'CHOICE = "sampler"' in js and 'USES_THEM = "heun_churn"' in js
    refine = (ROOT / "nodes" / "refine.py").read_text()
    assert 'SAMPLERS = {"euler": sample_euler, "heun_churn": sample_heun_churn}' in refine   # the only other: euler


def _message_parts(node) -> list[str]:
    """The literal text of a message expression, and ``{...node_id...}`` for an f-string field that
    puts a node id in it."""
    parts = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            parts.append(n.value)
        elif isinstance(n, ast.FormattedValue) and "node_id" in ast.unparse(n.value):
            parts.append("{" + ast.unparse(n.value) + "} (IDA_...)")
    return parts


def _messages(tree):
    """(line, text) of what the pack says to the artist: raised errors, the messages its rules and
    ``*_problem`` helpers return (they become validation and run-time errors), and log lines."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            yield from ((node.lineno, s) for s in _message_parts(node.exc))
        elif isinstance(node, ast.FunctionDef) and (node.name == "rules" or node.name.endswith("problem")):
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and ret.value is not None:
                    yield from ((ret.lineno, s) for s in _message_parts(ret.value))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and getattr(node.func.value, "id", None) == "logger"):
            yield from ((node.lineno, s) for s in _message_parts(node))


def test_no_error_message_names_a_node_by_its_id():
    found = []
    for folder in ("nodes", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            messages = _messages(ast.parse(path.read_text()))
            found += [f"{path.relative_to(ROOT)}:{line}: {text!r}" for line, text in messages if "IDA_" in text]
    assert not found, "messages must name nodes by their display names:\n" + "\n".join(found)


def test_checks_name_the_node_by_its_display_name(schemas):
    for node_id, (display, _, _) in schemas.items():
        assert display and not display.startswith("IDA_"), f"{node_id} has no display name of its own"
    from identity_animator.nodes.pose import PoseRender
    from identity_animator.nodes.validation import InputError

    # what the host's validation report and the run-time refusal carry: the same text, display name first
    message = PoseRender.validate_inputs(width=100, height=512)
    assert message.startswith("Render Skeleton: the generation size 100x512"), message
    with pytest.raises(InputError, match=r"^Render Skeleton: the generation size 100x512"):
        PoseRender.execute(pose_keypoint=[], width=100, height=512)


def test_the_reported_exception_type_is_readable():
    """ComfyUI reports ``module.ClassName`` (execution.full_type_name); a pack's module would be its
    folder's path on disk."""
    from identity_animator.nodes.validation import InputError, InvalidInput

    assert InputError is InvalidInput
    assert f"{InvalidInput.__module__}.{InvalidInput.__qualname__}" == "Identity Animator.InvalidInput"
