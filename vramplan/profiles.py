"""Bundled model and GPU profiles, and resolving what the user typed into a :class:`ModelSpec` / GPU.

A model name resolves, in order, to: a bundled profile name or alias (case-insensitive), a local
``config.json`` or model folder, a cached Hub config, or — when online — the Hub config fetched with
``huggingface_hub`` and cached. Only ``config.json`` is ever fetched; never weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownGpuError, UnknownModelError, close_matches
from .shapes.config import check_types
from .shapes.from_config import FAMILIES, has_builder, model_type_of, spec_from_config
from .shapes.spec import ModelSpec
from .units import MiB, SizeError, parse_size


def profiles_dir() -> Path:
    """``vramplan/profiles`` in an installed wheel, ``<repo>/profiles`` in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "profiles", here.parent / "profiles"):
        if (candidate / "gpus.yaml").is_file() or (candidate / "models").is_dir():
            return candidate
    raise FileNotFoundError(f"vramplan's bundled profiles are missing (looked in {here / 'profiles'} and "
                            f"{here.parent / 'profiles'}); reinstall vramplan")


def _yaml_load(path: Path) -> Any:
    """A bundled profile, read like every input (:func:`vramplan.io.read_yaml`: size-capped, safe loader), less
    the alias-bomb walk: the files are vramplan's own, and every command reads all of them."""
    from .io import read_yaml

    return read_yaml(path, error=ConfigError, what="bundled profile", trusted=True)


# ------------------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelProfile:
    """One bundled model: ``profiles/models/<name>.yaml``."""

    name: str
    hf_id: str
    aliases: tuple[str, ...]
    source: str
    params_total: int
    config: Mapping[str, Any]
    path: Path


def _read_profile(path: Path) -> ModelProfile:
    d = _yaml_load(path)
    return ModelProfile(d["name"], d.get("hf_id", ""), tuple(d.get("aliases") or ()), d.get("source", ""),
                        int(d["params_total"]), d["config"], path)


@lru_cache(maxsize=1)
def model_profiles() -> dict[str, ModelProfile]:
    """All bundled model profiles by canonical name."""
    profiles = (_read_profile(path) for path in sorted((profiles_dir() / "models").glob("*.yaml")))
    return {p.name: p for p in profiles}


@lru_cache(maxsize=64)
def _profile_named(name: str) -> ModelProfile | None:
    """The profile whose canonical name is ``name``, read alone from ``<name>.yaml`` (every profile file is named
    after its profile; tests/test_profiles_data.py checks it): a bundled name resolves without reading the
    other profiles, which is most of a cold ``plan``. ``None`` when there is no such file."""
    if len(name) > 200 or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):    # 200: no "File name too long"
        return None
    path = profiles_dir() / "models" / f"{name}.yaml"
    if not path.is_file():
        return None
    p = _read_profile(path)
    return p if p.name == name else None


@lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    """Every name, Hub id and alias (lowercased) -> the profile's name. Only the head of each file is parsed
    (the keys above ``config:``, where every profile keeps them): resolving a Hub id costs no full parse of the
    other profiles' configs, which is most of a cold ``plan``."""
    from .io import parse_yaml, read_text

    index: dict[str, str] = {}
    for path in sorted((profiles_dir() / "models").glob("*.yaml")):
        text = read_text(path, error=ConfigError, what="bundled profile")
        head, sep, _ = text.partition("\nconfig:")
        d = parse_yaml(head if sep else text, path, error=ConfigError, what="bundled profile", trusted=True)
        for key in (d["name"], d.get("hf_id", ""), *(d.get("aliases") or ())):
            if key:
                index[key.lower()] = d["name"]
    return index


@dataclass(frozen=True)
class QuantizedCheckpoint:
    """An official pre-quantized variant of a bundled model (``profiles/quantized.yaml``)."""

    id: str
    profile: str
    quantization_config: Mapping[str, Any]
    source: str


@lru_cache(maxsize=1)
def quantized_checkpoints() -> dict[str, QuantizedCheckpoint]:
    """Pre-quantized Hub ids (lowercased) -> their profile and ``quantization_config``: resolved offline with their
    quantization, never aliased silently to the 16-bit profile."""
    path = profiles_dir() / "quantized.yaml"
    if not path.is_file():
        return {}
    out = {}
    for d in _yaml_load(path)["checkpoints"]:
        c = QuantizedCheckpoint(d["id"], d["profile"], d["quantization_config"], d.get("source", ""))
        out[c.id.lower()] = c
    return out


def bundled_model_names() -> list[str]:
    return sorted(model_profiles())


@dataclass(frozen=True)
class ResolvedModel:
    """What a model argument resolved to."""

    name: str
    spec: ModelSpec
    origin: str              # "profile", "file", "hub-cache", "hub"
    source: str              # file path or URL the config came from
    profile: ModelProfile | None = None

    @property
    def input_files(self) -> tuple[str, ...]:
        """The files this model was read from (a config.json, a cached Hub config, a bundled profile): what an
        output path must not replace (:func:`vramplan.io.refuse_overwriting_input`)."""
        if self.profile is not None:
            return (str(self.profile.path),)
        return (self.source,) if self.origin in ("file", "hub-cache") else ()


