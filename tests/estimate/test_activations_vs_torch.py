"""Saved activations per decoder layer: the estimator's symbolic replay (``layers.py``) against real torch.

Small random-initialised models of each family run a forward pass on this CPU — under CPU autocast where the
setup autocasts — inside ``torch.autograd.graph.saved_tensors_hooks`` and a dispatch mode that records which
storages each decoder layer creates. A layer's activations are the distinct storages (deduplicated by
``untyped_storage().data_ptr()``, sized by ``untyped_storage().nbytes()``) that autograd saves while the layer
runs and that the layer created, plus the layer input when it is saved. Parameters saved by reference (a
frozen weight kept for ``grad_input``) are weights, not activations; the rotary ``cos``/``sin`` are created
once per model and shared by all layers. The estimator's number is the un-rounded sum over the layer trace's
saved storages; the 512-B-rounded sums (``LayerTrace.saved_at``) are compared as well, which holds because
the storages correspond one to one.

Where CPU and CUDA differ, the CUDA behaviour is what the estimator models; each case here either follows
the CUDA code path or states the known difference:

* sdpa: CPU dispatches ``_scaled_dot_product_flash_attention_for_cpu``, which saves q, k, v, the output and an
  fp32 logsumexp (O(seq), GQA k/v not expanded) — the same set as CUDA flash; no case needs the math path.
* ``native_layer_norm`` keeps mean/rstd in the input dtype on CPU (``layer_norm_cpu``: ``param_scalar_type``)
  and in fp32 on CUDA (accumulate type): measured 16-bit mean/rstd are counted at 4 B per element.
* CPU autocast runs ``layer_norm`` in the autocast dtype, CUDA autocast in fp32: LayerNorm families (gpt2,
  opt) are not compared under autocast with a 16-bit residual stream (LoRA bf16-mixed).
* ``peft/tuners/lora/bnb.py`` asks ``torch.is_autocast_enabled()``, which reports CUDA autocast only: it is
  patched to report CPU autocast so that the QLoRA run takes the code path it takes on a GPU.
* peft ``Linear.get_delta_weight`` upcasts 16-bit adapter weights to fp32 on CPU (the MoE router's
  ``ParamWrapper``): those CPU-only copies are checked against their exact size, apart from the rest.
* dropout: CPU's unfused dropout saves an input-dtype noise tensor where CUDA's ``native_dropout`` saves a
  bool mask, so the tiny configs turn dropout off.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from vramplan.dtypes import BYTES, alloc  # noqa: E402
from vramplan.estimate.estimator import estimate  # noqa: E402
from vramplan.estimate.structure import static_structure, structural_setup  # noqa: E402
from vramplan.lora import LoraConfig  # noqa: E402
from vramplan.profiles import resolve_model  # noqa: E402
from vramplan.setup import Setup  # noqa: E402
from vramplan.shapes import spec_from_config  # noqa: E402
from vramplan.shapes.from_meta import hf_config  # noqa: E402

BATCH, SEQ, RANK = 2, 32, 4
_BASE = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=False,
             attention_dropout=0.0)
TINY: dict[str, dict] = {
    "llama": dict(_BASE, model_type="llama", hidden_act="silu"),
    "qwen2": dict(_BASE, model_type="qwen2", hidden_act="silu"),                       # q/k/v biases
    "qwen3": dict(_BASE, model_type="qwen3", hidden_act="silu", head_dim=16),          # q/k norms
    "gemma2": dict(_BASE, model_type="gemma2", hidden_act="gelu_pytorch_tanh",          # sandwich + gemma norms,
                   hidden_activation="gelu_pytorch_tanh", head_dim=16,                  # logit softcapping
                   query_pre_attn_scalar=16, sliding_window=16, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, tie_word_embeddings=True),
    "phi3": dict(_BASE, model_type="phi3", hidden_act="silu", resid_pdrop=0.0, embd_pdrop=0.0,
                 pad_token_id=0),                                                       # fused qkv, gate_up
    "gpt2": dict(model_type="gpt2", n_embd=64, n_head=4, n_layer=2, n_positions=128, vocab_size=128,
                 activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=160, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=128, max_position_embeddings=128, word_embed_proj_dim=64, do_layer_norm_before=True,
                activation_function="relu", pad_token_id=1, dropout=0.0, attention_dropout=0.0),
    "mixtral": dict(_BASE, model_type="mixtral", hidden_act="silu", num_local_experts=4,
                    num_experts_per_tok=2, intermediate_size=96),                       # fused experts
    "qwen3_moe": dict(_BASE, model_type="qwen3_moe", hidden_act="silu", head_dim=16, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=48, decoder_sparse_step=1,
                      mlp_only_layers=[], norm_topk_prob=True),
}
LAYERNORM_FAMILIES = ("gpt2", "opt")
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "int64",
          torch.int32: "int32", torch.bool: "bool", torch.uint8: "uint8"}


# --------------------------------------------------------------------------------------------- measuring
@dataclass
class LayerSaves:
    """Distinct storages autograd saved while one decoder layer ran, by kind."""

    act: dict[int, tuple[int, str]] = field(default_factory=dict)        # created by the layer (or its input)
    param_cast: dict[int, tuple[int, str]] = field(default_factory=dict)  # `.to()` copies of parameters
    ln_stat16: dict[int, tuple[int, str]] = field(default_factory=dict)   # CPU 16-bit layer_norm mean/rstd

    def items(self, *, with_casts: bool) -> list[tuple[int, str]]:
        """(bytes, dtype) per storage, layer_norm statistics at their CUDA (fp32) size."""
        out = list(self.act.values()) + [(2 * n, "fp32") for n, _ in self.ln_stat16.values()]
        return out + (list(self.param_cast.values()) if with_casts else [])


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Attributes every new storage to the decoder layer running when it was created."""

    def __init__(self, model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
        super().__init__()
        self.region: int | None = None
        self.created: dict[int, int | None] = {}
        self.casts: set[int] = set()
        self.ln_stats: set[int] = set()
        self.inputs: dict[int, int] = {}
        self.saved: dict[int, LayerSaves] = {}
        self.ops: set[str] = set()
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.handles = []
        self.last = len(layers) - 1
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._leave(i)))

    def _enter(self, i: int):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.inputs[i] = x.untyped_storage().data_ptr()
            self.region = i
        return hook

    def _leave(self, i: int):
        def hook(module, args, out) -> None:
            # after the last layer: the final norm, lm_head, logits and loss (region -1)
            self.region = -1 if i == self.last else None
        return hook

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        flat_in = torch.utils._pytree.tree_flatten((args, kwargs))[0]
        in_ptrs = {a.untyped_storage().data_ptr() for a in flat_in if isinstance(a, torch.Tensor)}
        from_param = (func is torch.ops.aten._to_copy.default
                      and args[0].untyped_storage().data_ptr() in self.params)
        outs = [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for j, t in enumerate(outs):
            p = t.untyped_storage().data_ptr()
            if p == 0 or p in in_ptrs:          # views and in-place results are not new storages
                continue
            self.created[p] = self.region
            self.casts.discard(p)
            self.ln_stats.discard(p)
            if from_param:
                self.casts.add(p)
            if func is torch.ops.aten.native_layer_norm.default and j > 0:
                self.ln_stats.add(p)
        return out

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        i = self.region
        if i is None:
            return t
        st = t.untyped_storage()
        p = st.data_ptr()
        entry = (st.nbytes(), DTYPES.get(t.dtype, str(t.dtype)))
        saves = self.saved.setdefault(i, LayerSaves())
        if p in self.params:
            return t                             # a weight saved by reference
        if self.created.get(p, "outside") == i:
            if p in self.casts:
                saves.param_cast[p] = entry
            elif p in self.ln_stats and t.dtype != torch.float32:
                saves.ln_stat16[p] = entry
            else:
                saves.act[p] = entry
        elif self.inputs.get(i) == p:
            saves.act[p] = entry
        return t


def decoder_layers(model: torch.nn.Module, n: int) -> torch.nn.ModuleList:
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == n and name.rpartition(".")[2] in ("layers", "h"):
            return m
    raise AssertionError("no decoder layer list found")


def measure(model: torch.nn.Module, n_layers: int, autocast: bool, seed: int = 0,
            ops: set[str] | None = None) -> dict[int, LayerSaves]:
    """Forward ``BATCH x SEQ`` random tokens and record what each decoder layer saves for backward (and, in
    ``ops``, which aten ops ran)."""
    rec = _Recorder(model, decoder_layers(model, n_layers))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=g)
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    try:
        with rec, torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), ac:
            out = model(input_ids=ids, labels=ids)
        assert out.loss.requires_grad
    finally:
        for h in rec.handles:
            h.remove()
    if ops is not None:
        ops |= rec.ops
    return rec.saved


