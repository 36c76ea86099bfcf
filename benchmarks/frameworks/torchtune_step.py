"""torchtune 0.6.1: a tiny Llama-3.1 through its real LoRA/QLoRA and full fine-tuning single-device recipes, one
training step on CPU, measured (issue 14 § 4). Writes JSON to its argument; ``benchmarks/frameworks/results/
torchtune.json`` is its output and ``tests/estimate/test_stack_torchtune_cpu.py`` compares it with ``--stack
torchtune``.

Not a CI test: it needs torchtune, torchao and (the full configs' optimizers) bitsandbytes. Run it in a private
venv::

    python3 -m venv /tmp/nf4-venv && . /tmp/nf4-venv/bin/activate
    pip install torch==2.13.0 torchtune==0.6.1 torchao==0.10.0 bitsandbytes==0.50.2  # + omegaconf, safetensors
    python benchmarks/frameworks/torchtune_step.py benchmarks/frameworks/results/torchtune.json

What runs, all torchtune's own code, from the recipe file the wheel ships (``recipes/lora_finetune_single_device.py``,
class ``LoRAFinetuneRecipeSingleDevice``): the shipped configs ``llama3_1/8B_lora_single_device.yaml`` and
``8B_qlora_single_device.yaml`` loaded with OmegaConf, with these overrides only: ``device: cpu``; the model
component is the builder those configs' ``lora_llama3_1_8b`` / ``qlora_llama3_1_8b`` call
(``models/llama3_1/_component_builders.py lora_llama3_1``, ``quantize_base`` for QLoRA) at a tiny shape (:data:`SHAPE`)
with the configs' own ``lora_attn_modules``, ``apply_lora_to_mlp``, rank, alpha and dropout; the checkpointer is
the configs' ``FullModelHFCheckpointer`` over a random bf16 checkpoint this script writes (torchtune's own
``convert_weights.tune_to_hf`` of a ``llama3_1`` base); the tokenizer and dataset are a stand-in (the Llama-3
tiktoken file is not here): fixed-length random token rows, ``labels`` = ``tokens``, collated by the configs'
``padded_collate_sft``; ``enable_activation_checkpointing`` on and off; ``batch_size`` :data:`BATCH`; metric logger
to stdout. ``recipe.setup(cfg)`` then runs whole (checkpoint load, ``_setup_model`` with
``set_activation_checkpointing``, optimizer, ``CEWithChunkedOutputLoss`` and ``set_num_output_chunks``, data,
lr scheduler, profiler). The measured step is the body of ``recipe.train()``'s loop on the recipe's first batch:
``current_num_tokens = (labels != ignore_index).sum()``, ``loss = recipe._loss_step(batch) * current_num_tokens``,
``loss.backward()``; measured with ``_step.step`` (no autocast: the recipe runs none). Then ``recipe.train()``
itself runs one step (``max_steps_per_epoch: 1``: optimizer step, lr scheduler, adapter checkpoint save) to show
the whole loop runs on CPU with this config.

``full_cases`` (:data:`FULL_CASES`): ``recipes/full_finetune_single_device.py``, class
``FullFinetuneRecipeSingleDevice``, on the shipped ``llama3_1/8B_full_single_device.yaml`` (``dtype: bf16``,
``optimizer_in_bwd: True``, ``enable_activation_checkpointing: True``, ``bitsandbytes.optim.PagedAdamW8bit``,
``CEWithChunkedOutputLoss``, batch 2) with the same overrides, the model component its ``llama3_1_8b`` calls
(``llama3_1``) at :data:`SHAPE`; checkpointing on and off, ``optimizer_in_bwd`` on and off, and two cases with the
optimizer section of another shipped full config (PagedAdamW, fused torch AdamW: :data:`FULL_OPTIMIZERS`).
bitsandbytes 0.50.2 runs its paged optimizers on CPU unpaged (``get_state_buffer``: "Paged optimizers are not
supported on CPU. Falling back to non-paged optimizer behavior."): the same states, all in ordinary memory. The
measured step is the loop body as above; with ``optimizer_in_bwd`` each parameter's optimizer steps inside
backward (``training.register_optim_in_bwd_hooks``), so no gradient is left after it and the gradient bytes alive
at each in-backward ``step()`` are recorded; without it the loop's ``scale_grads``, ``optimizer.step()``. Then the
optimizer states (every state tensor, the distinct storages) and ``recipe.train()`` whole. ``full_configs``
(:func:`full_configs`): the memory keys of every shipped config that runs ``full_finetune_single_device``.

``rope_caches``: the fp32 rotary cos/sin buffer that five real-size torchtune builders (Llama-3.1-8B, Llama-3-8B,
Llama-3.2-1B, Qwen2.5-7B, Mistral-7B) register at init, built by their own ``rope_init()`` (:func:`rope_caches`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _step import BATCH, SEQ, compact, dt, dump, record, step  # noqa: E402

#: the tiny shape: every quantized Linear's numel is a multiple of 64 x 256 (torchao to_nf4's block_size x
#: scaler_block_size), head_dim 64; the output head is never quantized (lora_llama3_1: nn.Linear)
SHAPE = dict(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=256, max_seq_len=SEQ,
             intermediate_dim=512)
#: the same model as a Hugging Face config (what vramplan reads and the HF checkpointer's config.json)
HF_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=256, intermediate_size=512,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_hidden_layers=2, vocab_size=256,
                 max_position_embeddings=SEQ, tie_word_embeddings=False, hidden_act="silu", rms_norm_eps=1e-5,
                 rope_theta=500000.0, torch_dtype="bfloat16")
CONFIGS = {"lora": "llama3_1/8B_lora_single_device.yaml", "qlora": "llama3_1/8B_qlora_single_device.yaml"}


class TinyTokenizer:
    """Stand-in for ``llama3_tokenizer`` (its tiktoken file is not here): the recipe reads ``pad_id`` only."""

    pad_id = 0

    def __init__(self, max_seq_len: int | None = None) -> None:
        self.max_seq_len = max_seq_len


def tiny_dataset(tokenizer: TinyTokenizer, rows: int = 2 * BATCH, seed: int = 0) -> list[dict]:
    """Fixed-length rows of random tokens, every position supervised (``labels`` = ``tokens``), as an SFT dataset
    yields them (``{"tokens", "labels"}``, torchtune ``data/_collate.py padded_collate_sft``)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, SHAPE["vocab_size"], (rows, SEQ), generator=g)
    return [{"tokens": r.tolist(), "labels": r.tolist()} for r in ids]


