"""Unit tests import this project's Salt modules directly; Salt's loader is not needed."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def load(kind: str, name: str):
    """Import _<kind>/<name>.py as a module named salt_<kind>_<name>."""
    path = REPO / f"_{kind}" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"salt_{kind}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
