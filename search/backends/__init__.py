"""Backends (where trials run), by name; each keeps the contract of ``backends.base.Backend``."""

from __future__ import annotations

import importlib
from typing import Any

from attntune.search.registry import Registry

# "module:class", imported when a search runs: the ray backend imports Ray (seconds), and a job
# file is validated (its backend name checked) without importing either backend.
BACKENDS: Registry[str] = Registry("backend")
BACKENDS.register("optuna", "attntune.search.backends.local:LocalBackend")
BACKENDS.register("ray", "attntune.search.backends.ray_backend:RayBackend")


def get_backend(name: str) -> Any:
    """The backend called ``name`` (a ``backends.base.Backend``; the job's validation imports this
    package, so it must not import the backends' own modules); an unknown name is a ConfigError
    listing the valid ones."""
    module, _, attr = BACKENDS.get(name, "backend").partition(":")
    return getattr(importlib.import_module(module), attr)()