def tiny_checkpoint(path: str) -> str:
    """A random bf16 ``llama3_1`` base as an HF checkpoint (``model.safetensors`` + ``config.json``), written with
    torchtune's own ``tune_to_hf``: what ``FullModelHFCheckpointer`` loads."""
    from safetensors.torch import save_file
    from torchtune import training
    from torchtune.models.convert_weights import tune_to_hf
    from torchtune.models.llama3_1._component_builders import llama3_1

    torch.manual_seed(0)
    with training.set_default_dtype(torch.bfloat16):
        base = llama3_1(**SHAPE)
    sd = tune_to_hf(base.state_dict(), num_heads=SHAPE["num_heads"], num_kv_heads=SHAPE["num_kv_heads"],
                    dim=SHAPE["embed_dim"])
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(HF_CONFIG, f)
    return path


def recipes_dir() -> str:
    """The ``recipes/`` folder torchtune 0.6.1's wheel installs beside the package (not importable as a package:
    its ``__init__`` raises; ``tune run`` runs the files by path)."""
    import torchtune
    return os.path.join(os.path.dirname(os.path.dirname(torchtune.__file__)), "recipes")


def recipe_module(name: str = "lora_finetune_single_device"):
    """``recipes/<name>.py``, loaded from its file as ``tune run`` does."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(recipes_dir(), f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def user_config(method: str, ckpt: str, out_dir: str, *, grad_ckpt: bool):
    """The shipped config for ``method`` with the overrides of the module docstring."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(recipes_dir(), "configs", CONFIGS[method]))
    shipped = cfg.model
    cfg.model = {"_component_": "torchtune.models.llama3_1._component_builders.lora_llama3_1",
                 "lora_attn_modules": list(shipped.lora_attn_modules), "apply_lora_to_mlp": shipped.apply_lora_to_mlp,
                 "apply_lora_to_output": shipped.get("apply_lora_to_output", False),
                 "lora_rank": shipped.lora_rank, "lora_alpha": shipped.lora_alpha,
                 "lora_dropout": shipped.get("lora_dropout", 0.0), "quantize_base": method == "qlora", **SHAPE}
    _overrides(cfg, ckpt, out_dir, grad_ckpt=grad_ckpt)
    return cfg, shipped