@contextlib.contextmanager
def _cuda_autocast_query_on_cpu():
    """peft lora/bnb.py calls ``torch.is_autocast_enabled()`` (no device: CUDA's state); answer for the CPU."""
    orig = torch.is_autocast_enabled

    def query(*args, **kwargs):
        return orig(*args, **kwargs) if (args or kwargs) else orig("cpu")

    torch.is_autocast_enabled = query
    try:
        yield
    finally:
        torch.is_autocast_enabled = orig


_QUANT_DIRS: dict[str, str] = {}


def build_model(family: str, setup: Setup, *, use_cache: bool | None = None) -> torch.nn.Module:
    """The model a user of transformers + peft + bitsandbytes builds for ``setup`` (tiny, random weights)."""
    cfg = hf_config(TINY[family])
    if use_cache is not None:
        cfg.use_cache = use_cache
    # gemma2 refuses sdpa (softcapping): transformers' default for it is eager, which the estimator follows
    attn = None if (family == "gemma2" and setup.attn == "sdpa") else setup.attn
    if setup.method == "qlora":
        if family not in _QUANT_DIRS:
            _QUANT_DIRS[family] = tempfile.mkdtemp(prefix="vramplan-tiny-")
            transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(_QUANT_DIRS[family])
        q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=setup.quant,
                                            bnb_4bit_use_double_quant=setup.double_quant,
                                            bnb_4bit_compute_dtype=torch.bfloat16)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            _QUANT_DIRS[family], quantization_config=q, device_map="cpu", dtype=torch.bfloat16,
            attn_implementation=attn, use_cache=cfg.use_cache)
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=setup.grad_ckpt)
    else:
        dtype = torch.float32 if setup.base_dtype == "fp32" else torch.bfloat16
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
        if setup.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if family == "gemma2":
        assert model.config._attn_implementation == "eager"
    model.train()
    if setup.method in ("lora", "qlora"):
        model.requires_grad_(False)
        lc = peft.LoraConfig(r=RANK, lora_alpha=RANK, target_modules="all-linear")
        model = peft.get_peft_model(model, lc, autocast_adapter_dtype=setup.adapter_weight_dtype == "fp32")
        if setup.quantized and setup.grad_ckpt:
            model.enable_input_require_grads()   # what prepare_model_for_kbit_training does with checkpointing
    return model


