"""The pack imported as ``identity_animator`` from this checkout, whatever its folder is called (the
tests do the same), for the tools that run outside ComfyUI."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pack_module(name: str):
    """``identity_animator.<name>``, e.g. ``pack_module("models.body2d")``."""
    if "identity_animator" not in sys.modules:
        spec = importlib.util.spec_from_file_location("identity_animator", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["identity_animator"] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(f"identity_animator.{name}")