def _overrides(cfg, ckpt: str, out_dir: str, *, grad_ckpt: bool) -> None:
    """What every run here changes in a shipped config: the stand-in tokenizer and data, the tiny checkpoint, CPU,
    the batch, one step, checkpointing as asked; nothing that touches memory else."""
    cfg.tokenizer = {"_component_": "__main__.TinyTokenizer", "max_seq_len": SEQ}
    cfg.dataset = {"_component_": "__main__.tiny_dataset"}
    cfg.checkpointer.checkpoint_dir = ckpt
    cfg.checkpointer.checkpoint_files = ["model.safetensors"]
    cfg.checkpointer.model_type = "LLAMA3"
    cfg.output_dir = out_dir
    cfg.checkpointer.output_dir = out_dir
    cfg.metric_logger = {"_component_": "torchtune.training.metric_logging.StdoutLogger"}
    cfg.device = "cpu"
    cfg.batch_size = BATCH
    cfg.shuffle = False
    cfg.seed = 0
    cfg.epochs = 1
    cfg.max_steps_per_epoch = 1
    cfg.gradient_accumulation_steps = 1
    cfg.enable_activation_checkpointing = grad_ckpt
    cfg.enable_activation_offloading = False
    cfg.compile = False
    cfg.log_peak_memory_stats = False
    if "profiler" in cfg:
        cfg.profiler.enabled = False


def hf_name(name: str) -> str:
    """A torchtune parameter name as Hugging Face's (vramplan's): torchtune's own ``convert_weights._FROM_HF``,
    inverted as ``tune_to_hf`` inverts it; ``lora_a``/``lora_b`` -> the module's ``lora_A``/``lora_B``;
    ``set_activation_checkpointing``'s ``._checkpoint_wrapped_module`` dropped."""
    from torchtune.models.convert_weights import _FROM_HF, get_mapped_key

    inv = {v: k for k, v in _FROM_HF.items() if v is not None}
    name = name.replace("._checkpoint_wrapped_module", "")
    for ab, AB in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
        if name.endswith(f".{ab}.weight"):
            return get_mapped_key(name.replace(f".{ab}.weight", ".weight"), inv).removesuffix(".weight") + f".{AB}"
    return get_mapped_key(name, inv)


#: torchao NF4Tensor's inner tensors (torchao 0.10.0 dtypes/nf4tensor.py NF4Tensor.__tensor_flatten__)
NF4_PARTS = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")


def params(model: torch.nn.Module) -> dict[str, dict]:
    """Every parameter as built, by Hugging Face name: dtype (``nf4`` for a torchao ``NF4Tensor``, with the dtype
    it was quantized from and its inner storages), whether it trains, its storage bytes (an NF4Tensor's
    ``quantized_data``), numel, and torchtune's own name."""
    from torchao.dtypes.nf4tensor import NF4Tensor

    out = {}
    for n, p in model.named_parameters():
        e = {"numel": p.numel(), "trainable": bool(p.requires_grad), "torchtune_name": n}
        if isinstance(p, NF4Tensor):
            parts = {a: getattr(p, a).untyped_storage().nbytes() for a in NF4_PARTS}
            e.update(dtype="nf4", quant_state_dtype=dt(p.dtype), bytes=parts["quantized_data"], nf4_parts=parts)
        else:
            e.update(dtype=dt(p.dtype), bytes=p.untyped_storage().nbytes())
        out[hf_name(n)] = e
    return out