def make_setup(method: str, precision: str, attn: str = "sdpa", grad_ckpt: bool = False,
               adapter_dtype: str = "auto") -> Setup:
    lora = LoraConfig(r=RANK, alpha=RANK, targets=("all-linear",)) if method in ("lora", "qlora") else None
    return Setup.create(method=method, precision=precision, lora=lora, batch=BATCH, seq=SEQ, attn=attn,
                        grad_ckpt=grad_ckpt, adapter_dtype=adapter_dtype)


def estimated(family: str, setup: Setup) -> list[list[tuple[int, str, str]]]:
    """Per layer: (bytes, dtype, what) of every storage the trace saves, un-rounded."""
    spec = spec_from_config(TINY[family], name=f"tiny-{family}")
    st = static_structure(spec, structural_setup(setup))
    T, bss = BATCH * SEQ, BATCH * SEQ * SEQ
    return [[(s.nbytes(T, bss), s.dtype, s.saved_by[0]) for s in tr.saved] for tr in st.layer_traces]


def router_cpu_upcast_bytes(family: str) -> int:
    """fp32 copies of a 16-bit MoE router ParamWrapper's lora_A (r, H) and lora_B (E, r): CPU only."""
    c = TINY[family]
    if c["model_type"] not in ("mixtral", "qwen3_moe"):
        return 0
    e = c.get("num_local_experts", c.get("num_experts"))
    return 4 * RANK * (c["hidden_size"] + e)


def _diff(measured: list[tuple[int, str]], est: list[tuple[int, str, str]]) -> str:
    m = Counter(measured)
    e = Counter((n, d) for n, d, _ in est)
    return (f"only measured {sorted((m - e).items(), reverse=True)}; only estimated "
            f"{sorted((e - m).items(), reverse=True)}: "
            + "; ".join(w for n, d, w in est if (n, d) in (e - m)))


