"""LitGPT 0.5.13: a tiny Llama through its real LoRA/QLoRA fine-tuning step on CPU, measured (issue 14 § 4). Writes
JSON to its argument; ``benchmarks/frameworks/results/litgpt.json`` is its output and
``tests/estimate/test_stack_litgpt_cpu.py`` compares it with ``--stack litgpt``.

Not a CI test: it needs litgpt, Lightning and (for QLoRA) bitsandbytes. Run it in a private venv::

    python3 -m venv /tmp/litgpt-h-venv && . /tmp/litgpt-h-venv/bin/activate
    pip install torch==2.13.0 litgpt==0.5.13 lightning==2.6.6 bitsandbytes==0.50.2
    python benchmarks/frameworks/litgpt_step.py benchmarks/frameworks/results/litgpt.json

What runs, all LitGPT's and Lightning's own code, in the order ``litgpt/finetune/lora.py`` runs it (``setup`` ->
``main`` -> ``fit``), with no checkpoint, tokenizer or dataset (none is on this machine, and none changes what the
step allocates): a ``litgpt.lora.Config`` of the tiny Llama of ``_step.TINY_LLAMA`` (:data:`LIT_CONFIG`; LoRA on
every Linear: query, key, value, projection, MLP and head, r = alpha = 4, dropout 0; two cases with LitGPT's
default query + value only); ``L.Fabric(devices=1, accelerator="cpu", precision=...)`` with ``setup``'s precision (its
default ``get_default_supported_precision(training=True)`` = ``bf16-mixed``, or ``bf16-true``) or, for
``--quantize bnb.nf4``, ``plugins=BitsandbytesPrecision("nf4", torch.bfloat16)`` (``finetune/lora.py:131-149``);
``fabric.seed_everything``; ``GPT(config)`` under ``fabric.init_module(empty_init=False)``;
``mark_only_lora_as_trainable``; ``fabric.setup_module``; the optimizer exactly as ``main`` builds it
(``instantiate_torch_optimizer("AdamW", ...)`` or, quantized, ``instantiate_bnb_optimizer`` followed by the swap of
``transformer.wte`` for a bitsandbytes ``StableEmbedding``, ``finetune/lora.py:217-231``) and
``fabric.setup_optimizers``; ``model.max_seq_length = SEQ`` as ``fit`` sets it from the longest sample
(``finetune/lora.py:304``; block size 128, so the rotary cache is rebuilt: fp32); then the step of ``fit``'s loop
(``finetune/lora.py:355-359``)::

    logits = model(input_ids, lm_head_chunk_size=128)
    logits[-1] = logits[-1][..., :-1, :]
    loss = chunked_cross_entropy(logits, targets[..., 1:])
    fabric.backward(loss / train.gradient_accumulation_iters(devices, num_nodes))

measured with ``_step.step`` (no extra autocast: the ``_FabricModule`` applies the precision's own forward
context and ``convert_output``); ``_step.step``'s ``loss.backward()`` is ``fabric.backward(loss)``
(:class:`FabricLoss`); ``logits`` stays alive through it, as the loop's local does.

Checkpointing: ``finetune/lora.py`` checkpoints only on more than one device, in ``parallelize_fn``
(``activation_checkpointing=True``: every ``Block`` in ``checkpoint_wrapper(preserve_rng_state=False)``, then
``fully_shard``). The ``-gc`` cases run LitGPT's own ``parallelize_fn`` on one process with ``fully_shard`` made the
identity (no process group on one CPU): the checkpointing exactly, without the sharding.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _step import RANK, SEQ, TINY_LLAMA, batch, compact, dt, dump, params, record, step  # noqa: E402

#: the tiny Llama of ``_step.TINY_LLAMA`` as LitGPT's config (litgpt 0.5.13 config.py ``Config``; its Llama rows
#: write the same fields: no bias, RMSNorm, LLaMAMLP, full rotary, sequential residual)
LIT_CONFIG = dict(name="tiny-llama", n_layer=TINY_LLAMA["num_hidden_layers"], n_embd=TINY_LLAMA["hidden_size"],
                  n_head=TINY_LLAMA["num_attention_heads"], n_query_groups=TINY_LLAMA["num_key_value_heads"],
                  head_size=TINY_LLAMA["hidden_size"] // TINY_LLAMA["num_attention_heads"],
                  intermediate_size=TINY_LLAMA["intermediate_size"], vocab_size=TINY_LLAMA["vocab_size"],
                  padded_vocab_size=TINY_LLAMA["vocab_size"], block_size=TINY_LLAMA["max_position_embeddings"],
                  bias=False, norm_class_name="RMSNorm", norm_eps=TINY_LLAMA["rms_norm_eps"],
                  mlp_class_name="LLaMAMLP", rotary_percentage=1.0, parallel_residual=False,
                  shared_attention_norm=False)
ALL_TARGETS = dict(lora_query=True, lora_key=True, lora_value=True, lora_projection=True, lora_mlp=True,
                   lora_head=True)
#: finetune/lora.py setup()'s defaults: query and value only
DEFAULT_TARGETS = dict(lora_query=True, lora_key=False, lora_value=True, lora_projection=False, lora_mlp=False,
                       lora_head=False)
#: name -> (precision, quantize, targets, checkpointing)
CASES = {
    "lora-mixed": ("bf16-mixed", None, ALL_TARGETS, False),
    "lora-true": ("bf16-true", None, ALL_TARGETS, False),
    "lora-mixed-qv": ("bf16-mixed", None, DEFAULT_TARGETS, False),      # `litgpt finetune lora` as it ships
    "lora-true-qv": ("bf16-true", None, DEFAULT_TARGETS, False),
    "lora-mixed-gc": ("bf16-mixed", None, ALL_TARGETS, True),
    "lora-true-gc": ("bf16-true", None, ALL_TARGETS, True),
    "qlora-true": ("bf16-true", "bnb.nf4", ALL_TARGETS, False),
    "qlora-true-gc": ("bf16-true", "bnb.nf4", ALL_TARGETS, True),
}


@contextlib.contextmanager
def fully_shard_identity():
    """``parallelize_fn`` imports ``fully_shard`` when it runs (finetune/lora.py:523): make it return its module."""
    import importlib
    fs = importlib.import_module("torch.distributed._composable.fsdp.fully_shard")   # the module, not the function
    orig = fs.fully_shard
    fs.fully_shard = lambda module, **kwargs: module
    try:
        yield
    finally:
        fs.fully_shard = orig


class FabricLoss:
    """The loss as ``_step.step`` takes it, its ``backward()`` being ``fabric.backward(loss)`` (the
    ``_FabricModule``'s backward hook refuses a bare ``loss.backward()``)."""

    def __init__(self, fabric, loss: torch.Tensor) -> None:
        self.fabric, self.loss, self.dtype = fabric, loss, loss.dtype

    def backward(self) -> None:
        self.fabric.backward(self.loss)


@contextlib.contextmanager
def bnb_on_cpu():
    """QLoRA on this CPU, answered as a CUDA device answers: Lightning's connector refuses ``BitsandbytesPrecision``
    off CUDA (lightning 2.6.6 fabric/connector.py:452-457), and ``_Linear4bit.quantize`` moves the weight to CUDA
    (fabric/plugins/precision/bitsandbytes.py:337-351): while this runs, the connector's check also accepts the CPU
    accelerator, and ``quantize`` runs its own steps (fp16 first, ``quantize_4bit``, ``_replace_param``) on the CPU."""
    import bitsandbytes as bnb
    from lightning.fabric import connector
    from lightning.fabric.accelerators import CPUAccelerator
    from lightning.fabric.plugins.precision import bitsandbytes as lbnb

    lbnb._import_bitsandbytes()                      # defines _Linear4bit and its subclasses
    linear4 = lbnb._Linear4bit

    def quantize(params4bit, weight, device):       # bitsandbytes.py:343-351, device CPU
        w = weight.contiguous().to(device="cpu", dtype=torch.half)
        w_4bit, quant_state = bnb.functional.quantize_4bit(
            w, blocksize=params4bit.blocksize, compress_statistics=params4bit.compress_statistics,
            quant_type=params4bit.quant_type, quant_storage=params4bit.quant_storage)
        return lbnb._replace_param(params4bit, w_4bit, quant_state)

    orig_cuda, orig_quantize = connector.CUDAAccelerator, linear4.__dict__["quantize"]
    connector.CUDAAccelerator = (orig_cuda, CPUAccelerator)
    linear4.quantize = staticmethod(quantize)
    try:
        yield
    finally:
        connector.CUDAAccelerator = orig_cuda
        linear4.quantize = orig_quantize


def base_checkpoint(path: str) -> str:
    """``lit_model.pth``: the base weights of a plain ``litgpt.GPT`` of :data:`LIT_CONFIG` in bf16, as
    ``convert_hf_checkpoint`` writes a checkpoint (what ``load_checkpoint`` reads; LoRA's ``_load_from_state_dict``
    maps its names, litgpt 0.5.13 lora.py:516-521)."""
    from litgpt import GPT, Config
    torch.manual_seed(0)
    model = GPT(Config(**LIT_CONFIG)).to(torch.bfloat16)
    torch.save(model.state_dict(), path)
    return path


def run(checkpoint: str, precision: str, quantize: str | None, targets: dict, grad_ckpt: bool) -> dict:
    import lightning as L
    from lightning.fabric.plugins import BitsandbytesPrecision
    from litgpt.finetune import lora as lora_ft
    from litgpt.lora import GPT, Config, mark_only_lora_as_trainable
    from litgpt.utils import (
        chunked_cross_entropy,
        instantiate_bnb_optimizer,
        instantiate_torch_optimizer,
        load_checkpoint,
    )

    config = Config(**LIT_CONFIG, lora_r=RANK, lora_alpha=RANK, lora_dropout=0.0, **targets)
    plugins = None
    if quantize is not None:                        # finetune/lora.py:136-145
        dtype = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "32-true": torch.float32}[precision]
        plugins = BitsandbytesPrecision(quantize[4:], dtype)
        precision = None
    with bnb_on_cpu() if plugins else contextlib.nullcontext():
        fabric = L.Fabric(devices=1, accelerator="cpu", strategy="auto", precision=precision, plugins=plugins)
    fabric.seed_everything(1337)
    with fabric.init_module(empty_init=(fabric.world_size > 1)):
        model = GPT(config)
    mark_only_lora_as_trainable(model)
    if grad_ckpt:
        with fully_shard_identity():
            model = lora_ft.parallelize_fn(model, device_mesh={"data_parallel": None}, activation_checkpointing=True)
    model = fabric.setup_module(model)
    swapped = False
    if isinstance(fabric.strategy.precision, BitsandbytesPrecision):      # finetune/lora.py:217-228
        optimizer = instantiate_bnb_optimizer("AdamW", model.parameters())
        from bitsandbytes.nn import StableEmbedding

        old_embedding = model.transformer.wte
        model.transformer.wte = StableEmbedding(old_embedding.num_embeddings, old_embedding.embedding_dim)
        with torch.no_grad():
            model.transformer.wte.weight.copy_(old_embedding.weight)
        model.transformer.wte = model.transformer.wte.to(
            device=old_embedding.weight.device, dtype=old_embedding.weight.dtype
        )
        swapped = True
    else:
        optimizer = instantiate_torch_optimizer("AdamW", model.parameters())
    optimizer = fabric.setup_optimizers(optimizer)
    with bnb_on_cpu() if plugins else contextlib.nullcontext():
        load_checkpoint(fabric, model, checkpoint, strict=False)     # finetune/lora.py:236
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    model.max_seq_length = SEQ                       # fit: min(longest_seq_length, train.max_seq_length)
    module = model.module                            # the GPT the _FabricModule wraps: LitGPT's own names
    built = {name.replace("._checkpoint_wrapped_module", ""): e for name, e in params(module).items()}
    for n, p in module.named_parameters():
        built[n.replace("._checkpoint_wrapped_module", "")]["in_optimizer"] = id(p) in in_optimizer
    in_model = {id(p) for p in module.parameters()}
    # what the optimizer holds that the model no longer does: QLoRA's replaced embedding (finetune/lora.py:217-224
    # builds the optimizer over model.parameters() before the swap), kept alive by its param_groups
    held = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in in_model]
    model.train()
    inputs = batch(TINY_LLAMA["vocab_size"])
    input_ids, targets_ = inputs["input_ids"], inputs["labels"]
    kept = {}

    def forward():                                   # finetune/lora.py:355-359
        logits = model(input_ids, lm_head_chunk_size=128)
        logits[-1] = logits[-1][..., :-1, :]
        loss = chunked_cross_entropy(logits, targets_[..., 1:])
        kept["logits"] = logits                      # the loop's local, alive through backward
        return FabricLoss(fabric, loss / 1)          # / train.gradient_accumulation_iters(...) = 1

    res = compact(step(model, forward, autocast=False, n_layers=LIT_CONFIG["n_layer"]))
    res["params"] = built
    res["logits"] = [[t.untyped_storage().nbytes(), str(t.dtype).removeprefix("torch."), list(t.shape)]
                     for t in kept["logits"]]
    res["setup"] = {"precision": precision or f"bf16-true ({quantize})", "quantize": quantize,
                    "plugin": type(fabric.strategy.precision).__name__, "grad_ckpt": grad_ckpt,
                    "lora_dropout": config.lora_dropout, "targets": {k: v for k, v in targets.items() if v},
                    "optimizer": type(optimizer.optimizer).__name__, "wte": type(model.transformer.wte).__name__,
                    "wte_swapped": swapped,
                    "optimizer_params_not_in_model": [[p.untyped_storage().nbytes(), dt(p.dtype), list(p.shape),
                                                       bool(p.requires_grad)] for p in held],
                    "blocks": sorted({type(b).__name__ for b in model.transformer.h}),
                    "rope_cache_dtype": str(model.cos.dtype).removeprefix("torch.")}
    return res


def main() -> None:
    import litgpt
    # litgpt 0.5.13 has no __version__; record() reads it: the installed distribution's own version
    litgpt.__version__ = importlib.metadata.version("litgpt")
    libs = ["lightning"]
    try:
        import bitsandbytes  # noqa: F401
        libs.append("bitsandbytes")
    except ImportError:
        pass
    out = record("litgpt", "litgpt", libs=tuple(libs))
    out["litgpt_config"] = LIT_CONFIG
    torch.set_num_threads(1)
    checkpoint = base_checkpoint(os.path.join(tempfile.mkdtemp(prefix="litgpt-tiny-"), "lit_model.pth"))
    for name, case in CASES.items():
        if case[1] is not None and "bitsandbytes" not in libs:
            continue
        out["cases"][name] = run(checkpoint, *case)
    dump(out)


if __name__ == "__main__":
    main()