@contextlib.contextmanager
def nf4_storage():
    """``_step.step`` tells parameters and saved tensors apart by ``untyped_storage().data_ptr()``; a torchao
    ``NF4Tensor`` is a wrapper subclass without storage of its own (``RuntimeError: ... invalid python storage``):
    while measuring, its storage is its ``quantized_data``'s, so a saved NF4 weight (``linear_nf4``'s
    ``save_for_backward(weight)``, torchao 0.10.0 dtypes/nf4tensor.py:964-975) counts as the parameter it is."""
    from torchao.dtypes.nf4tensor import NF4Tensor

    had = "untyped_storage" in NF4Tensor.__dict__
    orig = NF4Tensor.__dict__.get("untyped_storage")
    NF4Tensor.untyped_storage = lambda self: self.quantized_data.untyped_storage()
    try:
        yield
    finally:
        if had:
            NF4Tensor.untyped_storage = orig
        else:
            del NF4Tensor.untyped_storage


def run(ckpt: str, *, method: str, grad_ckpt: bool) -> dict:
    from omegaconf import OmegaConf
    from torchtune import utils

    out_dir = tempfile.mkdtemp(prefix="tt-out-")
    cfg, shipped = user_config(method, ckpt, out_dir, grad_ckpt=grad_ckpt)
    mod = recipe_module()
    recipe = mod.LoRAFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    model = recipe._model
    built = params(model)
    batch = next(iter(recipe._dataloader))
    utils.batch_to_device(batch, recipe._device)

    def forward():                   # the body of recipe.train()'s loop (recipes/lora_finetune_single_device.py)
        b = dict(batch)
        current_num_tokens = (b["labels"] != recipe._loss_fn.ignore_index).sum()
        return recipe._loss_step(b) * current_num_tokens

    model.train()
    with nf4_storage():
        res = compact(step(model, forward, autocast=False, n_layers=SHAPE["num_layers"]))
    res["params"] = built
    # Llama3ScaledRoPE's cos/sin table: a non-persistent buffer built at init (models/llama3_1/
    # _position_embeddings.py:88-101), shared by every layer and saved by q's and k's rotation
    cache = model.layers[0].attn.pos_embeddings.cache
    res["rope_cache"] = [cache.untyped_storage().nbytes(), dt(cache.dtype), list(cache.shape)]
    res["logits_chunks"] = model.num_output_chunks
    wrapped = [type(m).__name__ for m in model.layers]
    res["layers"] = sorted(set(wrapped))
    res["optimizer"] = type(recipe._optimizer).__name__
    res["optimizer_fused"] = bool(recipe._optimizer.defaults.get("fused"))
    res["loss_fn"] = type(recipe._loss_fn).__name__
    for p in model.parameters():
        p.grad = None
    recipe.train()                   # one whole step of the recipe's own loop (max_steps_per_epoch: 1)
    res["train_steps_run"] = recipe.global_step
    res["setup"] = {"method": method, "grad_ckpt": grad_ckpt, "config": CONFIGS[method],
                    "shipped_model": OmegaConf.to_container(shipped), "dtype": cfg.dtype,
                    "lora_attn_modules": list(cfg.model.lora_attn_modules),
                    "apply_lora_to_mlp": cfg.model.apply_lora_to_mlp, "lora_rank": cfg.model.lora_rank,
                    "lora_alpha": cfg.model.lora_alpha, "lora_dropout": cfg.model.lora_dropout,
                    "shipped_enable_activation_checkpointing": OmegaConf.load(
                        os.path.join(recipes_dir(), "configs", CONFIGS[method])).enable_activation_checkpointing}
    ran = OmegaConf.to_container(cfg)
    for key in ("output_dir", "checkpoint_dir"):
        for section in (ran, ran["checkpointer"]):
            if key in section:
                section[key] = "<tmp>"
    res["recipe_config"] = ran       # the config recipe.setup ran with, temporary folders named <tmp>
    recipe.cleanup()
    return copy.deepcopy(res)


