"""Backends by name: where a job's ranks run (see base.py for the interface).

``--launcher NAME`` on ``launch`` picks one; without it ``choose_launcher`` detects it: ``--hosts`` ->
``ssh``, inside a Slurm allocation (``SLURM_JOB_ID`` set) -> ``slurm``, else ``local``.  job.json keeps
the name (``spec.launcher``) so ``status``, ``stop`` and ``resume`` reopen the same backend.

The built-in backends are found by module path and imported only when asked for (``--help`` stays
fast, and a backend whose module is missing from a build fails with a clear message, not at import).
A new backend registers itself::

    from orchestrator.backends import register
    register("k8s", "mypkg.k8s:KubernetesBackend")      # or register("k8s", KubernetesBackend)
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Type, Union

from orchestrator.backends.base import Backend, NodeView, RankStats
from orchestrator.jobspec import SpecError

if TYPE_CHECKING:
    from orchestrator.jobspec import JobSpec

__all__ = ["Backend", "BackendError", "NodeView", "RankStats", "choose_launcher", "get_backend", "names",
           "open_backend", "register"]

_BUILTIN = {
    "local": "orchestrator.backends.local:LocalBackend",
    "ssh": "orchestrator.backends.ssh:SSHBackend",
    "slurm": "orchestrator.backends.slurm:SlurmBackend",
}


class BackendError(SpecError):
    """An unknown or unavailable backend (bad input: exit 2, nothing started)."""


class Registry:
    """Backend classes by name; values are classes or ``"module:Class"`` paths imported on first use."""

    def __init__(self, entries: Optional[Mapping[str, Union[str, Type[Backend]]]] = None) -> None:
        self._entries: Dict[str, Union[str, Type[Backend]]] = dict(entries or {})

    def register(self, name: str, backend: Union[str, Type[Backend]]) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"backend name {name!r}: use letters, digits, '-' or '_'")
        if not isinstance(backend, str) and not (isinstance(backend, type) and issubclass(backend, Backend)):
            raise TypeError(f"backend {name!r}: expected a Backend subclass or 'module:Class', got {backend!r}")
        self._entries[name] = backend

    def names(self) -> List[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Type[Backend]:
        entry = self._entries.get(name)
        if entry is None:
            raise BackendError(f"--launcher {name}: unknown launcher; choose one of {', '.join(self.names())}")
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            try:
                cls = getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name == module:   # the backend's own module, not one of its dependencies
                    raise BackendError(f"--launcher {name}: this build has no {name} backend "
                                       f"({module.replace('.', '/')}.py is missing); choose one of "
                                       f"{', '.join(n for n in self.names() if n != name)}") from None
                raise
            except AttributeError:
                raise BackendError(f"--launcher {name}: {module} defines no {attr}") from None
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise BackendError(f"--launcher {name}: {entry} is not a Backend subclass")
            entry = self._entries[name] = cls
        return entry


REGISTRY = Registry(_BUILTIN)


def register(name: str, backend: Union[str, Type[Backend]]) -> None:
    """Add (or replace) a backend under ``name``: a ``Backend`` subclass or ``"module:Class"``."""
    REGISTRY.register(name, backend)


def get_backend(name: str) -> Type[Backend]:
    """The backend class registered as ``name``; ``BackendError`` (worded for ``--launcher``) if none."""
    return REGISTRY.get(name)


def names() -> List[str]:
    return REGISTRY.names()


def choose_launcher(explicit: Optional[str], hosts: Optional[str],
                    environ: Optional[Mapping[str, str]] = None) -> str:
    """``--launcher`` if given, else ``ssh`` with ``--hosts``, ``slurm`` inside an allocation, else ``local``."""
    if explicit:
        return explicit
    if hosts:
        return "ssh"
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        return "slurm"
    return "local"


def open_backend(spec: "JobSpec", log: Optional[Callable[[str], None]] = None) -> Backend:
    """The backend object for a job (``spec.launcher``; detected when empty).  Connects nowhere yet."""
    name = spec.launcher or choose_launcher(None, spec.hosts)
    return get_backend(name)(spec, log)
