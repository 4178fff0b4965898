"""Packaging rules: requirements mirror pyproject, models/ stays pure torch, importing the pack has
no side effects, every official weight is loaded safely."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib

from conftest import ROOT


def test_requirements_match_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert reqs == deps


def test_tool_comfy_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert meta["DisplayName"] and meta["PublisherId"]
    # the declared range is the one the compatibility record and the README state
    bound = meta["requires-comfyui"]
    assert bound.startswith(">=0.3.75,<")
    assert f"`{bound}`" in (ROOT / "docs" / "compatibility.md").read_text()
    assert f"`{bound}`" in (ROOT / "README.md").read_text()


def test_models_package_imports_no_comfyui():
    banned = {"comfy", "comfy_api", "folder_paths", "server", "nodes", "comfy_extras"}
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_importing_the_pack_has_no_side_effects():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "heavy = [n for n in ('torch', 'comfy', 'folder_paths', 'onnxruntime', 'insightface') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert m.WEB_DIRECTORY == './web' and callable(m.comfy_entrypoint)\n"
        "assert not hasattr(m, 'NODE_CLASS_MAPPINGS')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_unsafe_torch_load_and_no_print():
    for folder in ("models", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for call in re.findall(r"torch\.load\([^)]*\)", text):
                assert "weights_only=True" in call, f"{path.name}: {call}"
            assert not re.search(r"^\s*print\(", text, re.M), f"print() in {path.name}"
            assert "strict=False" not in text


def all_nodes():
    import asyncio

    from identity_animator.nodes import IdentityAnimatorExtension

    return asyncio.run(IdentityAnimatorExtension().get_node_list())


def test_every_node_has_a_help_page_tooltips_and_the_prefix(comfy_folders):
    for node in all_nodes():
        schema = node.define_schema()
        assert schema.node_id.startswith("IDA_") and schema.category.startswith("Identity Animator/")
        page = ROOT / "web" / "docs" / f"{schema.node_id}.md"
        assert page.is_file(), f"missing help page {page.name}"
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
        for item in schema.outputs:
            assert item.tooltip, f"{schema.node_id} output {item.display_name} has no tooltip"