# ---------------------------------------------------------------------------------- full fine-tuning
#: the shipped full single-device config every full case starts from (PagedAdamW8bit, optimizer_in_bwd: True,
#: enable_activation_checkpointing: True, dtype bf16, CEWithChunkedOutputLoss, batch 2)
FULL_CONFIG = "llama3_1/8B_full_single_device.yaml"
#: the optimizer section a case takes from another shipped full single-device config (the model stays the tiny
#: llama3_1): PagedAdamW (32-bit) is what 11 of the 15 ``optimizer_in_bwd: True`` configs ship; fused torch AdamW
#: what qwen2_5/0.5B ships, without optimizer_in_bwd or checkpointing
FULL_OPTIMIZERS = {"paged-adamw": "qwen2_5/7B_full_single_device.yaml",
                   "adamw": "qwen2_5/0.5B_full_single_device.yaml"}
#: the full cases: name -> (grad_ckpt, optimizer_in_bwd, the config whose optimizer section runs)
FULL_CASES = {"full-gc-bwd": (True, True, FULL_CONFIG), "full-nogc-bwd": (False, True, FULL_CONFIG),
              "full-gc-nobwd": (True, False, FULL_CONFIG), "full-nogc-nobwd": (False, False, FULL_CONFIG),
              "full-gc-bwd-paged-adamw": (True, True, FULL_OPTIMIZERS["paged-adamw"]),
              "full-nogc-nobwd-adamw": (False, False, FULL_OPTIMIZERS["adamw"])}


