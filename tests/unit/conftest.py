"""Unit tests import this project's Salt modules directly; the pure helpers of
``_utils/`` are plain modules, and a module's dunders (``__salt__``, ``__utils__``,
``__opts__``) are given through Salt's loader mock (``configure_loader_modules``)."""

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


class Utils(dict):
    """``__utils__`` as Salt's loader gives it: ``"<module>.<function>"`` -> function,
    over the real modules of ``_utils/``."""

    def __init__(self, *names: str):
        super().__init__()
        for name in names:
            module = load("utils", name)
            for attr in dir(module):
                if not attr.startswith("_") and callable(getattr(module, attr)):
                    self[f"{name}.{attr}"] = getattr(module, attr)


def utils() -> Utils:
    return Utils(
        "cabify_weights",
        "cabify_analysis",
        "cabify_plan",
        "cabify_kv",
        "cabify_failpoints",
        "cabify_hostlock",
        "cabify_tasks",
    )