# ----------------------------------------------------------------------------------------------- cases
CASES = [
    *[(f, "lora", "bf16-mixed", "sdpa") for f in TINY if f not in LAYERNORM_FAMILIES],
    *[(f, "lora", "bf16-true", "sdpa") for f in TINY],
    *[(f, "full", "bf16-true", "sdpa") for f in TINY],
    *[(f, "full", "bf16-mixed", "sdpa") for f in TINY],
    *[(f, "full", "32-true", "sdpa") for f in ("llama", "gpt2", "mixtral")],
    *[(f, "lora", "bf16-true", "eager") for f in ("llama", "qwen3", "phi3", "gpt2", "opt", "mixtral")],
    ("gemma2", "lora", "bf16-mixed", "eager"),
    *[(f, "qlora", p, "sdpa") for f in ("llama", "phi3", "mixtral") for p in ("bf16-mixed", "bf16-true")],
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: torch's thread pool costs more than it saves (and timings stay stable)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("family,method,precision,attn", CASES, ids=["-".join(c) for c in CASES])
def test_saved_activations_match_torch(family, method, precision, attn):
    # adapters in the model's dtype under -true (torchtune's and LitGPT's way); PEFT's fp32 default there is
    # ADAPTER_CASES' below
    adapters = "compute" if method in ("lora", "qlora") and precision.endswith("-true") else "auto"
    setup = make_setup(method, precision, attn, adapter_dtype=adapters)
    torch.manual_seed(0)
    ops: set[str] = set()
    with _cuda_autocast_query_on_cpu():
        model = build_model(family, setup)
        saved = measure(model, model.config.num_hidden_layers, setup.autocast, ops=ops)
    if attn == "sdpa" and family != "gemma2":
        assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in ops, \
            "sdpa on CPU should run the CPU flash kernel (O(seq) saves, like CUDA flash)"
    if TINY[family]["model_type"] in ("mixtral", "qwen3_moe"):
        assert "aten._grouped_mm.default" in ops, "experts should run transformers' grouped_mm implementation"
    est = estimated(family, setup)
    adapters = method in ("lora", "qlora")
    for i, layer_est in enumerate(est):
        got = saved[i]
        # under autocast the adapters' (and frozen fp32 weights') cast copies are saved by their matmuls:
        # per-layer activations, in the trace; a full fine-tune's cached weight copies are checked below
        items = got.items(with_casts=adapters and setup.autocast)
        measured = sum(n for n, _ in items)
        expected = sum(n for n, _, _ in layer_est)
        assert measured == expected, (
            f"{family} {method} {precision} {attn} layer {i}: torch saved {measured:,} B, the trace "
            f"{expected:,} B (exact: same storages, un-rounded); {_diff(items, layer_est)}")
        assert sum(alloc(n) for n, _ in items) == sum(alloc(n) for n, _, _ in layer_est), \
            "512-B rounded sums differ although the un-rounded ones agree: the storages do not pair up"
        casts = sum(n for n, _ in got.param_cast.values())
        if method == "full" and setup.autocast:
            spec = spec_from_config(TINY[family])
            weights = sum(t.numel * 2 for t in spec.layer_tensors(i) if t.param_name != "bias"
                          and (t.module_type in ("linear", "conv1d") or t.role == "moe_router"))
            assert casts == weights, (f"autocast's cached bf16 copies of layer {i}'s fp32 matmul weights: "
                                      f"{casts:,} B saved, {weights:,} B expected (model.py autocast casts)")
        elif not setup.autocast:
            # (qlora's kbit preparation makes the router fp32, and its adapters with it: nothing to upcast)
            cpu_only = router_cpu_upcast_bytes(family) if method == "lora" and precision == "bf16-true" else 0
            assert casts == cpu_only, ("without autocast no parameter is copied, except peft's CPU-only fp32 "
                                       f"upcast of a bf16 router ParamWrapper ({cpu_only} B); got {casts} B")


# --adapter-dtype against PEFT's real dtypes: fp32 adapters on a bf16 base without autocast (PEFT's default
# autocast_adapter_dtype=True when the model is loaded in bf16 and no AMP runs: peft casts each adapted input to
# fp32, ``_cast_input_dtype``), and bf16 adapters under autocast (TRL's QLoRA cast after get_peft_model)
ADAPTER_CASES = [
    *[(f, "lora", "bf16-true", "fp32") for f in ("llama", "qwen3", "gemma2", "phi3", "mixtral", "gpt2")],
    # (not mixtral: on CPU peft upcasts a bf16 router ParamWrapper's factors to fp32, which autocast casts back and
    # saves, CPU-only copies that the CASES above check apart)
    *[(f, "lora", "bf16-mixed", "compute") for f in ("llama", "qwen3", "gemma2")],
    *[(f, "qlora", "bf16-true", "fp32") for f in ("llama", "mixtral")],
    ("llama", "qlora", "bf16-mixed", "compute"),
]


@pytest.mark.parametrize("family,method,precision,adapter_dtype", ADAPTER_CASES,
                         ids=["-".join(c) for c in ADAPTER_CASES])
def test_adapter_dtype_saved_activations_match_torch(family, method, precision, adapter_dtype):
    setup = make_setup(method, precision, adapter_dtype=adapter_dtype)
    torch.manual_seed(0)
    with _cuda_autocast_query_on_cpu():
        model = build_model(family, setup)
        saved = measure(model, model.config.num_hidden_layers, setup.autocast)
    lora_dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.float32 if setup.adapter_weight_dtype == "fp32" else torch.bfloat16}, \
        f"PEFT built adapters in {lora_dtypes}; --adapter-dtype {adapter_dtype} says {setup.adapter_weight_dtype}"
    for i, layer_est in enumerate(estimated(family, setup)):
        # parameter casts count: the adapters' .to(bf16) copies are made (and saved) on CUDA as on CPU
        items = saved[i].items(with_casts=True)
        measured, expected = sum(n for n, _ in items), sum(n for n, _, _ in layer_est)
        assert measured == expected, (f"{family} {method} {precision} --adapter-dtype {adapter_dtype} layer {i}: "
                                      f"torch saved {measured:,} B, the trace {expected:,} B; {_diff(items, layer_est)}")


