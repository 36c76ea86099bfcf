"""One training step of a tiny model, measured on CPU: what the frameworks' cross-check scripts share (issue 14 § 4).

Pure torch (no vramplan import): the scripts run in a framework's own venv. What is measured, as
``tests/estimate/test_activations_vs_torch.py`` does:

* ``params``: every parameter after the framework built and patched the model, by canonical name (PEFT's
  ``base_model.model.`` prefix, ``.base_layer`` and the adapter name ``.default`` dropped, ``lora_A.weight`` ->
  ``lora_A``): its dtype (``nf4`` for a bitsandbytes ``Params4bit``), whether it trains, its storage bytes; for a
  ``Params4bit`` the dtype it was quantized from (``quant_state.dtype``).
* ``saved``: the distinct storages (``untyped_storage().data_ptr()``, sized by ``nbytes()``) autograd saves during
  the forward (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded; per decoder layer (the storages
  created while that layer ran, plus its input when saved: a ``TorchDispatchMode`` follows creation) and over the
  whole forward (``all``: every saved storage, with dtype and shape, wherever it was made — under checkpointing
  the layer inputs are saved by the checkpoint function outside any layer).
* ``peaks``: live CPU bytes above the start (``torch.profiler`` allocator events, ``profile_memory=True``, summed in
  time order) of the forward and of the backward, each phase's peak and end; ``peaks_512`` the same with every
  allocation rounded up to 512 B, as the CUDA caching allocator rounds it.
* ``grads``: bytes of every ``.grad`` after backward, by dtype.

:func:`compact` shrinks a result to what the committed JSON and its test use.
"""

from __future__ import annotations

import contextlib
import json

import torch
from torch.profiler import ProfilerActivity, profile

#: the tiny Llama of tests/estimate/test_activations_vs_torch.py (its _BASE + llama)
TINY_LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=160,
                  num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, vocab_size=128,
                  max_position_embeddings=128, tie_word_embeddings=False, hidden_act="silu", attention_dropout=0.0,
                  rms_norm_eps=1e-6, dtype="bfloat16", torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
BATCH, SEQ, RANK = 2, 32, 4
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "int64",
          torch.int32: "int32", torch.bool: "bool", torch.uint8: "uint8"}


def dt(t: torch.dtype) -> str:
    return DTYPES.get(t, str(t))


def canonical(name: str) -> str:
    name = name.replace("base_model.model.", "").replace(".base_layer", "")
    for ab in ("lora_A", "lora_B"):
        name = name.replace(f".{ab}.default.weight", f".{ab}")
    return name