def cache_dir() -> Path:
    root = os.environ.get("VRAMPLAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vramplan")
    return Path(root)


def build_spec(config: Mapping[str, Any], name: str, source: str, *, trust_remote_code: bool = False) -> ModelSpec:
    """Pure-Python builder for known families, the meta-device builder (imports torch) for the rest."""
    check_types(config, source)
    if has_builder(model_type_of(config)):
        return spec_from_config(config, name=name, source=source)
    from .shapes.from_meta import spec_from_meta

    return spec_from_meta(config, name=name, source=source, trust_remote_code=trust_remote_code)


def _read_config_file(path: Path) -> dict[str, Any]:
    """A ``config.json``: a regular UTF-8 file of at most :data:`vramplan.io.CONFIG_MAX_BYTES`, a JSON object
    whose fields the builders read have the right types (:func:`vramplan.shapes.config.check_types`).

    Raises:
        ConfigError: one line naming the file.
    """
    from .io import CONFIG_MAX_BYTES, read_json, short_path

    data = read_json(path, CONFIG_MAX_BYTES, error=ConfigError, what="config", not_json="not valid JSON")
    if not isinstance(data, dict):
        raise ConfigError(f"{short_path(path)}: expected a JSON object with the model's config, "
                          f"got {type(data).__name__}")
    check_types(data, short_path(path))
    return data


def _path_kind(path: Path) -> str | None:
    """``"dir"``, ``"file"`` (anything else that exists), or ``None`` (missing, or not a usable path: too long,
    a NUL byte)."""
    try:
        if path.is_dir():
            return "dir"
        return "file" if path.exists() else None
    except (OSError, ValueError):
        return None


#: The Hub's limit on the length of a user/organisation and of a repository name.
HUB_NAME_MAX = 96


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and all(len(p) <= HUB_NAME_MAX for p in parts)
            and not name.startswith((".", "/", "~")))


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VRAMPLAN_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the Hub endpoint, so that offline machines fail fast, not after retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_hub_config(repo_id: str) -> tuple[dict[str, Any], str, str]:
    """``config.json`` of a Hub repo: from vramplan's cache, else downloaded (only that file) and cached.

    Returns ``(config, origin, source)``. Raises :class:`UnknownModelError` offline or on failure, with the
    one-line fix (download the config and pass its path).
    """
    cached = cache_dir() / "configs" / (repo_id.replace("/", "--") + ".json")
    if cached.is_file():
        return _read_config_file(cached), "hub-cache", str(cached)
    how = (f"download https://huggingface.co/{repo_id}/resolve/main/config.json and pass its path "
           f"(vramplan plan ./config.json ...) or the model folder")
    if _offline() or not _hub_reachable():
        raise UnknownModelError(f"model {repo_id!r} is not bundled and the Hugging Face Hub cannot be reached "
                                f"(offline): {how}")
    try:
        import logging

        from huggingface_hub import hf_hub_download

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        path = hf_hub_download(repo_id, "config.json", etag_timeout=5)
    except Exception as exc:  # network errors, 404, gated repos: all one line for the user
        reason = type(exc).__name__
        raise UnknownModelError(f"model {repo_id!r} is not bundled and its config.json could not be fetched "
                                f"from the Hub ({reason}): {how}") from None
    config = _read_config_file(Path(path))
    cached.parent.mkdir(parents=True, exist_ok=True)
    from .io import atomic_write_text

    atomic_write_text(cached, json.dumps(config, indent=2))
    return config, "hub", f"https://huggingface.co/{repo_id}/blob/main/config.json"


