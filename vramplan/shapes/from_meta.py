"""ModelSpec for any architecture transformers knows: instantiate it on the ``meta`` device and walk it.

torch and transformers are imported inside the functions, never at module import, so the analytic path
stays torch-free. Building on ``meta`` allocates no storage (Llama-3-8B: 0.06–0.08 s, FINDINGS.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from . import cache
from .config import read_dims
from .from_config import assemble, model_type_of
from .roles import classify, layer_index
from .spec import ModelSpec, Tensor


def hf_config(config: Mapping[str, Any] | str, *, trust_remote_code: bool = False, source: str = "config.json"):
    """A transformers ``PretrainedConfig`` from a config dict or a local model folder."""
    import transformers

    if isinstance(config, str):
        if not trust_remote_code:
            raise ConfigError(f"{source}: this model folder ships its own modeling code (auto_map); "
                              "pass --trust-remote-code to run it")
        try:
            return transformers.AutoConfig.from_pretrained(config, trust_remote_code=True)
        except (OSError, ValueError, ImportError, AttributeError) as exc:
            raise ConfigError(f"{source}: cannot load the folder's own config code: "
                              f"{str(exc).splitlines()[0]}") from None
    # Drop bookkeeping keys (``_name_or_path``, ``_commit_hash``, ...) but keep the one underscored key that
    # shapes a model: OPT's ``_remove_final_layer_norm`` (``OPTDecoder.__init__``).
    kwargs = {k: v for k, v in config.items()
              if k != "model_type" and (not k.startswith("_") or k == "_remove_final_layer_norm")}
    mt = model_type_of(config)
    try:
        return transformers.AutoConfig.for_model(mt, **kwargs)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{source}: transformers {transformers.__version__} does not know model_type {mt!r} "
                          "(pass a model folder with its modeling code and --trust-remote-code)") from exc


def meta_model(config: Mapping[str, Any] | str, *, trust_remote_code: bool = False, source: str = "config.json"):
    """Instantiate the causal-LM class for ``config`` on the meta device (no storage)."""
    import torch
    import transformers

    cfg = hf_config(config, trust_remote_code=trust_remote_code, source=source)
    # transformers warns about token ids outside tiny test vocabularies; that is not our user's concern.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        try:
            return transformers.AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
        except (ValueError, OSError, ImportError, AttributeError, TypeError, AssertionError) as exc:
            raise ConfigError(f"{source}: transformers cannot build a causal LM for model_type "
                              f"{getattr(cfg, 'model_type', '?')!r}: {str(exc).splitlines()[0]}") from exc


def module_type_of(module: Any) -> str:
    """linear / conv1d / embedding / norm / experts / other, from the module's class."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):          # bitsandbytes Linear4bit/Linear8bitLt subclass nn.Linear
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    cls = type(module).__name__
    if cls == "Conv1D":
        return "conv1d"
    if isinstance(module, nn.LayerNorm) or "Norm" in cls:
        return "norm"
    if any(p.dim() == 3 for p in module.parameters(recurse=False)):
        return "experts"
    return "other"


def tensors_of(model: Any) -> list[Tensor]:
    """Every parameter of ``model`` in ``named_modules`` order; a parameter seen before is marked tied."""
    out: list[Tensor] = []
    seen: dict[int, str] = {}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for mod_name, module in model.named_modules():
        mtype = module_type_of(module)
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            tied = seen.get(id(p))
            if tied is None:
                seen[id(p)] = full
            role = "lm_head" if (module is head and pname == "weight") else classify(mod_name, pname, mtype)
            if module is head and pname == "bias":
                role = "bias"
            out.append(Tensor(full, tuple(int(d) for d in p.shape), role, mtype, layer_index(mod_name), tied))
    return out


def spec_from_meta(config: Mapping[str, Any] | str, name: str = "", *, trust_remote_code: bool = False,
                   source: str = "config.json") -> ModelSpec:
    """Build a :class:`ModelSpec` by instantiating the model on the meta device.

    Args:
        config: a config dict (as in ``config.json``) or a local model folder.
        name: the spec's name.
        trust_remote_code: allow a folder's own modeling code (``auto_map``); off unless the user asks.

    A config dict's spec is cached on disk (:mod:`vramplan.shapes.cache`, keyed by the config's content and the
    installed transformers/torch versions): a second call with the same config imports neither.
    """
    key = None
    if isinstance(config, str):
        from ..io import read_json

        cfg_dict = read_json(os.path.join(config, "config.json"), error=ConfigError, what="config.json")
    else:
        # Only config dicts are cached: a folder's own modeling code (trust_remote_code) is not in the key.
        cfg_dict = dict(config)
        key = cache.spec_key(cfg_dict)
        if key is not None:
            hit = cache.load(key, cfg_dict, name)
            if hit is not None:
                read_dims(cfg_dict, source)      # the same validation errors as a fresh build
                return hit
    model = meta_model(config, trust_remote_code=trust_remote_code, source=source)
    dims = read_dims(cfg_dict, source)
    spec = assemble(cfg_dict, dims, tensors_of(model), name=name or str(cfg_dict.get("_name_or_path", "")),
                    model_type=model_type_of(cfg_dict) or getattr(model.config, "model_type", ""),
                    origin="meta")
    if key is not None:
        cache.store(key, spec)
    return spec