@pytest.mark.parametrize("family,method,precision", [("llama", "lora", "bf16-mixed"), ("phi3", "full", "bf16-true"),
                                                     ("mixtral", "qlora", "bf16-mixed"),
                                                     ("gpt2", "lora", "bf16-true")])
def test_checkpointing_saves_layer_inputs_and_recomputes_one_layer(family, method, precision):
    """With checkpointing each layer keeps only its input (``torch.utils.checkpoint``, non-reentrant): the
    estimator's ``activations/checkpoint_inputs``. The recomputed layer runs without the KV cache
    (``GradientCheckpointingLayer`` drops it): its saves equal a cache-free forward without checkpointing."""
    ck = make_setup(method, precision, grad_ckpt=True)
    with _cuda_autocast_query_on_cpu():
        saved = measure(build_model(family, ck), TINY[family].get("n_layer", 2), ck.autocast)
        plain_model = build_model(family, make_setup(method, precision), use_cache=False)
        if ck.quantized:    # as under checkpointing, kbit preparation made the first layer's input require grad
            plain_model.enable_input_require_grads()
        plain = measure(plain_model, 2, ck.autocast)
    spec = spec_from_config(TINY[family], name=f"tiny-{family}")
    st = static_structure(spec, structural_setup(ck))
    hidden = spec.hidden_size
    resid = BATCH * SEQ * hidden * BYTES[st.resid_dtype]
    for i in range(spec.num_layers):
        got = saved.get(i, LayerSaves()).items(with_casts=True)
        assert [n for n, _ in got] == [resid], (f"layer {i} under checkpointing saved {got}, expected its input "
                                                 f"only ({resid:,} B, {st.resid_dtype} residual stream)")
        rec = plain[i].items(with_casts=ck.autocast and method != "full")
        assert sum(n for n, _ in rec) == sum(s.nbytes(BATCH * SEQ, BATCH * SEQ * SEQ) for s in st.layer_traces[i].saved), \
            f"recomputed layer {i}: a cache-free forward saves {sum(n for n, _ in rec):,} B"
    e = estimate(spec, ck)
    if any(c.name == "activations/checkpoint_inputs" for c in e.components):   # live at the peak phase
        assert e.component("activations/checkpoint_inputs") == spec.num_layers * alloc(resid)


def test_estimate_activation_components_sum_the_layer_traces():
    """``estimate()`` reports, per category, the sum over layers of the traced storages (512-B rounded)."""
    spec = spec_from_config(TINY["llama"], name="tiny-llama")
    setup = make_setup("lora", "bf16-mixed")
    st = static_structure(spec, structural_setup(setup))
    T, bss = BATCH * SEQ, BATCH * SEQ * SEQ
    e = estimate(spec, setup)
    if e.peak_phase not in ("forward", "backward"):
        pytest.skip(f"peak in {e.peak_phase}: not every layer's activations are live")
    per_layer = sum(tr.saved_at(T, bss) for tr in st.layer_traces)
    assert sum(c.bytes for c in e.components if c.name.startswith("activations/")
               and c.name != "activations/head") == per_layer