def resolve_model(name: str, *, trust_remote_code: bool = False) -> ResolvedModel:
    """Resolve a model argument (profile, alias, path, Hub id) to a spec.

    Raises:
        UnknownModelError: nothing matches; the message lists close bundled names.
        ConfigError: the config found is invalid.
    """
    from .io import brief

    key = name.strip()
    q = quantized_checkpoints().get(key.lower())
    if q is not None:       # an official pre-quantized variant: its profile's shapes, its own quantization_config
        p = _profile_named(q.profile)
        if p is None:
            raise ConfigError(f"profiles/quantized.yaml: {q.id} names profile {q.profile!r}, which is not bundled")
        config = {**p.config, "quantization_config": dict(q.quantization_config)}
        return ResolvedModel(q.id, build_spec(config, q.id, str(p.path)), "profile", q.source, p)
    p = _profile_named(key.lower())
    if p is None:
        hit = _alias_index().get(key.lower())
        p = _profile_named(hit) if hit is not None else None
    if p is not None:
        spec = build_spec(p.config, p.name, str(p.path))
        return ResolvedModel(p.name, spec, "profile", p.source, p)
    path = Path(os.path.expanduser(key))
    kind = _path_kind(path)
    if kind == "dir":
        cfg_path = path / "config.json"
        if _path_kind(cfg_path) is None:
            raise ConfigError(f"{path}: a folder without config.json; pass a model folder or its config.json")
        config = _read_config_file(cfg_path)
        config = _text_config(config)
        if not has_builder(model_type_of(config)):
            from .shapes.from_meta import spec_from_meta

            spec = spec_from_meta(str(path) if config.get("auto_map") else config, name=path.name,
                                  trust_remote_code=trust_remote_code, source=str(cfg_path))
        else:
            spec = spec_from_config(config, name=path.name, source=str(cfg_path))
        return ResolvedModel(path.name, spec, "file", str(cfg_path))
    if kind == "file" or key.endswith(".json"):
        config = _text_config(_read_config_file(path))
        label = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
        return ResolvedModel(label, build_spec(config, label, str(path), trust_remote_code=trust_remote_code),
                             "file", str(path))
    if _looks_like_hub_id(key):
        config, origin, source = fetch_hub_config(key)
        config = _text_config(config)
        return ResolvedModel(key, build_spec(config, key, source, trust_remote_code=trust_remote_code),
                             origin, source)
    raise UnknownModelError(
        f"unknown model {brief(name)}{close_matches(key[:200], list(_alias_index()))}: use a bundled name "
        "(vramplan models), a Hugging Face id such as Qwen/Qwen3-14B, or a path to a config.json or model folder")


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """A wrapper that keeps a text-only language model under ``text_config``: plan that. A multimodal checkpoint
    (a ``vision_config`` or ``audio_config`` beside it: gemma3, llava, qwen2_vl, mllama, llama4, ...) is planned as
    its own class, vision tower included (issue 16: never a silent text-only count)."""
    text = config.get("text_config")
    if any(k in config for k in ("vision_config", "audio_config")):
        return config
    if isinstance(text, dict) and model_type_of(config) not in FAMILIES and text.get("model_type") in FAMILIES:
        merged = dict(text)
        merged.setdefault("architectures", config.get("architectures"))
        if config.get("quantization_config") is not None:     # the checkpoint's storage stays with it
            merged.setdefault("quantization_config", config["quantization_config"])
        return merged
    return config


# -------------------------------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class Gpu:
    """A card: memory as the driver reports it (what ``torch.cuda.mem_get_info`` calls total)."""

    name: str
    memory_bytes: int
    vendor: str = ""
    architecture: str = ""
    compute_capability: str = ""
    bf16: bool = True
    marketing_gb: float | None = None
    sm_count: int = 0                  # multi_processor_count (0 = unknown: a card given as a size)
    aliases: tuple[str, ...] = ()
    source: str = ""
    from_size: bool = False

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // MiB


@lru_cache(maxsize=1)
def gpu_catalogue() -> tuple[Gpu, ...]:
    data = _yaml_load(profiles_dir() / "gpus.yaml")
    gpus = []
    for g in data["gpus"]:
        gpus.append(Gpu(
            name=g["name"], memory_bytes=int(g["memory_mib"]) * MiB, vendor=g.get("vendor", ""),
            architecture=g.get("architecture", ""), compute_capability=str(g.get("compute_capability", "")),
            bf16=bool(g.get("bf16", True)), marketing_gb=g.get("marketing_gb"), sm_count=int(g.get("sm_count", 0)),
            aliases=tuple(str(a) for a in g.get("aliases") or ()), source=g.get("source", "")))
    return tuple(sorted(gpus, key=lambda g: (g.memory_bytes, g.name)))


#: The largest card size accepted (1 PiB = 2**50 bytes): far beyond any accelerator, and every product the
#: estimator forms with it stays an exact float (a 400-digit size overflowed).
MAX_GPU_BYTES = 1 << 50


def resolve_gpu(name: str) -> Gpu:
    """A catalogue card by name or alias (case-insensitive), or a plain size such as ``24GB``/``24GiB``/``80G``.

    Raises:
        UnknownGpuError: neither a known card nor a readable size.
    """
    from .io import brief

    key = str(name).strip().lower()
    for g in gpu_catalogue():
        if key == g.name or key in (a.lower() for a in g.aliases):
            return g
    if key and key[0].isdigit():
        if len(key) > 40:         # no size needs more; the reader's message would quote every digit
            raise UnknownGpuError(f"unknown GPU {brief(name)}: {len(key):,} characters is too long for a size; "
                                  "write the card's memory, such as 24GB, 24GiB or 80G")
        try:
            size = parse_size(name)
        except SizeError as exc:
            raise UnknownGpuError(f"unknown GPU {brief(name)}: {exc}") from None
        if size > MAX_GPU_BYTES:
            raise UnknownGpuError(f"GPU size {brief(name)} is more than {MAX_GPU_BYTES // 2**50} PiB, the largest "
                                  "vramplan accepts; write the card's memory, such as 80GB")
        return Gpu(name=str(name).strip(), memory_bytes=size, from_size=True)
    names = [g.name for g in gpu_catalogue()]
    raise UnknownGpuError(f"unknown GPU {brief(name)}{close_matches(key[:100], names)}: use a card from `vramplan gpus` "
                          "or a size such as 24GB, 24GiB or 80G")
