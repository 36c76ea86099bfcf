"""What a reader makes of one training config: :class:`Reading`, and the files a config points to (DeepSpeed
JSON, accelerate configs) found as the framework finds them.

A reader returns the setup options by name (:data:`vramplan.setup.SETUP_OPTIONS`: ``method``, ``rank``,
``batch``...), with the framework's own defaults filled in (LLaMA-Factory's ``lora_alpha = 2 * lora_rank``,
ms-swift's ``lora_dropout 0.05``...), never vramplan's. An option the file does not decide is ``None`` and, where
the answer depends on it (the sequence length of a file that does not truncate), named in
:attr:`Reading.undecided` so that the caller asks for it instead of filling a default. Memory-relevant keys
vramplan does not model are named in :attr:`Reading.ignored`; a stage or method it cannot model raises
:class:`~vramplan.errors.CannotCheckError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CannotCheckError, ForeignConfigError
from ..io import brief, short_path
from .util import as_int, truthy


@dataclass
class Reading:
    """One plan read from another tool's training config."""

    format: str                                  # llamafactory, llamafactory-v1, axolotl, msswift, torchtune, ...
    model: str | None
    options: dict[str, Any] = field(default_factory=dict)   # setup options by name; None = not decided
    ignored: list[str] = field(default_factory=list)        # "key (why it matters: not modelled)"
    stage: str = "sft"
    packing: bool = False
    references: list[str] = field(default_factory=list)     # files read besides the config (DeepSpeed, accelerate)
    undecided: dict[str, str] = field(default_factory=dict)  # option -> why the file leaves it open
    cannot_check: str | None = None

    def setup_options(self) -> dict[str, Any]:
        """The options a :class:`~vramplan.setup.Setup` is built from: those the file decides."""
        return {k: v for k, v in self.options.items() if v is not None}


def finish(r: Reading) -> Reading:
    """State what the method implies: no quantization outside QLoRA, no modules saved beside the adapter
    unless named."""
    o = r.options
    if o.get("method") in ("lora", "full"):
        o.setdefault("quant", "none")
    if o.get("method") in ("lora", "qlora"):
        o.setdefault("modules_to_save", None)
    return r


def bundled_dtype(model: str) -> str | None:
    """``torch_dtype`` of the bundled profile of ``model`` (by name, Hub id or alias), or ``None``: what
    frameworks that load ``torch_dtype="auto"`` get."""
    from ..profiles import model_profiles

    key = model.strip().lower()
    for p in model_profiles().values():
        if key in {p.name.lower(), p.hf_id.lower(), *(a.lower() for a in p.aliases)}:
            return str(p.config.get("torch_dtype") or p.config.get("dtype") or "") or None
    return None


# ------------------------------------------------------------------------------------------ referenced files
def resolve_reference(ref: str, config_file: str | os.PathLike[str] | None) -> Path | None:
    """The file a config names by a path relative to where its framework is launched (the repository root):
    as given (absolute or from the working directory), then from the config's folder and each folder above it
    (the repository layout), then the flattened name this project's corpus stores it under
    (``examples/deepspeed/ds_z3_config.json`` -> ``examples__deepspeed__ds_z3_config.json`` beside the config)."""
    ref = ref.strip()
    if not ref:
        return None
    p = Path(os.path.expanduser(ref))
    if p.is_absolute():
        return p if p.is_file() else None
    if p.is_file():
        return p
    if config_file is None:
        return None
    here = Path(config_file).resolve().parent
    for folder in (here, *here.parents):
        if (folder / p).is_file():
            return folder / p
    clean = ref[2:] if ref.startswith("./") else ref
    flat = here / clean.replace("/", "__")
    return flat if flat.is_file() else None


