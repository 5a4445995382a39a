"""Backends (where trials run), by name. Each is ``run(ctx, options) -> None``, imported lazily."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from attntune.search.registry import Registry

BACKENDS: Registry[str] = Registry("backend")
BACKENDS.register("optuna", "attntune.search.backends.local:run")
BACKENDS.register("ray", "attntune.search.backends.ray_backend:run")


def get_backend(name: str) -> Callable[..., Any]:
    module, _, attr = BACKENDS.get(name, "backend").partition(":")
    return getattr(importlib.import_module(module), attr)


def get_backend_module(name: str) -> Any:
    """The backend's module: ``run(ctx, options)`` and optionally ``prepare(job, options)`` (start
    workers before the study opens) and ``shutdown(prepared)``."""
    module, _, _ = BACKENDS.get(name, "backend").partition(":")
    return importlib.import_module(module)
