"""Sandbox resources as YAML: the same documents a cluster takes as `Sandbox` custom resources.

One-machine mode reads them from a file; the operator will compile the same documents. Only
the `Sandbox` kind is the node agent's; other kinds in the same file are left to their owners.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, SandboxConfig

API_VERSION = "baponi.dev/v1alpha1"

# spec field (camelCase, as in the CRD) -> SandboxConfig field
_SANDBOX_FIELDS = {
    "image": "image",
    "cpu": "cpu",
    "pidsMax": "pids_max",
    "maxTimeout": "max_timeout",
    "network": "network",
    "env": "env",
    "outputLimitBytes": "output_limit",
    "tmpBytes": "tmp_bytes",
    "homeBytes": "home_bytes",
    "warm": "warm",
    "maxIdleSeconds": "max_idle_s",
}


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every resource document in a YAML file, checked for apiVersion, kind and name."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for index, document in enumerate(documents):
        where = f"{path}: document {index + 1}"
        if not isinstance(document, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(document).__name__}")
        if document.get("apiVersion") != API_VERSION:
            raise ConfigError(f"{where}: apiVersion must be {API_VERSION!r}, got {document.get('apiVersion')!r}")
        if not isinstance(document.get("kind"), str):
            raise ConfigError(f"{where}: missing kind")
        name = (document.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: missing metadata.name")
    return documents


def sandbox_config(document: dict[str, Any]) -> SandboxConfig:
    """A `Sandbox` document as the agent's configuration; unknown spec fields are errors."""
    name = document["metadata"]["name"]
    spec = document.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"Sandbox {name!r}: spec must be a mapping")
    unknown = sorted(set(spec) - set(_SANDBOX_FIELDS))
    if unknown:
        raise ConfigError(f"Sandbox {name!r}: unknown spec fields {unknown}; known: {sorted(_SANDBOX_FIELDS)}")
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"Sandbox {name!r}: spec.env must map strings to strings")
    try:
        return SandboxConfig(name=name, **{_SANDBOX_FIELDS[k]: v for k, v in spec.items()})
    except ConfigError as exc:
        raise ConfigError(f"Sandbox {name!r}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"Sandbox {name!r}: {exc}") from None


def sandbox_configs(documents: list[dict[str, Any]]) -> list[SandboxConfig]:
    """The Sandbox documents of a file; the built-in `default` is added when none is named so."""
    configs = [sandbox_config(d) for d in documents if d["kind"] == "Sandbox"]
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"Sandbox names defined more than once: {duplicates}")
    if "default" not in names:
        configs.insert(0, SandboxConfig())
    return configs