def test_lora_input_copies_autocast_halves_them():
    """FINDINGS.md check: without autocast, fp32 adapters on a bf16 base save fp32 copies of each adapted
    module's input (peft ``_cast_input_dtype``); under autocast lora_A casts that copy back to bf16 and saves
    the bf16 one. Measured on a tiny Llama, the difference is exactly Σ tokens × (in + r) × 2 B minus the
    bf16 adapter-weight copies autocast adds; at Llama-3-8B's shape that is 152 MiB − 2.5 MiB + 0.4 MiB per
    layer, which takes FINDINGS' 0.5635 GiB/layer (no autocast) to the estimator's bf16-mixed number."""
    setup = make_setup("lora", "bf16-mixed")
    cfg = TINY["llama"]
    model = build_model("llama", setup)                  # fp32 adapters (autocast_adapter_dtype=True)
    with_ac = measure(model, 2, autocast=True)
    without = measure(model, 2, autocast=False)
    h, inter, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // 2
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]   # (in, out) q k v o g u d

    def delta(tokens: int, r: int, mods: list[tuple[int, int]]) -> int:
        return sum(tokens * (i + r) * 2 - r * (i + o) * 2 for i, o in mods)

    for i in range(1, 2):   # layer 0's input needs no grad (frozen embeddings): its first norm saves nothing
        a = sum(n for n, _ in with_ac[i].items(with_casts=True))
        b = sum(n for n, _ in without[i].items(with_casts=True))
        assert b - a == delta(BATCH * SEQ, RANK, shapes), f"layer {i}: {b:,} B without autocast, {a:,} B with"
    spec = resolve_model("llama-3-8b").spec
    big = Setup.create(method="lora", precision="bf16-mixed", lora=LoraConfig(r=16, alpha=16, targets=("all-linear",)),
                       batch=1, seq=2048)
    per_layer = static_structure(spec, structural_setup(big)).layer_traces[1].saved_at(2048, 2048 * 2048)
    H, FF, KV = 4096, 14336, 1024
    llama8b = [(H, H), (H, KV), (H, KV), (H, H), (H, FF), (H, FF), (FF, H)]
    findings = 0.5635 * 2**30      # FINDINGS.md: 4 decimals, from a 2- vs 4-layer fake-tensor extrapolation
    assert abs(per_layer - (findings - delta(2048, 16, llama8b))) < 2e-4 * 2**30, (
        "within 0.0002 GiB (0.04 %: the precision FINDINGS quotes): "
        f"estimator {per_layer / 2**30:.4f} GiB/layer vs FINDINGS 0.5635 GiB minus the autocast difference "
        f"{delta(2048, 16, llama8b) / 2**20:.1f} MiB")


@pytest.mark.parametrize("family,precision", [("llama", "bf16-mixed"), ("gemma2", "bf16-mixed"),
                                              ("gemma2", "bf16-true"), ("qwen3", "bf16-true")])
def test_head_and_loss_saves_match_torch(family, precision):
    """After the last layer: the final norm, ``lm_head`` and the loss save the trace's head storages, the fp32
    ``log_softmax`` output (``logits/log_softmax``) and, with Gemma-2's ``final_logit_softcapping``, tanh's
    output in the logits dtype. Not modelled: ``nll_loss``'s int64 targets and 0-dim total weight (8 B per
    token + 4 B)."""
    setup = make_setup("lora", precision)
    saved = measure(build_model(family, setup), 2, setup.autocast)[-1]
    items = [(n, d) for n, d in saved.items(with_casts=setup.autocast) if d != "int64" and n > 4]
    spec = spec_from_config(TINY[family], name=f"tiny-{family}")
    st = static_structure(spec, structural_setup(setup))
    T, V = BATCH * SEQ, spec.vocab_size
    est = [(s.nbytes(T, T * SEQ), s.dtype, s.saved_by[0]) for s in st.head.saved]
    est.append((T * V * 4, "fp32", "log_softmax output"))
    if TINY[family].get("final_logit_softcapping"):
        est.append((T * V * BYTES[st.logits_dtype], st.logits_dtype, "tanh output (final logit softcapping)"))
    assert sum(n for n, _ in items) == sum(n for n, _, _ in est), _diff(items, est)
    e = estimate(spec, setup)
    logits = sum(alloc(n) for n, _, w in est if "output" in w and ("softmax" in w or "tanh" in w))
    if any(c.name == "logits/log_softmax" for c in e.components):
        assert e.component("logits/log_softmax") == logits