def params(model: torch.nn.Module) -> dict[str, dict]:
    out = {}
    for n, p in model.named_parameters():
        e = {"dtype": dt(p.dtype), "trainable": bool(p.requires_grad), "bytes": p.untyped_storage().nbytes(),
             "numel": p.numel()}
        if type(p).__name__ == "Params4bit":
            e["dtype"] = "nf4" if p.quant_type == "nf4" else p.quant_type
            e["quant_state_dtype"] = dt(p.quant_state.dtype)
        out[canonical(n)] = e
    return out


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Attributes every new storage to the decoder layer running when it was made (test_activations_vs_torch)."""

    def __init__(self, model: torch.nn.Module, layers) -> None:
        super().__init__()
        self.region = None
        self.created: dict[int, object] = {}
        self.inputs: dict[int, int] = {}
        self.per_layer: dict[int, dict[int, tuple[int, str]]] = {}
        self.all: dict[int, tuple[int, str, tuple]] = {}
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.ops: set[str] = set()
        self.handles = []
        self.last = len(layers) - 1
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._leave(i)))

    def _enter(self, i):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.inputs[i] = x.untyped_storage().data_ptr()
            self.region = i
        return hook

    def _leave(self, i):
        def hook(module, args, out):
            self.region = -1 if i == self.last else None
        return hook

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        flat_in = torch.utils._pytree.tree_flatten((args, kwargs))[0]
        in_ptrs = {a.untyped_storage().data_ptr() for a in flat_in if isinstance(a, torch.Tensor)}
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                p = t.untyped_storage().data_ptr()
                if p and p not in in_ptrs:
                    self.created[p] = self.region
        return out

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        p = st.data_ptr()
        if p in self.params or not p:
            return t
        entry = (st.nbytes(), dt(t.dtype))
        self.all[p] = (*entry, tuple(t.shape))
        i = self.region
        if i is not None and (self.created.get(p, "outside") == i or self.inputs.get(i) == p):
            self.per_layer.setdefault(i, {})[p] = entry
        return t


@contextlib.contextmanager
def cpu_autocast_query():
    """peft lora/bnb.py asks ``torch.is_autocast_enabled()`` (CUDA's state): answer for the CPU, so the QLoRA step
    takes the path it takes on a GPU (as test_activations_vs_torch.py does)."""
    orig = torch.is_autocast_enabled

    def query(*args, **kwargs):
        return orig(*args, **kwargs) if (args or kwargs) else orig("cpu")

    torch.is_autocast_enabled = query
    try:
        yield
    finally:
        torch.is_autocast_enabled = orig


def _live(fn):
    peak, cur, _, _, out = _live_both(fn)
    return peak, cur, out


def _live_both(fn):
    """Peak and end of live bytes while ``fn`` runs, as the CPU allocator reports them and with every allocation
    rounded up to 512 B (the CUDA caching allocator's block size, vramplan.dtypes.alloc)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    evs = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())
    cur = peak = cur512 = peak512 = 0
    for e in evs:
        n = e.nbytes()
        cur += n
        peak = max(peak, cur)
        r = -(-abs(n) // 512) * 512
        cur512 += r if n > 0 else -r
        peak512 = max(peak512, cur512)
    return peak, cur, peak512, cur512, out


def decoder_layers(model: torch.nn.Module, n: int):
    """The ``n`` decoder layers: the ModuleList named ``layers`` (transformers, torchtune) or ``h`` (LitGPT)."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n and name.rpartition(".")[2] in ("layers", "h"):
            return m
    raise AssertionError("no decoder layer list")


def step(model: torch.nn.Module, forward, *, autocast: bool, n_layers: int) -> dict:
    """``forward()`` returns the loss (the framework's own loss call); runs it and its backward, measured."""
    rec = _Recorder(model, decoder_layers(model, n_layers))
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    holder = {}

    def fwd():
        with rec, torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), ac:
            holder["loss"] = forward()

    try:
        with cpu_autocast_query():
            fp, fend, fp512, fend512, _ = _live_both(fwd)
            loss = holder.pop("loss")
            bp, bend, bp512, bend512, _ = _live_both(lambda: loss.backward())
    finally:
        for h in rec.handles:
            h.remove()
    grads: dict[str, int] = {}
    for p in model.parameters():
        if p.grad is not None:
            grads[dt(p.grad.dtype)] = grads.get(dt(p.grad.dtype), 0) + p.grad.untyped_storage().nbytes()
    return {
        "loss_dtype": dt(loss.dtype),
        "saved_per_layer": {str(i): sorted(v.values(), reverse=True) for i, v in sorted(rec.per_layer.items())},
        "saved_all": sorted(rec.all.values(), reverse=True),
        "peaks": {"forward_peak": fp, "forward_end": fend, "backward_peak": bp, "backward_end": bend},
        "peaks_512": {"forward_peak": fp512, "forward_end": fend512, "backward_peak": bp512,
                      "backward_end": bend512},
        "grads": grads,
        "sdpa_cpu_flash": "aten._scaled_dot_product_flash_attention_for_cpu.default" in rec.ops,
    }


def compact(res: dict) -> dict:
    """A :func:`step` result as the committed JSON keeps it: ``saved_all`` becomes its total (``bytes``, ``count``)
    plus the storages saved outside every per-layer region (``outside_layers``: bytes, dtype, shape, largest
    first: under checkpointing the layer inputs, the rotary cos/sin that all layers share); the per-layer lists
    stay (bytes, dtype) pairs."""
    from collections import Counter
    out = dict(res)
    all_ = [tuple(x[:2]) for x in res["saved_all"]]
    inside = Counter()
    for v in res["saved_per_layer"].values():
        inside.update(tuple(x) for x in v)
    left = Counter(all_) - inside
    outside = []
    for n, d, shape in res["saved_all"]:
        if left[(n, d)] > 0:
            left[(n, d)] -= 1
            outside.append([n, d, list(shape)])
    out["saved_all"] = {"bytes": sum(n for n, _ in all_), "count": len(all_), "outside_layers": outside}
    return out


def batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (BATCH, SEQ), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


#: the libraries the HF-based frameworks all run on
HF_LIBS = ("transformers", "peft", "accelerate", "bitsandbytes")


def record(framework: str, module: str, *more: str, libs: tuple[str, ...] = HF_LIBS) -> dict:
    """A result file's head: the versions measured with (the framework's, torch's and ``libs``, by default the
    libraries every HF-based framework here runs, plus ``more``), the tiny model, batch, sequence and rank; ``cases``
    to fill."""
    import importlib
    modules = {framework: module, **{m: m for m in (*libs, *more)}}
    versions = {name: importlib.import_module(m).__version__ for name, m in modules.items()}
    return {"versions": {**versions, "torch": torch.__version__}, "config": TINY_LLAMA, "batch": BATCH, "seq": SEQ,
            "rank": RANK, "cases": {}}


def lora_qlora_cases(out: dict, run, path: str) -> None:
    """``run(path, quantized=, grad_ckpt=)`` for LoRA and QLoRA, with and without checkpointing, into ``out``."""
    for quantized in (False, True):
        for gc in (True, False):
            out["cases"][f"{'qlora' if quantized else 'lora'}-{'gc' if gc else 'nogc'}"] = run(
                path, quantized=quantized, grad_ckpt=gc)


def dump(res: dict) -> None:
    """Write the results to the path given as the first argument (the frameworks log to stdout), else print."""
    import sys
    text = json.dumps(res, indent=1, sort_keys=True, default=list) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def tiny_checkpoint(path: str, config: dict | None = None, seed: int = 0) -> str:
    """A random-initialised bf16 checkpoint of ``config`` (default ``TINY_LLAMA``) with a 128-token word-level
    tokenizer, written to ``path``: what a framework's loader reads from a local folder (no Hub)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = dict(config or TINY_LLAMA)
    torch.manual_seed(seed)
    hf = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("dtype", "torch_dtype")})
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16)
    model.save_pretrained(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, cfg["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<pad>")
    fast.save_pretrained(path)
    return path
