"""On-disk cache of meta-device specs, so that an architecture vramplan has no pure-Python builder for pays the
transformers import and the meta build once, not on every call.

An entry is one JSON file named by its key: the SHA-256 of the config's canonical JSON, the installed
transformers and torch versions (read from their package metadata, without importing them), and a
fingerprint of the vramplan modules that decide the spec (``spec.py``, ``roles.py``, ``config.py``,
``from_config.py``, ``from_meta.py``), so that an upgrade of either side is a miss, never a stale answer.

Where: ``$VRAMPLAN_CACHE_DIR`` if set (else ``$VRAMPLAN_CACHE``, the root the Hub-config cache of
:func:`vramplan.profiles.cache_dir` uses), else the platform cache folder (``$XDG_CACHE_HOME/vramplan`` or
``~/.cache/vramplan`` on Linux, ``~/Library/Caches/vramplan`` on macOS, ``%LOCALAPPDATA%\\vramplan\\Cache`` on
Windows), under ``specs/``. ``VRAMPLAN_NO_CACHE=1`` turns it off. Writes are atomic
(:func:`vramplan.io.atomic_write_text`); reads are capped at :data:`MAX_ENTRY_BYTES`. A missing, oversized,
corrupt or foreign file (another key, another format) is a miss: the caller rebuilds and overwrites it. The cache
never raises: a folder that cannot be written just means no cache.

No torch or transformers import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import fields
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import VramplanError
from .spec import ModelSpec, Tensor

#: bump when the entry layout changes
FORMAT = 1
#: the largest entry read back (a 1T-parameter MoE with per-expert modules is a few MiB)
MAX_ENTRY_BYTES = 64 * 2**20
#: modules whose code decides what a meta-device spec contains
_BUILDER_MODULES = ("spec.py", "roles.py", "config.py", "from_config.py", "from_meta.py")

_TRUE = ("1", "true", "yes", "on")


def enabled() -> bool:
    """False when ``VRAMPLAN_NO_CACHE`` is set to 1/true/yes/on."""
    return os.environ.get("VRAMPLAN_NO_CACHE", "").strip().lower() not in _TRUE


def cache_dir() -> Path:
    """The folder holding cached specs (it may not exist yet)."""
    # VRAMPLAN_CACHE is the older name of the same root (vramplan.profiles.cache_dir keeps Hub configs there)
    root = os.environ.get("VRAMPLAN_CACHE_DIR") or os.environ.get("VRAMPLAN_CACHE")
    if root:
        return Path(os.path.expanduser(root)) / "specs"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")) / "vramplan" / "Cache"
    elif sys.platform == "darwin":
        base = Path(os.path.expanduser("~/Library/Caches")) / "vramplan"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "vramplan"
    return base / "specs"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=1)
def builder_fingerprint() -> str:
    """SHA-256 over the source of the modules that build a spec (changes with any edit to them)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _BUILDER_MODULES:
        try:
            h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
        except OSError:
            h.update(name.encode() + b"\0missing\0")
    return h.hexdigest()


def spec_key(config: Mapping[str, Any], *, transformers_version: str | None = None,
             torch_version: str | None = None) -> str | None:
    """The cache key of ``config`` (hex SHA-256), or None when the config is not plain JSON data.

    The versions default to the installed packages'; they are parameters so that tests can vary them.
    """
    try:
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return None
    parts = {
        "format": FORMAT,
        "config": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        "transformers": transformers_version if transformers_version is not None else _version("transformers"),
        "torch": torch_version if torch_version is not None else _version("torch"),
        "builder": builder_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


_SCALARS = tuple(f.name for f in fields(ModelSpec) if f.name not in ("tensors", "config", "origin"))
_TENSOR_FIELDS = tuple(f.name for f in fields(Tensor))


def _encode(spec: ModelSpec, key: str) -> str:
    doc = {
        "format": FORMAT,
        "key": key,
        "spec": {name: getattr(spec, name) for name in _SCALARS},
        "tensor_fields": list(_TENSOR_FIELDS),
        "tensors": [[getattr(t, f) for f in _TENSOR_FIELDS] for t in spec.tensors],
    }
    return json.dumps(doc, separators=(",", ":"))


def _decode(raw: bytes, key: str, config: Mapping[str, Any]) -> ModelSpec | None:
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
        return None
    if doc.get("tensor_fields") != list(_TENSOR_FIELDS):
        return None
    scalars = doc.get("spec")
    if not isinstance(scalars, dict) or set(scalars) != set(_SCALARS):
        return None
    tensors = []
    for row in doc["tensors"]:
        name, shape, role, module_type, layer, tied_to = row
        if not (isinstance(name, str) and isinstance(shape, list) and isinstance(role, str)
                and isinstance(module_type, str) and (layer is None or type(layer) is int)
                and (tied_to is None or isinstance(tied_to, str))
                and all(type(d) is int and d >= 0 for d in shape)):
            return None
        tensors.append(Tensor(name, tuple(shape), role, module_type, layer, tied_to))
    return ModelSpec(**scalars, tensors=tuple(tensors), config=dict(config), origin="meta")


def load(key: str, config: Mapping[str, Any], name: str) -> ModelSpec | None:
    """The cached spec for ``key`` (named ``name``, carrying ``config``), or None on any kind of miss."""
    if not enabled():
        return None
    from ..io import read_bytes

    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        spec = _decode(read_bytes(path, MAX_ENTRY_BYTES, what="cached spec"), key, config)
    except (VramplanError, OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return None          # corrupt, truncated, oversized or foreign: rebuild
    if spec is None:
        return None
    # the name is not part of the key: name it as a fresh build would (assemble: name, _name_or_path, model_type)
    want = name or str(config.get("_name_or_path") or spec.model_type)
    if want != spec.name:
        from dataclasses import replace

        spec = replace(spec, name=want)
    return spec


def store(key: str, spec: ModelSpec) -> Path | None:
    """Write ``spec`` under ``key`` atomically; None when caching is off or the folder cannot be written."""
    if not enabled():
        return None
    from ..io import atomic_write_text

    try:
        return atomic_write_text(entry_path(key), _encode(spec, key))
    except (OSError, VramplanError, TypeError, ValueError):
        return None


__all__ = ["FORMAT", "MAX_ENTRY_BYTES", "builder_fingerprint", "cache_dir", "enabled", "entry_path", "load",
           "spec_key", "store"]