def read_reference(ref: str, config_file: str | os.PathLike[str] | None, key: str) -> tuple[Mapping[str, Any], Path]:
    """The mapping in the JSON/YAML file ``ref`` (read with vramplan's bounded reader).

    Raises:
        CannotCheckError: the file is not found (the setup depends on it).
        ForeignConfigError: it is not a mapping (naming ``key``).
    """
    from ..errors import PlanFileError
    from ..io import CONFIG_MAX_BYTES, parse_json, parse_yaml, read_text

    path = resolve_reference(ref, config_file)
    if path is None:
        raise CannotCheckError(f"{key}: {brief(ref)} not found (looked from the working directory, the config's "
                               "folder and the folders above it); the sharding and offload it sets decide memory")
    text = read_text(path, CONFIG_MAX_BYTES, error=PlanFileError, what=f"{key} file")
    parse = parse_json if path.suffix.lower() == ".json" else parse_yaml
    data = parse(text, path, error=PlanFileError, what=f"{key} file")
    if not isinstance(data, Mapping):
        raise ForeignConfigError(key, f"{short_path(path)} is not a mapping of settings")
    return data, path


def _device(d: Any) -> str:
    if isinstance(d, Mapping):
        return str(d.get("device", "none")).lower()
    return "none"


def from_deepspeed(d: Mapping[str, Any], where: str = "deepspeed") -> dict[str, Any]:
    """DeepSpeed JSON -> ``strategy`` and ``offload`` (``zero_optimization.stage``; ``offload_optimizer`` /
    ``offload_param`` ``device: cpu|nvme``), plus ``ignored`` for an offload ``--offload`` cannot state.

    ``stage 0`` is plain data parallelism; offloading both parameters and optimizer is ``--offload params``
    (vramplan's ZeRO-3 parameter offload moves the optimizer too); the optimizer alone is ``optimizer``.
    """
    zo = d.get("zero_optimization") or {}
    if not isinstance(zo, Mapping):
        raise ForeignConfigError(where, f"zero_optimization must be a mapping, got {brief(zo)}")
    stage = as_int(zo.get("stage", 0), f"{where}: zero_optimization.stage")
    if stage not in (0, 1, 2, 3):
        raise ForeignConfigError(where, f"zero_optimization.stage must be 0 to 3, got {brief(stage)}")
    strategy = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}[stage]
    opt = _device(zo.get("offload_optimizer")) in ("cpu", "nvme")
    par = _device(zo.get("offload_param")) in ("cpu", "nvme") and stage == 3
    out: dict[str, Any] = {"strategy": strategy, "ignored": []}
    if opt and par:
        out["offload"] = "params"
    elif opt:
        out["offload"] = "optimizer"
    elif par:
        out["offload"] = None
        out["ignored"].append(f"{where}: offload_param cpu without offload_optimizer (not representable by "
                              "--offload: checked without offload, an overestimate)")
    else:
        out["offload"] = "none"
    bf16 = d.get("bf16")
    out["bf16"] = bf16.get("enabled", False) if isinstance(bf16, Mapping) else False
    return out


#: accelerate ``fsdp_sharding_strategy`` of FSDP1 (name or number) -> vramplan strategy: without ``fsdp_version: 2``
#: accelerate 1.16 builds FSDP1 (``utils/dataclasses.py`` FullyShardedDataParallelPlugin ``fsdp_version`` default 1),
#: flat parameters (``--strategy fsdp1``); SHARD_GRAD_OP is planned as fsdp-grad-op (FSDP2's reshard_after_forward=
#: False keeps the same units gathered from forward to backward), HYBRID_SHARD as FULL_SHARD within the node
_FSDP_SHARDING = {"full_shard": "fsdp1", "1": "fsdp1", "shard_grad_op": "fsdp-grad-op", "2": "fsdp-grad-op",
                  "no_shard": "ddp", "3": "ddp", "hybrid_shard": "fsdp1", "4": "fsdp1",
                  "hybrid_shard_zero2": "fsdp-grad-op", "5": "fsdp-grad-op"}