def full_config(ckpt: str, out_dir: str, *, grad_ckpt: bool, in_bwd: bool, optimizer_from: str):
    """:data:`FULL_CONFIG` with the overrides of the module docstring, ``optimizer_in_bwd`` as asked and the optimizer
    section of ``optimizer_from``; the model is the component its ``llama3_1_8b`` calls (``llama3_1``) at
    :data:`SHAPE`."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(recipes_dir(), "configs", FULL_CONFIG))
    shipped = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
               for k in ("model", "optimizer", "optimizer_in_bwd", "enable_activation_checkpointing", "dtype",
                         "batch_size", "loss", "clip_grad_norm")}
    cfg.model = {"_component_": "torchtune.models.llama3_1._component_builders.llama3_1", **SHAPE}
    cfg.optimizer = OmegaConf.load(os.path.join(recipes_dir(), "configs", optimizer_from)).optimizer
    cfg.optimizer_in_bwd = in_bwd
    _overrides(cfg, ckpt, out_dir, grad_ckpt=grad_ckpt)
    return cfg, shipped


def full_configs() -> dict[str, dict]:
    """Every shipped config whose usage comment runs ``tune run full_finetune_single_device``: the keys that set
    the memory of a full fine-tune (what ``--stack torchtune --method full`` should default to)."""
    import glob
    import re

    from omegaconf import OmegaConf

    root = os.path.join(recipes_dir(), "configs")
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            text = f.read()
        if not re.search(r"^#\s*tune run full_finetune_single_device\b", text, re.M):
            continue
        cfg = OmegaConf.load(path)
        out[os.path.relpath(path, root)] = {
            "optimizer": cfg.optimizer.get("_component_"), "fused": bool(cfg.optimizer.get("fused", False)),
            "optimizer_in_bwd": cfg.get("optimizer_in_bwd"),
            "enable_activation_checkpointing": cfg.get("enable_activation_checkpointing"),
            "dtype": cfg.get("dtype"), "loss": (cfg.get("loss") or {}).get("_component_")}
    return out


def optimizer_states(model: torch.nn.Module, optimizers) -> dict:
    """After one step: every parameter's state tensors by Hugging Face name (key -> bytes, dtype, shape) and the
    distinct storages they hold (bitsandbytes' quantization maps are one pair per optimizer instance, shared by its
    8-bit states: ``Optimizer8bit.name2qmap``), each as (bytes, dtype, state key, count)."""
    from collections import Counter

    names = {p: hf_name(n) for n, p in model.named_parameters()}
    per, seen = {}, {}
    for o in optimizers:
        for p, state in o.state.items():
            e = {}
            for k, v in state.items():
                if torch.is_tensor(v):
                    st = v.untyped_storage()
                    e[k] = [st.nbytes(), dt(v.dtype), list(v.shape)]
                    seen[st.data_ptr()] = (st.nbytes(), dt(v.dtype), k)
            per[names[p]] = e
    counts = Counter(seen.values())
    return {"per_param": per, "storages": sorted([*k, n] for k, n in counts.items()),
            "bytes": sum(b for b, _, _ in seen.values())}


def run_full(ckpt: str, *, grad_ckpt: bool, in_bwd: bool, optimizer_from: str) -> dict:
    """``FullFinetuneRecipeSingleDevice(cfg).setup(cfg)``, the train loop's body measured, the step, then
    ``recipe.train()`` whole (as :func:`run`)."""
    from omegaconf import OmegaConf
    from torchtune import training, utils

    out_dir = tempfile.mkdtemp(prefix="tt-out-")
    cfg, shipped = full_config(ckpt, out_dir, grad_ckpt=grad_ckpt, in_bwd=in_bwd, optimizer_from=optimizer_from)
    mod = recipe_module("full_finetune_single_device")
    recipe = mod.FullFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    model = recipe._model
    built = params(model)
    batch = next(iter(recipe._dataloader))
    utils.batch_to_device(batch, recipe._device)
    if in_bwd:   # one optimizer per parameter, stepped in its post-accumulate-grad hook (recipe _setup_optimizer)
        optimizers = list(recipe._optim_ckpt_wrapper.optim_map.values())
    else:
        optimizers = [recipe._optimizer]

    # the gradient bytes alive at each in-backward step() (training/memory.py:236-238 optim_step calls
    # optim_dict[param].step() then .zero_grad()): wrapped on the instance, removed before recipe.train()
    at_step: list[tuple[int, int]] = []
    wrapped = []
    if in_bwd:
        for o in optimizers:
            (p,) = o.param_groups[0]["params"]
            had = o.__dict__.get("step")
            orig = o.step

            def stepped(*a, _orig=orig, _p=p, **k):
                alive = sum(q.grad.untyped_storage().nbytes() for q in model.parameters() if q.grad is not None)
                at_step.append((alive, _p.grad.untyped_storage().nbytes()))
                return _orig(*a, **k)

            o.step = stepped
            wrapped.append((o, had))
    tokens = {}

    def forward():                   # the body of recipe.train()'s loop (recipes/full_finetune_single_device.py:692-701)
        b = dict(batch)
        current_num_tokens = (b["labels"] != recipe._loss_fn.ignore_index).sum()
        tokens["n"] = current_num_tokens
        return recipe._loss_step(b) * current_num_tokens

    model.train()
    res = compact(step(model, forward, autocast=False, n_layers=SHAPE["num_layers"]))
    for o, had in wrapped:
        if had is None:
            del o.step
        else:
            o.step = had
    if not in_bwd:                   # the loop's step (recipes/full_finetune_single_device.py:704-713)
        training.scale_grads(model, 1 / tokens["n"])
        recipe._optimizer.step()
    res["optimizer_states"] = optimizer_states(model, optimizers)
    if not in_bwd:
        recipe._optimizer.zero_grad(set_to_none=True)
    res["params"] = built
    res["in_bwd_steps"] = len(at_step)
    res["in_bwd_grad_alive_max"] = max((a for a, _ in at_step), default=0)
    res["in_bwd_only_own_grad"] = all(a == own for a, own in at_step)
    cache = model.layers[0].attn.pos_embeddings.cache
    res["rope_cache"] = [cache.untyped_storage().nbytes(), dt(cache.dtype), list(cache.shape)]
    res["logits_chunks"] = model.num_output_chunks
    res["layers"] = sorted({type(m).__name__ for m in model.layers})
    res["optimizer"] = sorted({type(o).__name__ for o in optimizers})
    res["optimizers"] = len(optimizers)
    res["optimizer_fused"] = sorted({bool(o.defaults.get("fused")) for o in optimizers})
    res["loss_fn"] = type(recipe._loss_fn).__name__
    for p in model.parameters():
        p.grad = None
    recipe.train()                   # one whole step of the recipe's own loop (max_steps_per_epoch: 1)
    res["train_steps_run"] = recipe.global_step
    res["setup"] = {"method": "full", "grad_ckpt": grad_ckpt, "optimizer_in_bwd": in_bwd, "config": FULL_CONFIG,
                    "optimizer_from": optimizer_from, "optimizer": OmegaConf.to_container(cfg.optimizer),
                    "dtype": cfg.dtype, "shipped": shipped}
    ran = OmegaConf.to_container(cfg)
    for key in ("output_dir", "checkpoint_dir"):
        for section in (ran, ran["checkpointer"]):
            if key in section:
                section[key] = "<tmp>"
    res["recipe_config"] = ran
    recipe.cleanup()
    return copy.deepcopy(res)


#: torchtune 0.6.1 model builders -> the bundled vramplan profile of the same checkpoint
ROPE_BUILDERS = {"llama3_1.llama3_1_8b": "llama-3.1-8b", "llama3.llama3_8b": "llama-3-8b",
                 "llama3_2.llama3_2_1b": "llama-3.2-1b", "qwen2_5.qwen2_5_7b_base": "qwen2.5-7b",
                 "mistral.mistral_7b": "mistral-7b-v0.1"}


def rope_caches() -> dict[str, dict]:
    """The rotary cos/sin ``cache`` buffer each real-size builder registers at init, on the device the model is
    built on, whatever the dtype: the builder run on ``meta`` under ``set_default_dtype(bf16)``, then the one rope
    module every layer shares built for real on CPU by its ``rope_init()``, as the distributed recipe does after
    ``to_empty`` (recipes/lora_finetune_distributed.py:508-509)."""
    import importlib

    from torchtune import training

    out = {}
    for path, profile in ROPE_BUILDERS.items():
        pkg, fn = path.rsplit(".", 1)
        builder = getattr(importlib.import_module(f"torchtune.models.{pkg}"), fn)
        with training.set_default_dtype(torch.bfloat16):
            with torch.device("meta"):
                model = builder()
            ropes = {id(layer.attn.pos_embeddings): layer.attn.pos_embeddings for layer in model.layers}
            rope = next(iter(ropes.values()))
            rope.rope_init()
        c = rope.cache
        out[path] = {"profile": profile, "class": type(rope).__name__, "ropes": len(ropes), "dim": rope.dim,
                     "max_seq_len": rope.max_seq_len, "dtype": dt(c.dtype), "shape": list(c.shape),
                     "bytes": c.untyped_storage().nbytes()}
        del model, rope, ropes, c
    return out


def main() -> None:
    torch.set_num_threads(1)
    ckpt = tiny_checkpoint(tempfile.mkdtemp(prefix="tt-tiny-"))
    out = record("torchtune", "torchtune", "torchao", "bitsandbytes", libs=())
    out["config"] = HF_CONFIG
    out["shape"] = SHAPE
    for method in ("lora", "qlora"):
        for gc in (True, False):
            r = run(ckpt, method=method, grad_ckpt=gc)
            out["rank"] = r["setup"]["lora_rank"]
            out["cases"][f"{method}-{'gc' if gc else 'nogc'}"] = r
    out["full_cases"] = {name: run_full(ckpt, grad_ckpt=gc, in_bwd=bwd, optimizer_from=src)
                         for name, (gc, bwd, src) in FULL_CASES.items()}
    out["full_configs"] = full_configs()
    out["rope_caches"] = rope_caches()
    dump(out)


if __name__ == "__main__":
    main()