def from_accelerate(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """An accelerate config (``accelerate launch --config_file``) -> ``gpus`` (``num_processes``), ``strategy``
    and ``offload`` (``distributed_type`` MULTI_GPU / FSDP / DEEPSPEED and their settings), ``grad_ckpt`` where
    ``fsdp_activation_checkpointing`` turns it on, and the DeepSpeed file it names (accelerate
    ``commands/config/config_args.py``; ``utils/dataclasses.py`` FullyShardedDataParallelPlugin)."""
    out: dict[str, Any] = {"ignored": [], "references": []}
    if d.get("num_processes") is not None:
        out["gpus"] = as_int(d["num_processes"], "num_processes")
    kind = str(d.get("distributed_type", "NO")).upper()
    if kind in ("NO", "MULTI_GPU"):
        out["strategy"] = "ddp" if kind == "MULTI_GPU" else None
        out["offload"] = "none" if kind == "MULTI_GPU" else None
    elif kind == "FSDP":
        fc = d.get("fsdp_config") or {}
        if not isinstance(fc, Mapping):
            raise ForeignConfigError("fsdp_config", f"must be a mapping, got {brief(fc)}")
        if str(fc.get("fsdp_version", 1)) == "2":
            out["strategy"] = "fsdp" if truthy(fc.get("fsdp_reshard_after_forward", True)) else "fsdp-grad-op"
        else:
            ss = str(fc.get("fsdp_sharding_strategy", "FULL_SHARD")).lower()
            out["strategy"] = _FSDP_SHARDING.get(ss, "fsdp1")
        out["offload"] = "params" if truthy(fc.get("fsdp_offload_params", False)) else "none"
        if truthy(fc.get("fsdp_activation_checkpointing", False)):
            out["grad_ckpt"] = True
    elif kind == "DEEPSPEED":
        dc = d.get("deepspeed_config") or {}
        if not isinstance(dc, Mapping):
            raise ForeignConfigError("deepspeed_config", f"must be a mapping, got {brief(dc)}")
        if dc.get("deepspeed_config_file"):
            ds, path = read_reference(str(dc["deepspeed_config_file"]), file, "deepspeed_config_file")
            out["references"].append(str(path))
            r = from_deepspeed(ds, "deepspeed_config_file")
            out["ignored"] += r.pop("ignored")
            out.update(strategy=r["strategy"], offload=r["offload"])
        else:
            r = from_deepspeed({"zero_optimization": {
                "stage": dc.get("zero_stage", 2),
                "offload_optimizer": {"device": dc.get("offload_optimizer_device", "none")},
                "offload_param": {"device": dc.get("offload_param_device", "none")}}}, "deepspeed_config")
            out["ignored"] += r.pop("ignored")
            out.update(strategy=r["strategy"], offload=r["offload"])
    else:
        raise CannotCheckError(f"accelerate distributed_type {brief(kind)} is not modelled (MULTI_GPU, FSDP and "
                               "DEEPSPEED are)")
    return out


def deepspeed_options(ref: Any, config_file: str | os.PathLike[str] | None, key: str = "deepspeed",
                      builtin: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``strategy``/``offload``/``ignored``/``references`` from a config's ``deepspeed:`` value: a JSON path
    (found by :func:`resolve_reference`), an inline mapping, or a name in ``builtin`` (ms-swift's ``zero2``)."""
    if isinstance(ref, Mapping):
        r = from_deepspeed(ref, key)
        r["references"] = []
        return r
    name = str(ref).strip()
    if builtin is not None and name.lower() in builtin:
        r = dict(builtin[name.lower()])
        r.setdefault("ignored", [])
        r["references"] = []
        return r
    data, path = read_reference(name, config_file, key)
    r = from_deepspeed(data, key)
    r["references"] = [str(path)]
    return r


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``d["a"]["b"] = value`` for ``key = "a.b"`` (torchtune / OmegaConf command-line overrides)."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value
