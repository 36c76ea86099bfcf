"""Per-rank memory of multi-GPU training: DDP, FSDP2 as accelerate applies it, FSDP1, DeepSpeed ZeRO-1/2/3, CPU offload.

``estimate(spec, setup)`` calls :func:`rank_states` when ``setup`` trains with more than one GPU or with a
sharding strategy, and uses what it returns in place of the single-GPU weights, gradients and optimizer
states; activations are per rank already (``--batch`` is per GPU). Every byte here is what ONE rank holds.

What each strategy keeps on a rank (N = ``--gpus``, ψ = parameters, ψ_T = trainable parameters):

* **ddp** (``torch.nn.parallel.DistributedDataParallel``, accelerate ``MULTI_GPU``): a full replica; the
  Reducer's flat bucket tensors — a second copy of every trainable gradient (``gradient_as_bucket_view=False``,
  the default); NCCL buffers. With N = 1 accelerate does not wrap the model (``Accelerator.multi_device`` is
  false), so the estimate is the single-GPU one, exactly.
* **fsdp / fsdp-grad-op** (``fully_shard``, accelerate ``fsdp_version: 2``, FULL_SHARD / SHARD_GRAD_OP):
  every parameter, gradient and optimizer state sharded on dim 0 (1/N, padded); the unsharded parameters of
  the units being computed (decoder layers; the input embedding; ``[final norm, lm_head]`` kept unsharded
  after forward; everything for SHARD_GRAD_OP), gathered in the compute dtype under mixed precision; the
  unsharded gradients and the reduce-scatter input of one unit in backward. The units are a stack's
  (:data:`FSDP_UNIT_LAYOUTS`): accelerate's, or LitGPT's and torchtune's ``root`` layout (every decoder layer,
  then the root module holding the embedding, final norm and head together, gathered from forward to the end
  of backward).
* **fsdp1** (``FullyShardedDataParallel``, FULL_SHARD, ``use_orig_params=True`` as the HF Trainer and Lightning
  set it): one FlatParameter per decoder layer, one for the root (embedding, final norm, lm_head), one per
  adapter; each rank holds ceil(padded numel / N) elements of each; the root stays unsharded from the first
  forward to the end of backward, two layers are unsharded at once, and the root's head gradient waits for the
  embedding's (docs/fsdp1.md).
* **zero1/2/3** (DeepSpeed ``stage_1_and_2.py`` / ``stage3.py``): the module cast to the 16-bit compute
  dtype (``engine._configure_distributed_model``); fp32 master weights, fp32 gradients and optimizer states
  partitioned 1/N; 16-bit gradients partitioned from stage 2, parameters from stage 3; the IPG reduce bucket
  (``reduce_bucket_size`` elements); in stage 3 the gathered parameters of the largest module, the prefetch
  bucket and the parameters below the persistence threshold.

No I/O and no printing; the constants below cite where their defaults come from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import BYTES, alloc
from ..memo import IdCache
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..units import MiB, ceil_div
from .optimizer import optimizer_states, optimizer_step_transient
from .result import Component
from .structure import Structure, static_structure, structural_setup
from .weights import TrainableTensor, adapter_formula, gradient_bytes, head_component, weight_formula

# ------------------------------------------------------------------------------------------------ defaults
#: ``DistributedDataParallel(bucket_cap_mb=25)`` (torch/nn/parallel/distributed.py); the first bucket is
#: ``dist._DEFAULT_FIRST_BUCKET_BYTES`` = 1 MiB. Each bucket is one flat tensor allocated in
#: ``Reducer::initialize_buckets`` (torch/csrc/distributed/c10d/reducer.cpp: ``bucket.gradients = at::empty``).
DDP_BUCKET_CAP_BYTES = 25 * MiB
DDP_FIRST_BUCKET_BYTES = 1 * MiB

#: DeepSpeed defaults, deepspeed/runtime/zero/config.py (DeepSpeedZeroConfig, v0.19): ``reduce_bucket_size``
#: 5e8, ``allgather_bucket_size`` 5e8, ``stage3_prefetch_bucket_size`` 5e7, ``stage3_max_live_parameters``
#: 1e9, ``stage3_param_persistence_threshold`` 1e5, ``sub_group_size`` 1e9 (elements), ``overlap_comm``
#: False for stages 1-2 and True for stage 3 (``overlap_comm_valid``), ``contiguous_gradients`` True.
#: transformers' ``"auto"`` values differ (``reduce_bucket_size`` = hidden², prefetch 0.9·hidden²).
ZERO_REDUCE_BUCKET_SIZE = 500_000_000
ZERO_ALLGATHER_BUCKET_SIZE = 500_000_000
ZERO3_PREFETCH_BUCKET_SIZE = 50_000_000
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
ZERO3_PARAM_PERSISTENCE_THRESHOLD = 100_000
ZERO3_SUB_GROUP_SIZE = 1_000_000_000
#: stage_1_and_2.py ``nccl_start_alignment_factor = 2``: the flat 16-bit buffer is padded to 2·N elements
ZERO_ALIGNMENT = 2

#: NCCL's buffers are cudaMalloc'ed outside the torch allocator (nvidia-smi sees them, torch does not).
#: ``NCCL_BUFFSIZE`` = 4 MiB per channel and connection for the Simple protocol (NCCL docs, env.html);
#: with the LL/LL128 FIFOs and ring + tree connections, about 4 such buffers per channel; 32 channels on an
#: 8×H100 NVLink node (``NCCL INFO Channel 00/32``, NVIDIA/nccl#1685, where one communicator held ~0.5 GiB
#: beyond the CUDA context). *Uncalibrated*: 32 × 4 × 4 MiB = 512 MiB for one communicator.
NCCL_BUFFSIZE = 4 * MiB
NCCL_CHANNELS = 32
NCCL_BUFFERS_PER_CHANNEL = 4
NCCL_BYTES = NCCL_BUFFSIZE * NCCL_CHANNELS * NCCL_BUFFERS_PER_CHANNEL

#: ranks per node for ``cpu_bytes_per_node`` (DGX/HGX nodes hold 8 GPUs); DeepSpeed's estimators take it as
#: ``num_gpus_per_node``.
GPUS_PER_NODE = 8

SHARDED = ("fsdp", "fsdp1", "fsdp-grad-op", "zero1", "zero2", "zero3")
#: which ``--offload`` each strategy supports (setup.py validates the same table)
OFFLOADS_BY_STRATEGY: dict[str, tuple[str, ...]] = {
    "ddp": ("none",), "fsdp": ("none", "params"), "fsdp1": ("none", "params"), "fsdp-grad-op": ("none",),
    "zero1": ("none", "optimizer"), "zero2": ("none", "optimizer"), "zero3": ("none", "optimizer", "params"),
}
#: order in which :func:`smallest_gpus` prefers strategies at the same GPU count: least communication first
PREFERENCE = ("ddp", "zero1", "zero2", "fsdp-grad-op", "fsdp", "zero3")

PHASES = ("load", "forward", "backward", "backward (layers)", "optimizer")
TRAIN_PHASES = ("forward", "backward", "backward (layers)")

#: How a stack groups the model into FSDP2 units (``fully_shard`` calls), the values of ``Setup.fsdp_units``:
#:
#: * ``accelerate``: accelerate 1.16 ``fsdp2_prepare_model`` (utils/fsdp_utils.py): every module of the wrap policy
#:   (the decoder layer), then the input embedding (untied), then ``[final_norm, lm_head]`` (+ the tied
#:   embedding) with ``reshard_after_forward=False``, then the root with what is left.
#: * ``root``: every decoder layer, then ``fully_shard(model)``: one root unit holding the embedding, the final
#:   norm and the head (and anything else outside the layers). litgpt 0.5.13 ``finetune/lora.py:522-541``
#:   ``parallelize_fn`` leaves ``reshard_after_forward`` unset, and torch 2.13 then keeps the root unsharded after
#:   forward (``_fully_shard/_fully_shard.py:246-260``: None means True except for the root;
#:   ``_fsdp_state.py:203-207`` ``_lazy_init``: ``post_forward_mesh_info = None`` for the root); its inputs (token
#:   ids) need no gradient, so its post-backward runs in ``_root_post_backward_final_callback``
#:   (``_fsdp_state.py:395-420``) at the end of backward: gathered from forward to the end of backward. torchtune
#:   0.6.1 ``training/_distributed.py:519-568 shard_model`` passes ``reshard_after_forward=True`` to the root too
#:   (recipes/lora_finetune_distributed.py:472-484): the root is resharded when the model's forward returns and
#:   re-gathered by its pre-backward hook when backward starts — gathered in every phase the timeline prices but
#:   the loss's own forward, where the estimate keeps it (an upper bound there). Both measured on 2 CPU ranks
#:   (gloo) with torch 2.13's ``fully_shard``: tests/estimate/test_fsdp_units.py.
FSDP_UNIT_LAYOUTS = ("accelerate", "root")


def fsdp_unit_layout(setup: Setup, layout: str | None = None) -> str:
    """The FSDP2 unit layout (:data:`FSDP_UNIT_LAYOUTS`): ``layout`` when given, else the setup's ``fsdp_units``
    option, accelerate's when the setup has none.

    Raises:
        ValueError: a layout that is not one of :data:`FSDP_UNIT_LAYOUTS`.
    """
    layout = layout or getattr(setup, "fsdp_units", None) or "accelerate"
    if layout not in FSDP_UNIT_LAYOUTS:
        raise ValueError(f"unknown FSDP unit layout {layout!r}: one of {', '.join(FSDP_UNIT_LAYOUTS)}")
    return layout


def applies(setup: Setup) -> bool:
    """Whether the per-rank model replaces the single-GPU model states (training on N > 1 GPUs, or a
    sharding engine on one). ``--gpus 1 --strategy ddp`` is plain single-GPU training."""
    return setup.distributed


# ------------------------------------------------------------------------------------------------- result
@dataclass
class RankStates:
    """One rank's model states, buffers and CPU memory, as ``estimate`` consumes them.

    ``weights`` replace the single-GPU ``weights/*`` and ``adapters/*`` components. ``grads`` is the gradient
    memory the timeline accumulates through backward (``grad_head`` of it produced first), ``grads_step`` what
    is left of it at the optimizer step. ``buffers[phase]`` lists allocations live in that phase on top of the
    timeline's own terms; ``device`` lists memory outside the torch allocator.
    """

    compute: Any                                   # Structure whose layer traces give the activations
    weights: list[tuple[str, int, str]]
    grads: int
    grad_head: int
    grads_step: int
    grad_formula: str
    opt_gpu: int
    opt_paged: int
    opt_formula: str
    opt_tmp: int
    buffers: dict[str, list[tuple[str, int, str]]] = field(default_factory=lambda: {p: [] for p in PHASES})
    device: list[Component] = field(default_factory=list)
    cpu: dict[str, int] = field(default_factory=dict)          # per rank
    model_states: dict[str, int] = field(default_factory=dict)  # GPU model-state terms, per rank
    warnings: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def buffer_bytes(self, phase: str) -> int:
        return sum(b for _, b, _ in self.buffers.get(phase, ()))

    def add_buffer(self, phases: tuple[str, ...], name: str, nbytes: int, formula: str) -> None:
        if nbytes:
            for p in phases:
                self.buffers[p].append((name, nbytes, formula))

    def extra(self, setup: Setup) -> dict[str, Any]:
        """What ``Estimate.extra`` (hence the JSON) carries: CPU memory per node and the per-rank terms."""
        per_node = min(setup.gpus, GPUS_PER_NODE)
        cpu_rank = sum(self.cpu.values())
        return {
            "cpu_bytes_per_node": cpu_rank * per_node,
            "per_rank": {
                "gpus": setup.gpus, "strategy": setup.strategy, "offload": setup.offload,
                "ranks_per_node": per_node,
                "model_states_bytes": sum(self.model_states.values()),
                "model_states": dict(self.model_states),
                "cpu_bytes": cpu_rank,
                "cpu": dict(self.cpu),
            },
        }


# ------------------------------------------------------------------------------------------------ helpers
def _shard_bytes(shape: tuple[int, ...], nbytes: int, n: int) -> int:
    """Bytes of one rank's dim-0 shard, padded as FSDP2 pads (``_fsdp_param.py``: ``chunk`` on dim 0, every
    rank's shard padded to ``ceil(rows / N)`` rows)."""
    rows = shape[0] if shape else 1
    row_bytes = ceil_div(nbytes, max(rows, 1))
    return ceil_div(rows, n) * row_bytes


def _packed_shard(nbytes: int, n: int) -> int:
    """4-bit packed data stored as bf16 elements (``bnb_4bit_quant_storage=bfloat16``, the FSDP-QLoRA recipe):
    ceil(bytes/2) elements, sharded 1/N — the same bytes as uint8 storage."""
    return ceil_div(ceil_div(nbytes, 2), n) * 2


def _adapter_module(name: str) -> str:
    """The base module an adapter tensor belongs to (``x.q_proj.lora_A`` -> ``x.q_proj``)."""
    if ".modules_to_save." in name:
        return name.split(".modules_to_save.")[0]
    return name.rsplit(".", 1)[0]


def _owner(name: str, known: dict[str, str]) -> str | None:
    """``known[prefix]`` for the longest dotted prefix of ``name`` that is a known module or tensor name."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        hit = known.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    return None


def _compute_static(spec: ModelSpec, setup: Setup, st: Structure) -> Structure:
    """The layout that computes. FSDP with mixed precision gathers every parameter in the compute dtype
    (accelerate's ``MixedPrecisionPolicy(param_dtype=bf16)``), DeepSpeed casts the module to it
    (``_cast_module_mixed_precision``) and does not autocast: both run like ``--precision bf16-true``."""
    if setup.strategy == "ddp" or not setup.mixed or setup.compute_dtype == "fp32":
        return st
    # the engine casts the adapters too: PEFT's fp32 default does not survive it
    adapters = "compute" if setup.adapter_dtype == "auto" else setup.adapter_dtype
    return static_structure(spec, structural_setup(setup.with_(precision=f"{setup.compute_dtype}-true",
                                                               adapter_dtype=adapters)))


def _nccl(setup: Setup) -> list[Component]:
    if setup.gpus < 2:
        return []
    return [Component("buffers/nccl", NCCL_BYTES,
                      f"NCCL communicator buffers outside the torch allocator: NCCL_BUFFSIZE {NCCL_BUFFSIZE // MiB} MiB "
                      f"× {NCCL_BUFFERS_PER_CHANNEL} (Simple/LL/LL128 FIFOs, ring and tree peers) × {NCCL_CHANNELS} "
                      "channels (8×H100 NVLink, NVIDIA/nccl#1685) — uncalibrated", "device")]


# ---------------------------------------------------------------------------------------------------- DDP
def ddp_bucket_bytes(trainables: tuple[TrainableTensor, ...]) -> tuple[int, int]:
    """(bytes, bucket count) of DDP's gradient buckets: trainable parameters in reverse order, grouped by
    dtype into buckets of at most ``bucket_cap_mb`` (the first one 1 MiB), one flat allocation each.
    ``torch/nn/parallel/distributed.py::_compute_bucket_assignment_by_size`` and ``Reducer::initialize_buckets``."""
    total, count = 0, 0
    by_dtype: dict[str, list[int]] = defaultdict(list)
    for t in reversed(trainables):
        by_dtype[t.dtype].append(t.numel * BYTES[t.dtype])
    for _, sizes in by_dtype.items():
        cap, cur = DDP_FIRST_BUCKET_BYTES, 0
        for nb in sizes:
            cur += nb
            if cur >= cap:
                total += alloc(cur)
                count += 1
                cur, cap = 0, DDP_BUCKET_CAP_BYTES
        if cur:
            total += alloc(cur)
            count += 1
    return total, count


def _ddp(spec: ModelSpec, setup: Setup, st: Structure) -> RankStates:
    grads = gradient_bytes(st.trainables)
    head = _head_grad(st, setup)
    opt_gpu, opt_paged, opt_formula = optimizer_states(st.trainables, setup)
    weights = []
    for name, nb, formula in _single_weights(st, setup):
        weights.append((name, nb, formula + "; a full replica on every rank (DDP)"))
    r = RankStates(compute=st, weights=weights, grads=grads, grad_head=head, grads_step=grads,
                   grad_formula="one gradient per trainable element on every rank (DDP replica)",
                   opt_gpu=opt_gpu, opt_paged=opt_paged, opt_formula=opt_formula + "; replicated (DDP)",
                   opt_tmp=optimizer_step_transient(st.trainables, setup))
    if setup.gpus > 1:
        nb, count = ddp_bucket_bytes(st.trainables)
        r.add_buffer(PHASES, "buffers/ddp_buckets", nb,
                     f"DDP Reducer: {count} flat bucket tensors (bucket_cap_mb=25, first bucket 1 MiB) holding a copy "
                     "of every trainable gradient, allocated when the model is wrapped "
                     "(gradient_as_bucket_view=False, the default: param.grad is a separate tensor; "
                     "torch/csrc/distributed/c10d/reducer.cpp initialize_buckets)")
        r.device = _nccl(setup)
        r.assumptions.append(f"DDP on {setup.gpus} GPUs: full replica per rank, gradients all-reduced through "
                             "25 MiB buckets (torch defaults, gradient_as_bucket_view=False)")
    r.model_states = {"weights": sum(b for _, b, _ in weights), "gradients": grads, "optimizer_states": opt_gpu}
    return r


def _head_grad(st: Structure, setup: Setup) -> int:
    """The output head's gradient, first in backward (as ``estimate`` counts it), full fine-tuning only."""
    return gradient_bytes(st.trainables, component=head_component(st.trainables)) if setup.method == "full" else 0


def _single_weights(st: Structure, setup: Setup) -> list[tuple[str, int, str]]:
    wsum: dict[str, int] = defaultdict(int)
    for p in st.placements:
        for comp, nb in p.parts:
            wsum[comp] += alloc(nb)
    asum: dict[str, int] = defaultdict(int)
    for t in st.adapters:
        asum[t.component] += alloc(t.numel * BYTES[t.dtype])
    def placed(c: str) -> list:
        return [p for p in st.placements if any(pc == c for pc, _ in p.parts)]

    return ([(c, b, weight_formula(c, placed(c), setup)) for c, b in sorted(wsum.items())]
            + [(c, b, adapter_formula(c, st.adapters, st.plan)) for c, b in sorted(asum.items())])


# --------------------------------------------------------------------------------------------------- FSDP
@dataclass(frozen=True)
class _Units:
    """Bytes gathered per FSDP unit (unsharded, in the gather dtype) and their trainable gradients."""

    layers: tuple[int, ...]          # per decoder layer
    layer_grads: tuple[int, ...]
    embed: int
    embed_grads: int
    tail: int                        # [final norm, lm_head] (+ the embedding when tied)
    tail_grads: int
    root: int                        # what is left at the model level (position embeddings, ...)
    root_grads: int
    tied: bool


#: the walks over every tensor that do not depend on the GPU count, kept per (spec, structure): a search over
#: --gpus (``smallest_gpus``' bisection, ``fit``, a sweep of --gpus) walks the model once, not once per count
_UNITS = IdCache(256)
_MODULE_BYTES = IdCache(256)


def _fsdp_units(spec: ModelSpec, setup: Setup, st: Structure) -> _Units:
    """:func:`_build_fsdp_units`, computed once per spec, structure and gather dtype (it does not read the GPU
    count)."""
    gdt = setup.compute_dtype if setup.mixed else None
    return _UNITS.get((spec, st), (gdt,), lambda: _build_fsdp_units(spec, setup, st))


def _build_fsdp_units(spec: ModelSpec, setup: Setup, st: Structure) -> _Units:
    """accelerate ``fsdp2_prepare_model`` (accelerate/utils/fsdp_utils.py): ``fully_shard`` on every module of
    the wrap policy (the decoder layer, ``_no_split_modules``), then on the input embedding (untied), then on
    ``[final_norm, lm_head]`` (+ the embedding when tied) with ``reshard_after_forward=False``, then the root."""
    gdt = setup.compute_dtype if setup.mixed else None
    tied = any(t.tied_to is not None and t.role == "lm_head" for t in spec.tensors)
    final_norm = next((t.module for t in spec.tensors
                       if t.layer is None and t.role == "norm" and t.param_name == "weight"), None)
    unit_of_module: dict[str, str] = {}
    for p in st.placements:
        t = p.tensor
        if t.layer is not None:
            unit_of_module[t.module] = f"layer{t.layer}"
        elif t.role == "lm_head" or t.module == final_norm or (t.role == "embedding" and tied):
            unit_of_module[t.module] = "tail"
        elif t.role == "embedding":
            unit_of_module[t.module] = "embed"
        else:
            unit_of_module[t.module] = "root"
    gathered: dict[str, int] = defaultdict(int)
    grads: dict[str, int] = defaultdict(int)
    for p in st.placements:
        u = unit_of_module[p.tensor.module]
        if p.quant in ("nf4", "fp4"):
            gathered[u] += sum(nb for c, nb in p.parts if c == "weights/quantized")
        elif p.quant == "none":
            nb = p.numel * BYTES[gdt or p.dtype]
            gathered[u] += nb
            if p.trainable:
                grads[u] += nb
    known = {**unit_of_module, **{p.tensor.name: unit_of_module[p.tensor.module] for p in st.placements}}
    for t in st.adapters:
        u = _owner(_adapter_module(t.name), known) or "root"
        nb = t.numel * BYTES[gdt or t.dtype]
        gathered[u] += nb
        if not t.frozen:
            grads[u] += nb
    n_layers = spec.num_layers
    return _Units(tuple(gathered.get(f"layer{i}", 0) for i in range(n_layers)),
                  tuple(grads.get(f"layer{i}", 0) for i in range(n_layers)),
                  gathered["embed"], grads["embed"], gathered["tail"], grads["tail"], gathered["root"],
                  grads["root"], tied)


def _sharded_trainables(st: Structure, n: int) -> tuple[TrainableTensor, ...]:
    out = []
    for t in st.trainables:
        rows = t.shape[0] if t.shape else 1
        rest = t.numel // max(rows, 1)
        r = ceil_div(rows, n)
        out.append(TrainableTensor(t.name, r * rest, t.dtype, t.component, (r,) + tuple(t.shape[1:])))
    return tuple(out)


def _fsdp(spec: ModelSpec, setup: Setup, st: Structure, layout: str | None = None) -> RankStates:
    n = setup.gpus
    layout = fsdp_unit_layout(setup, layout)
    full_shard = setup.strategy == "fsdp"
    offload = setup.offload == "params"
    label = "FSDP FULL_SHARD" if full_shard else "FSDP SHARD_GRAD_OP"
    # ---- sharded parameters (per rank) and what stays whole
    wsum: dict[str, int] = defaultdict(int)
    cpu_w = 0
    for p in st.placements:
        for comp, nb in p.parts:
            if comp == "weights/quant_constants" or p.quant == "int8":
                wsum[comp] += alloc(nb)           # QuantState / Int8Params: not sharded, on every rank
                continue
            b = _packed_shard(nb, n) if comp == "weights/quantized" else _shard_bytes(p.tensor.shape, nb, n)
            if offload:
                cpu_w += b
            else:
                wsum[comp] += alloc(b)
    for t in st.adapters:
        b = _shard_bytes(t.shape, t.numel * BYTES[t.dtype], n)
        if offload:
            cpu_w += b
        else:
            wsum[t.component] += alloc(b)
    weights = [(c, b, f"per rank: 1/{n} of each parameter on dim 0, padded to ceil(rows/{n}) rows ({label}, "
                      "torch/distributed/fsdp/_fully_shard/_fsdp_param.py)"
                + ("; bitsandbytes quant_state and int8 weights are not parameters FSDP shards: whole on every rank"
                   if c in ("weights/quant_constants",) or setup.quant == "int8" else ""))
               for c, b in sorted(wsum.items())]
    # ---- sharded gradients and optimizer states
    shards = _sharded_trainables(st, n)
    grads = gradient_bytes(shards)
    grad_head = gradient_bytes(shards, component=head_component(st.trainables)) if setup.method == "full" else 0
    opt_gpu, opt_paged, opt_formula = optimizer_states(shards, setup)
    opt_formula = f"per rank, on the 1/{n} shards: " + opt_formula
    cpu: dict[str, int] = {}
    if offload:
        cpu = {"params": cpu_w, "gradients": grads, "optimizer_states": opt_gpu + opt_paged}
        grads = grad_head = 0
        opt_gpu = opt_paged = 0
    r = RankStates(compute=_compute_static(spec, setup, st), weights=weights, grads=grads, grad_head=grad_head,
                   grads_step=grads,
                   grad_formula=f"sharded gradients, 1/{n} of each trainable parameter in its dtype ({label}: "
                                "reduce-scatter output cast to the sharded parameter's dtype, _fsdp_collectives.py "
                                "foreach_reduce)" + ("; on the CPU (CPUOffloadPolicy)" if offload else ""),
                   opt_gpu=opt_gpu, opt_paged=opt_paged,
                   opt_formula=opt_formula + (" — on the CPU (CPUOffloadPolicy)" if offload else ""),
                   opt_tmp=0 if offload else optimizer_step_transient(shards, setup), cpu=cpu)
    # ---- gathered parameters and gradient buffers
    u = _fsdp_units(spec, setup, st)
    big = max(u.layers, default=0)
    gdt = setup.compute_dtype if setup.mixed else "the stored dtype"
    root_all = u.root + u.tail + u.embed
    if full_shard and layout == "root":
        fwd = bwd_layers = root_all + 2 * big
        how = (f"unsharded in {gdt}: 2 decoder layers (the one computing and the one prefetched, {big:,} B each) + "
               f"the root unit (embedding, final norm, lm_head and the rest: {root_all:,} B), gathered from forward "
               "to the end of backward (fully_shard(model) after every layer: the stack's units)")
        ag = {"forward": fwd, "backward": fwd, "backward (layers)": bwd_layers}
    elif full_shard:
        fwd = u.root + u.tail + 2 * big
        bwd_layers = u.root + (u.tail if u.tied else 0) + max(2 * big, big + u.embed)
        how = (f"unsharded in {gdt}: 2 decoder layers (the one computing and the one prefetched, "
               f"{big:,} B each) + [final norm, lm_head{', embedding' if u.tied else ''}] ({u.tail:,} B, "
               "reshard_after_forward=False) + root leftovers"
               + ("" if u.tied else f"; the input embedding ({u.embed:,} B) is re-gathered at the end of backward"))
        ag = {"forward": fwd, "backward": fwd, "backward (layers)": bwd_layers}
    else:
        every = u.root + u.tail + u.embed + sum(u.layers)
        how = (f"SHARD_GRAD_OP keeps every unit unsharded from its forward to its backward: the whole model in "
               f"{gdt} ({every:,} B) at the end of forward")
        ag = {"forward": every, "backward": every, "backward (layers)": every}
    for phase, nb in ag.items():
        r.add_buffer((phase,), "buffers/allgather", nb,
                     "all-gather outputs (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py "
                     "foreach_all_gather; units from accelerate/utils/fsdp_utils.py fsdp2_prepare_model): " + how)
    # backward: a unit's unsharded gradients + the reduce-scatter input they are copied into (FSDP2
    # post_backward: reduce_scatter_max_input_buffers = 1, so the previous input is freed first)
    rs_formula = ("unsharded gradients of one unit + the reduce-scatter input they are copied into, in the "
                  "reduce dtype (_fsdp_param_group.py post_backward, _fsdp_collectives.py foreach_reduce)")
    if layout == "root":
        # one root group: its post-backward (at the end of backward) reduces the head's gradient, made first,
        # with the embedding's, made last; the head's waits unsharded through the layers' backward
        layer_rs = 2 * max(u.layer_grads, default=0)
        root_g = u.root_grads + u.tail_grads + u.embed_grads
        held = "; the root's head/norm gradients wait unsharded for its post-backward at the end of backward"
        r.add_buffer(("backward",), "buffers/reduce_buckets", u.tail_grads,
                     rs_formula + held if u.tail_grads else rs_formula)
        r.add_buffer(("backward (layers)",), "buffers/reduce_buckets", max(u.tail_grads + layer_rs, 2 * root_g),
                     rs_formula + (held + ", then the root's all at once" if root_g else ""))
    else:
        layer_rs = 2 * max(max(u.layer_grads, default=0), u.embed_grads)
        tail_rs = 2 * u.tail_grads
        r.add_buffer(("backward",), "buffers/reduce_buckets", max(tail_rs, layer_rs), rs_formula)
        r.add_buffer(("backward (layers)",), "buffers/reduce_buckets",
                     layer_rs + (u.tail_grads if u.tied else 0),
                     rs_formula + ("; the tied embedding/head gradient stays unsharded until the end of backward"
                                   if u.tied and u.tail_grads else ""))
    r.device = _nccl(setup)
    r.model_states = {"weights": sum(b for _, b, _ in weights), "gradients": grads,
                      "optimizer_states": opt_gpu}
    units = ("fully_shard on every decoder layer, then the root unit holding the embedding, final norm and "
             "lm_head, not resharded until the end of backward (the stack's units)" if layout == "root" else
             "as accelerate applies FSDP2 (fsdp_version 2): decoder layers, input embedding and [final norm, "
             "lm_head] are units")
    r.assumptions.append(
        f"{label} on {setup.gpus} GPU{'s' if n > 1 else ''} {units}"
        + (f"; parameters gathered in {setup.compute_dtype} (MixedPrecisionPolicy), no autocast weight copies"
           if setup.mixed else "")
        + ("; CPUOffloadPolicy: sharded parameters, gradients and optimizer states in pinned CPU memory, the "
           "optimizer steps on the CPU" if offload else ""))
    if setup.quant in ("nf4", "fp4"):
        r.assumptions.append("FSDP-QLoRA: bnb_4bit_quant_storage=bfloat16, so the packed 4-bit data is a floating "
                             "parameter FSDP shards (same bytes as uint8 storage); quant_state stays whole per rank")
    elif setup.quant == "int8":
        r.warnings.append("FSDP does not shard int8 (LLM.int8) weights: they stay whole on every rank")
    return r


# -------------------------------------------------------------------------------------------------- FSDP1
#: FSDP1 (``torch.distributed.fsdp.FullyShardedDataParallel``, torch 2.13) as the HF Trainer's FSDP1 path and
#: Lightning's ``FSDPStrategy`` build it: ``use_orig_params=True`` (transformers 5.24 training_args.py:2876,
#: default "true"; lightning 2.6.6 fabric/strategies/fsdp.py:169, ``setdefault``). accelerate's own default is
#: False (accelerate 1.16 utils/dataclasses.py:1813) and torchtune 0.2.1 passes none (False); it moves only the
#: alignment padding below.
FSDP1_USE_ORIG_PARAMS = True
#: with ``use_orig_params`` every original parameter starts at a 16-byte boundary of the unsharded flat
#: parameter (torch/distributed/fsdp/_flat_param.py ``_get_aligned_numel``: ``ALIGNMENT = 16`` bytes, "from
#: TorchInductor", in the forward/backward dtype) and the FlatParameter is padded to a multiple of the world size
#: (``_init_flat_param_and_metadata``); without it, only the last rank's shard is padded (``_get_shard``).
FSDP1_ALIGN_BYTES = 16
#: decoder-layer units unsharded at once: the one computing and the next one. ``limit_all_gathers=True`` (the
#: default; Lightning and LitGPT pass it) lets the CPU thread run at most two FSDP instances' all-gathers ahead
#: ("GPU memory usage from only two consecutive FSDP instances", fully_sharded_data_parallel.py docstring), and
#: ``backward_prefetch=BACKWARD_PRE`` (the constructor default) gathers the previous layer at each pre-backward.
#: An upper bound for the HF Trainer's FSDP1 defaults (``forward_prefetch`` false, ``backward_prefetch``
#: NO_PREFETCH: transformers 5.24 training_args.py:2870-2875), which can free one before gathering the next.
FSDP1_LAYERS_GATHERED = 2


def flat_param_layout(numels: tuple[int, ...] | list[int], world_size: int,
                      aligned_numel: int = 0) -> tuple[tuple[int, ...], int, int]:
    """(offset of each parameter, numel of the FlatParameter before sharding, numel of one rank's shard).

    ``torch/distributed/fsdp/_flat_param.py`` (torch 2.13): ``_init_flat_param_and_metadata`` concatenates the
    parameters in module order, with ``aligned_numel > 0`` (``use_orig_params``; 16 B / element size) a padding
    tensor before each one that does not start on a multiple of it, then pads the total to a multiple of the
    world size. ``shard`` keeps ``flatten().chunk(world_size)[rank]`` padded to the first chunk's size
    (``_get_unpadded_shard``/``_get_shard``): ceil(total / N) elements on every rank; the all-gather destination
    ``_full_param_padded`` is N × that (``init_flat_param_attributes``).
    """
    total = 0
    offsets = []
    for k in numels:
        if aligned_numel > 0 and total % aligned_numel:
            total += aligned_numel - total % aligned_numel
        offsets.append(total)
        total += k
    if aligned_numel > 0 and total % world_size:
        total += world_size - total % world_size
    return tuple(offsets), total, ceil_div(total, world_size)


def flat_param_numel(numels: tuple[int, ...] | list[int], world_size: int,
                     aligned_numel: int = 0) -> tuple[int, int]:
    """(numel of the FlatParameter before sharding, numel of one rank's shard): :func:`flat_param_layout`."""
    _, total, shard = flat_param_layout(numels, world_size, aligned_numel)
    return total, shard


@dataclass(frozen=True)
class Fsdp1Unit:
    """One FSDP1 instance's FlatParameter as one rank holds it.

    ``members``: (name, component, numel, dtype, trainable) in flattening order; ``dtype`` the FlatParameter's
    (FSDP1 flattens one dtype; a unit that mixes them is warned about and sized in the first one's elements).
    """

    name: str                        # "layer3", "root", "adapter:<tensor>"
    layer: int | None                # the decoder layer it computes in (None for the root)
    members: tuple[tuple[str, str, int, str, bool], ...]
    dtype: str
    gather_dtype: str                # MixedPrecision.param_dtype (the unsharded copy and its gradient)
    flat_numel: int                  # FlatParameter before sharding (its .grad in backward has this size)
    shard_numel: int                 # per rank, padded
    world_size: int
    offsets: tuple[int, ...] = ()    # each member's offset in the unsharded FlatParameter
    use_orig_params: bool = FSDP1_USE_ORIG_PARAMS

    @property
    def requires_grad(self) -> bool:
        """FlatParameter.requires_grad: any member's (``_validate_tensors_to_flatten``: a logical OR)."""
        return any(m[4] for m in self.members)

    @property
    def shard_bytes(self) -> int:
        return alloc(self.shard_numel * BYTES[self.dtype])

    @property
    def gathered_bytes(self) -> int:
        """``_full_param_padded``: N × shard elements in the gather dtype, one allocation."""
        return alloc(self.flat_padded * BYTES[self.gather_dtype])

    @property
    def flat_padded(self) -> int:
        """Elements of the padded unsharded FlatParameter: world size × shard."""
        return self.shard_numel * self.world_size

    def slices(self, rank: int) -> tuple[int, ...]:
        """Elements of each member inside ``rank``'s shard (``_get_shard_metadata``: the original parameter's view
        under ``use_orig_params`` is that slice, or empty)."""
        lo, hi = rank * self.shard_numel, (rank + 1) * self.shard_numel
        return tuple(max(0, min(hi, off + m[2]) - max(lo, off))
                     for off, m in zip(self.offsets, self.members, strict=True))

    def optimizer_tensors(self) -> tuple[TrainableTensor, ...]:
        """What the optimizer holds for this unit on the rank with the most trainable elements in its shard:
        with ``use_orig_params`` the original parameters' non-empty slices (a parameter outside the shard has
        no gradient, so no state); without it the FlatParameter's padded shard itself."""
        if not self.requires_grad:
            return ()
        if not self.use_orig_params:
            return (TrainableTensor(self.name, self.shard_numel, self.dtype, self.members[0][1],
                                    (self.shard_numel,)),)

        def trained(r: int) -> int:
            return sum(k for k, m in zip(self.slices(r), self.members, strict=True) if m[4])

        best = max(range(self.world_size), key=trained)
        return tuple(TrainableTensor(m[0], k, self.dtype, m[1], (k,))
                     for k, m in zip(self.slices(best), self.members, strict=True) if m[4] and k)


def fsdp1_units(spec: ModelSpec, setup: Setup, st: Structure,
                use_orig_params: bool = FSDP1_USE_ORIG_PARAMS) -> tuple[tuple[Fsdp1Unit, ...], list[str]]:
    """The FSDP1 units of ``setup`` on ``setup.gpus`` ranks, and warnings about what FSDP1 would refuse.

    Wrapping as the stacks configure it: ``transformer_auto_wrap_policy`` on the decoder layer class
    (``_no_split_modules``: accelerate 1.16 utils/dataclasses.py ``set_auto_wrap_policy``; Lightning/LitGPT
    ``FSDPStrategy(auto_wrap_policy={Block})``, litgpt 0.5.13 finetune/full.py:108; torchtune 0.2.1
    ``ModuleWrapPolicy({TransformerDecoderLayer})``), one FlatParameter per decoder layer; the root FSDP instance
    flattens everything left (embedding, final norm, lm_head; a tied weight once, ``shared_param_memo``). Each
    adapter tensor is its own unit: the HF Trainer wraps every leaf module whose weight requires grad (peft
    0.21.2 utils/other.py:1271-1308 ``fsdp_auto_wrap_policy``, set by transformers 5.24 distributed/fsdp.py:266-279),
    torchtune 0.2.1 ``lora_fsdp_wrap_policy`` likewise (utils/_distributed.py:248-280).
    """
    n = setup.gpus
    warnings: list[str] = []
    packed = setup.compute_dtype if BYTES[setup.compute_dtype] == 2 else "bf16"   # bnb_4bit_quant_storage
    members: dict[str, list[tuple[str, str, int, str, bool]]] = defaultdict(list)
    layer_of: dict[str, int | None] = {}
    for p in st.placements:
        t = p.tensor
        u = f"layer{t.layer}" if t.layer is not None else "root"
        layer_of[u] = t.layer
        if p.quant == "int8":
            continue                        # Int8Params: "Cannot flatten integer dtype tensors" (warned below)
        if p.quant in ("nf4", "fp4"):
            nb = sum(b for c, b in p.parts if c == "weights/quantized")
            members[u].append((t.name, "weights/quantized", ceil_div(nb, 2), packed, False))
        else:
            comp = p.parts[0][0] if p.parts else "weights/other"
            members[u].append((t.name, comp, p.numel, p.dtype, p.trainable))
    known = {p.tensor.module: f"layer{p.tensor.layer}" for p in st.placements if p.tensor.layer is not None}
    for t in st.adapters:
        u = f"adapter:{t.name}"
        owner = _owner(_adapter_module(t.name), known)
        layer_of[u] = int(owner[5:]) if owner else None
        members[u].append((t.name, t.component, t.numel, t.dtype, not t.frozen))
    units = []
    mixed_dtype: dict[str, list[str]] = defaultdict(list)
    mixed_grad: list[str] = []
    for name, ms in members.items():
        dtypes = sorted({m[3] for m in ms})
        dtype = ms[0][3]
        if len(dtypes) > 1:
            mixed_dtype[" and ".join(dtypes)].append(name)
            ms = [(a, c, ceil_div(k * BYTES[d], BYTES[dtype]), dtype, tr) for a, c, k, d, tr in ms]
        if len({m[4] for m in ms}) > 1:
            mixed_grad.append(name)
        gather = setup.compute_dtype if setup.mixed else dtype
        align = FSDP1_ALIGN_BYTES // BYTES[gather] if use_orig_params else 0
        offsets, flat, shard = flat_param_layout([m[2] for m in ms], n, align)
        units.append(Fsdp1Unit(name, layer_of[name], tuple(ms), dtype, gather, flat, shard, n, offsets,
                               use_orig_params))
    for dts, names in mixed_dtype.items():
        warnings.append(f"FSDP1 flattens one dtype per FlatParameter and raises on {_unit_list(names)} ({dts}: "
                        "_flat_param.py _validate_tensors_to_flatten, 'Must flatten tensors with uniform dtype')"
                        + ("; with QLoRA use --no-kbit-prep, whose fp32 copies cause it" if setup.kbit_prep else "")
                        + "; estimated with each unit in its first parameter's dtype")
    if mixed_grad:
        warnings.append(f"FSDP1 units {_unit_list(mixed_grad)} mix frozen and trainable parameters: with "
                        "use_orig_params the FlatParameter's gradient covers the frozen ones too "
                        "(FullyShardedDataParallel docstring), as estimated")
    if setup.quant == "int8":
        warnings.append("FSDP1 cannot flatten int8 (LLM.int8) weights ('Cannot flatten integer dtype tensors', "
                        "_flat_param.py): estimated whole on every rank, as if ignored_modules")
    return tuple(units), warnings


def _unit_list(names: list[str]) -> str:
    """``layer0-layer31`` for a run of decoder layers, else the names."""
    layers = [int(n[5:]) for n in names if n.startswith("layer")]
    rest = [n for n in names if not n.startswith("layer")]
    if layers and layers == list(range(layers[0], layers[0] + len(layers))) and len(layers) > 2:
        head = [f"layer{layers[0]}-layer{layers[-1]}"]
    else:
        head = [f"layer{i}" for i in layers]
    return ", ".join(head + rest)


def _unit_grad_peak(u: Fsdp1Unit, setup: Setup) -> int:
    """Bytes of one unit's gradient work in backward beyond its sharded gradient (counted with the gradients).

    The original parameters are views of the FlatParameter (``_get_unflat_views``: ``split`` then ``view``), so
    autograd's ``SplitWithSizesBackward`` concatenates the parameters' gradients into one unsharded flat gradient
    while they are all alive: 2 × the unit in the gather dtype. Then ``_post_backward_hook`` (_runtime_utils.py)
    pads it to N × shard when needed (``_get_reduce_scatter_tensors``: an ``F.pad`` copy), reduce-scatters into a
    shard-sized tensor in ``reduce_dtype`` and casts that to the FlatParameter's dtype
    (``_cast_grad_to_param_dtype``), the shard kept as ``_saved_grad_shard``."""
    g = BYTES[u.gather_dtype]
    unsharded = alloc(u.flat_numel * g)
    pad = alloc(u.flat_padded * g) if u.flat_padded != u.flat_numel else 0
    reduced = alloc(u.shard_numel * g) if u.gather_dtype != u.dtype else 0
    return max(2 * unsharded, unsharded + pad + reduced)


def _fsdp1(spec: ModelSpec, setup: Setup, st: Structure) -> RankStates:
    n = setup.gpus
    offload = setup.offload == "params"
    units, warns = fsdp1_units(spec, setup, st)
    # ---- sharded FlatParameters: one allocation per unit, spread over its members' components by numel
    wsum: dict[str, int] = defaultdict(int)
    cpu_w = cpu_g = 0
    for u in units:
        if offload:
            cpu_w += u.shard_bytes
            cpu_g += u.shard_bytes          # _cpu_grad: zeros_like(_local_shard), pinned, for every unit
            continue
        by_comp: dict[str, int] = defaultdict(int)
        for m in u.members:
            by_comp[m[1]] += m[2]
        total = sum(by_comp.values()) or 1
        given = 0
        for c, k in by_comp.items():
            share = u.shard_bytes * k // total
            wsum[c] += share
            given += share
        wsum[max(by_comp, key=lambda c: by_comp[c])] += u.shard_bytes - given
    for p in st.placements:                 # not FSDP parameters: whole on every rank
        for comp, nb in p.parts:
            if comp == "weights/quant_constants" or p.quant == "int8":
                wsum[comp] += alloc(nb)
    weights = [(c, b, f"per rank: one padded 1/{n} shard of each FlatParameter (FSDP1 FULL_SHARD: a FlatParameter "
                      "per decoder layer, one for the root, one per adapter; torch/distributed/fsdp/_flat_param.py "
                      "FlatParamHandle.shard), spread over its parameters by element count"
                + ("; bitsandbytes quant_state and int8 weights are not flattened: whole on every rank"
                   if c == "weights/quant_constants" or setup.quant == "int8" else ""))
               for c, b in sorted(wsum.items())]
    # ---- sharded gradients (the whole unit when any member trains) and optimizer states
    grad_units = [u for u in units if u.requires_grad]
    grads = sum(u.shard_bytes for u in grad_units)
    opt_tensors_t = tuple(t for u in grad_units for t in u.optimizer_tensors())
    opt_gpu, opt_paged, opt_formula = optimizer_states(opt_tensors_t, setup) if opt_tensors_t else (
        0, 0, "no trainable parameter")
    opt_formula = (f"per rank, on the original parameters' slices of the 1/{n} shards (use_orig_params, "
                   "_flat_param.py _use_sharded_views; per unit the rank holding the most): " + opt_formula)
    cpu: dict[str, int] = {}
    grads_step = grads
    if offload:
        # CPUOffload(offload_params=True): the shards and _cpu_grad live in pinned CPU memory and the optimizer
        # steps there; the reduce-scattered shard stays on the GPU as _saved_grad_shard until
        # _finalize_params at the end of backward (prepare_gradient_for_optim deletes it), so backward still
        # accumulates every unit's sharded gradient on the GPU
        cpu = {"params": cpu_w, "gradients": cpu_g, "optimizer_states": opt_gpu + opt_paged}
        grads_step = 0
        opt_gpu = opt_paged = 0
    r = RankStates(compute=_compute_static(spec, setup, st), weights=weights, grads=grads, grad_head=0,
                   grads_step=grads_step,
                   grad_formula=(f"sharded gradients: the padded 1/{n} shard of every FlatParameter that requires grad, "
                                 "in its dtype (_runtime_utils.py _reduce_grad -> _accumulate_sharded_grad: "
                                 "_saved_grad_shard); the root's arrives last, at the end of backward")
                                + ("; copied to the CPU (_offload_grad) but kept on the GPU until _finalize_params"
                                   if offload else ""),
                   opt_gpu=opt_gpu, opt_paged=opt_paged,
                   opt_formula=opt_formula + (" — on the CPU (CPUOffload)" if offload else ""),
                   opt_tmp=0 if offload else optimizer_step_transient(opt_tensors_t, setup), cpu=cpu)
    r.warnings.extend(warns)
    # ---- unsharded parameters
    root = next((u for u in units if u.name == "root"), None)
    root_g = root.gathered_bytes if root else 0
    per_layer: dict[int | None, int] = defaultdict(int)
    mp_shard = 0
    for u in units:
        if u.name == "root":
            continue
        per_layer[u.layer] += u.gathered_bytes
        if u.gather_dtype != u.dtype or offload:
            # pre_unshard: the next layer's shard copied to the compute device in the gather dtype (_mp_shard,
            # or flat_param_to under CPU offload) while it is gathered, freed after (post_unshard); the root's
            # is gathered first, with no layer unsharded
            mp_shard = max(mp_shard, alloc(u.shard_numel * BYTES[u.gather_dtype]))
    big = max(per_layer.values(), default=0)
    gdt = setup.compute_dtype if setup.mixed else "the stored dtype"
    gathered = root_g + FSDP1_LAYERS_GATHERED * big + mp_shard
    how = (f"unsharded FlatParameters (_full_param_padded, N × shard) in {gdt}: the root's ({root_g:,} B: embedding, "
           "final norm, lm_head), never resharded after forward (_runtime_utils.py _post_forward_reshard: "
           "'not state._is_root'), so alive from the first forward to the end of backward; "
           f"{FSDP1_LAYERS_GATHERED} decoder layers ({big:,} B each with their adapters: the one computing and the next, "
           "limit_all_gathers / BACKWARD_PRE)" + (f"; the low-precision shard being gathered ({mp_shard:,} B)"
                                                   if mp_shard else ""))
    for phase in ("forward", "backward", "backward (layers)"):
        r.add_buffer((phase,), "buffers/allgather", gathered, how)
    # ---- gradient work in backward
    layer_rs = max((_unit_grad_peak(u, setup) for u in grad_units if u.name != "root"), default=0)
    held = 0
    root_rs = 0
    if root is not None and root.requires_grad:
        tied = any(t.tied_to is not None and t.role == "lm_head" for t in spec.tensors)
        g = BYTES[root.gather_dtype]
        roles = {p.tensor.name: p.tensor.role for p in st.placements}
        held = sum(alloc(k * g) for name, _, k, _, tr in root.members
                   if tr and (roles.get(name) not in ("embedding", "position_embedding") or
                              (tied and roles.get(name) == "embedding")))
        root_rs = _unit_grad_peak(root, setup)
    rs = max(held + layer_rs, root_rs)
    r.add_buffer(("backward (layers)",), "buffers/reduce_buckets", rs,
                 "the unsharded gradient work of one decoder layer (its parameters' gradients and the flat gradient "
                 "SplitWithSizesBackward concatenates them into, then the reduce-scatter: _runtime_utils.py "
                 "_post_backward_hook, _reduce_grad)"
                 + (f" + the root's head/norm gradients ({held:,} B), held unsharded from lm_head's backward to the "
                    "embedding's at the end, since the root's flat gradient needs every view's gradient; or the root's "
                    f"own concatenation at the end ({root_rs:,} B), whichever is larger" if held or root_rs else ""))
    r.device = _nccl(setup)
    r.model_states = {"weights": sum(b for _, b, _ in weights), "gradients": grads, "optimizer_states": opt_gpu}
    r.assumptions.append(
        f"FSDP1 FULL_SHARD on {n} GPU{'s' if n > 1 else ''} (FullyShardedDataParallel, use_orig_params="
        f"{FSDP1_USE_ORIG_PARAMS}): a FlatParameter per decoder layer, the root's (embedding, final norm, lm_head) "
        "unsharded from forward to the end of backward, each adapter its own unit"
        + (f"; MixedPrecision(param_dtype={setup.compute_dtype}), no autocast weight copies" if setup.mixed else "")
        + ("; CPUOffload(offload_params=True): shards, gradients and optimizer states in pinned CPU memory, the "
           "optimizer steps on the CPU" if offload else ""))
    if setup.quant in ("nf4", "fp4"):
        r.assumptions.append("FSDP1-QLoRA: bnb_4bit_quant_storage=bfloat16, the packed 4-bit data flattened with the "
                             "layer (same bytes as uint8); quant_state stays whole per rank")
    return r


# ---------------------------------------------------------------------------------------------- DeepSpeed
def _module_bytes(spec: ModelSpec, st: Structure, b: int) -> tuple[int, int, int, int, str]:
    """:func:`_build_module_bytes`, computed once per spec, structure and element size (not per GPU count)."""
    return _MODULE_BYTES.get((spec, st), (b,), lambda: _build_module_bytes(spec, st, b))


def _build_module_bytes(spec: ModelSpec, st: Structure, b: int) -> tuple[int, int, int, int, str]:
    """(largest module params, its bytes, largest trainable module params, its bytes, its name) in the
    16-bit layout. A module's parameters are its direct ones (``recurse=False``) as DeepSpeed's
    ``model_to_params`` counts them (stage3.py); a tied head counts the shared weight again."""
    quant_bytes = {p.tensor.name: sum(nb for c, nb in p.parts if c == "weights/quantized")
                   for p in st.placements if p.quant != "none"}
    trainable = {p.tensor.name for p in st.placements if p.trainable}
    numel: dict[str, int] = defaultdict(int)
    nbytes: dict[str, int] = defaultdict(int)
    tnumel: dict[str, int] = defaultdict(int)
    for t in spec.tensors:
        src = t.tied_to or t.name
        numel[t.module] += t.numel
        nbytes[t.module] += quant_bytes.get(src, t.numel * b)
        if src in trainable:
            tnumel[t.module] += t.numel
    for t in st.adapters:
        mod = t.name if ".modules_to_save." not in t.name else t.name.rsplit(".", 1)[0]
        numel[mod] += t.numel
        nbytes[mod] += t.numel * b
        if not t.frozen:
            tnumel[mod] += t.numel
    big = max(nbytes, key=lambda k: nbytes[k]) if nbytes else ""
    tbig = max(tnumel, key=lambda k: tnumel[k]) if tnumel else ""
    return numel.get(big, 0), nbytes.get(big, 0), tnumel.get(tbig, 0), tnumel.get(tbig, 0) * b, big


def _flat_partition(psi_t: int, n: int, stage: int, trainables: tuple[TrainableTensor, ...]) -> int:
    """Elements of one rank's partition of the trainable parameters. Stages 1-2 flatten them into one buffer
    padded to a multiple of 2·N (``flatten_dense_tensors_aligned``) and split it N ways; stage 3 partitions
    each parameter (``ds_tensor`` of ceil(numel/N) elements)."""
    if stage < 3:
        return ceil_div(psi_t, ZERO_ALIGNMENT * n) * ZERO_ALIGNMENT
    return sum(ceil_div(t.numel, n) for t in trainables)


def _zero(spec: ModelSpec, setup: Setup, st: Structure) -> RankStates:
    n = setup.gpus
    stage = int(setup.strategy[-1])
    md = setup.compute_dtype                  # DeepSpeed casts the module's parameters to bf16/fp16 (or keeps fp32)
    b = BYTES[md]
    off_opt = setup.offload in ("optimizer", "params")
    off_par = setup.offload == "params"
    label = f"DeepSpeed ZeRO-{stage}"
    psi_t = sum(t.numel for t in st.trainables)
    part = _flat_partition(psi_t, n, stage, st.trainables)
    small = ZERO3_PARAM_PERSISTENCE_THRESHOLD
    # ---- 16-bit parameters on the rank
    wsum: dict[str, int] = defaultdict(int)
    cpu_params = 0
    persistent = 0
    for p in st.placements:
        for comp, nb in p.parts:
            if comp == "weights/quant_constants":
                wsum[comp] += alloc(nb)
                continue
            if comp == "weights/quantized":
                b_rank = _packed_shard(nb, n) if stage == 3 and p.quant != "int8" else nb
                if stage == 3 and off_par and p.quant != "int8":
                    cpu_params += b_rank
                else:
                    wsum[comp] += alloc(b_rank)
                continue
            if stage < 3:
                # trainables live in the flat 16-bit buffer (bit16_groups_flat): exact bytes, one allocation
                wsum[comp] += p.numel * b if p.trainable else alloc(p.numel * b)
            else:
                per = ceil_div(p.numel, n) * b
                if off_par:
                    cpu_params += per
                else:
                    wsum[comp] += per if p.trainable else alloc(per)
                if p.numel < small:
                    persistent += alloc(p.numel * b)
    for t in st.adapters:
        if stage < 3:
            wsum[t.component] += t.numel * b if not t.frozen else alloc(t.numel * b)
        else:
            per = ceil_div(t.numel, n) * b
            if off_par:
                cpu_params += per
            else:
                wsum[t.component] += per
            if t.numel < small:
                persistent += alloc(t.numel * b)
    if stage < 3:
        pad = (part * n - psi_t) * b          # the flat buffer's alignment padding (< 2·N elements)
        if pad and st.trainables:
            first = st.trainables[0].component
            wsum[first] += pad
    where = ("full 16-bit copy on every rank" if stage < 3
             else f"1/{n} partition per rank (ds_tensor, stage3.py)" + ("; in CPU memory (offload_param)"
                                                                        if off_par else ""))
    weights = [(c, v, f"per rank: parameters in {md} ({label}: _cast_module_mixed_precision), {where}"
                + ("; trainables flattened into one buffer (bit16_groups_flat)" if stage < 3 else ""))
               for c, v in sorted(wsum.items())]
    # ---- gradients
    grads_16_part = part * b
    fp32_grads = 4 * (min(part, ZERO3_SUB_GROUP_SIZE) if stage == 3 else part)
    master = 4 * part
    flat = (TrainableTensor("fp32 partition", part, "fp32", "optimizer/master_weights", (part,)),)
    opt_all, opt_paged_all, opt_formula = optimizer_states(flat, setup) if part else (0, 0, "no trainable parameter")
    opt_formula = (f"on the flat fp32 partition ({part:,} elements per rank, single_partition_of_fp32_groups): "
                   + opt_formula)
    full_grads = gradient_bytes(st.trainables, width=b)      # ZeRO-1: param.grad, whole
    head_full = gradient_bytes(st.trainables, component=head_component(st.trainables), width=b) \
        if setup.method == "full" else 0
    r = RankStates(compute=_compute_static(spec, setup, st), weights=weights, grads=0, grad_head=0, grads_step=0,
                   grad_formula="", opt_gpu=0 if off_opt else opt_all, opt_paged=0 if off_opt else opt_paged_all,
                   opt_formula=opt_formula + (" — on the CPU (offload_optimizer)" if off_opt else ""), opt_tmp=0)
    ms: dict[str, int] = {"params_16bit": sum(v for _, v, _ in weights)}
    if stage == 1:
        # partition_gradients=False: every param.grad accumulates whole; after backward the IPG bucket reduces
        # them and the rank's part is copied into grads_in_partition (copy_grads_in_partition)
        r.grads, r.grad_head = full_grads + (0 if off_opt else grads_16_part), head_full
        r.grads_step = 0 if off_opt else grads_16_part
        r.grad_formula = (f"ZeRO-1: whole {md} gradients in param.grad ({full_grads:,} B) + this rank's partition "
                          f"copied into grads_in_partition ({part:,} elements)" + ("" if not off_opt else
                                                                                    "; partition sent to the CPU"))
        ms["grads_16bit"] = r.grads
    elif stage == 2:
        # reduce-scattered through the IPG bucket into the flat grads_in_partition (contiguous_gradients)
        g = 0 if off_opt else grads_16_part
        r.grads = r.grad_head = r.grads_step = g
        r.grad_formula = (f"ZeRO-2: {md} gradients reduce-scattered into this rank's flat partition "
                          f"grads_in_partition ({part:,} elements)"
                          + ("; with offload they are copied to the CPU fp32 gradients instead" if off_opt else ""))
        ms["grads_16bit"] = g
    else:
        g = 0 if off_opt else grads_16_part
        r.add_buffer(PHASES, "gradients/partition", g,
                     f"ZeRO-3: grad_partitions_flat_buffer, {part:,} {md} elements per rank, allocated when the "
                     "optimizer is built (stage3.py)")
        ms["grads_16bit"] = g
    if not off_opt:
        r.add_buffer(("optimizer",), "gradients/fp32_partition", fp32_grads,
                     f"the rank's gradient partition converted to fp32 for the step ({'per sub-group of at most 1e9 elements, ' if stage == 3 else ''}"
                     + ("stage3.py _prepare_fp32_grad_for_sub_group)" if stage == 3
                        else "stage_1_and_2.py step: single_grad_partition)"))
        r.add_buffer(PHASES, "optimizer/master_weights", master,
                     f"fp32 master copy of the rank's partition: 4 B × {part:,} (single_partition_of_fp32_groups / "
                     "fp32_partitioned_groups_flat)")
        ms.update({"grads_fp32": fp32_grads, "master_fp32": master, "optimizer_states": opt_all})
    # ---- buckets and gathered parameters
    ipg = ZERO_REDUCE_BUCKET_SIZE * b
    ipg_formula = (f"IPG gradient bucket: reduce_bucket_size {ZERO_REDUCE_BUCKET_SIZE:.0e} elements × {b} B, "
                   "allocated whole whatever the model size (deepspeed/runtime/zero/config.py default; ")
    if stage < 3:
        r.add_buffer(("backward", "backward (layers)", "optimizer"), "buffers/reduce_buckets", ipg,
                     ipg_formula + "stage_1_and_2.py setup_buckets, at the first gradient of each step; one buffer "
                                   "since overlap_comm defaults to False below stage 3)")
    else:
        r.add_buffer(PHASES, "buffers/reduce_buckets", ipg,
                     ipg_formula + "stage3.py allocates it with the optimizer)")
        lg_params, lg_bytes, lt_params, lt_bytes, lg_name = _module_bytes(spec, st, b)
        others = max(0, sum(t.numel for t in spec.tensors if t.tied_to is None) - lg_params)
        prefetch = min(ZERO3_PREFETCH_BUCKET_SIZE, others, max(0, ZERO3_MAX_LIVE_PARAMETERS - lg_params)) * b
        r.add_buffer(TRAIN_PHASES, "buffers/allgather", lg_bytes + prefetch,
                     f"parameters gathered in {md}: the largest module ({lg_name}, {lg_params:,} params; DeepSpeed's "
                     f"largest_layer_memory counts it) + the prefetch bucket (stage3_prefetch_bucket_size "
                     f"{ZERO3_PREFETCH_BUCKET_SIZE:.0e} elements, within stage3_max_live_parameters "
                     f"{ZERO3_MAX_LIVE_PARAMETERS:.0e}; zero/partitioned_param_coordinator.py fetch_sub_module, "
                     "defaults in zero/config.py)")
        r.add_buffer(("backward", "backward (layers)"), "gradients/gathered", lt_bytes,
                     f"the whole {md} gradient of the largest trainable module before it is reduce-scattered "
                     "(DeepSpeed's largest_layer_memory counts it)")
        r.add_buffer(PHASES, "buffers/persistent_params", persistent,
                     f"parameters below stage3_param_persistence_threshold ({small:,} elements) stay gathered on "
                     "every rank (parameter_offload.py mark_persistent_parameters)")
        ms["largest_layer"] = lg_bytes + lt_bytes
    r.device = _nccl(setup)
    if off_opt:
        r.cpu = {"master_fp32": master, "optimizer_states": opt_all + opt_paged_all, "grads_fp32": 4 * part,
                 # stages 1-2: the 16-bit staging buffer for the updated partition (param_buffer_of_bit16_for_cpu_
                 # offload_groups); stage 3: the 16-bit gradient partitions live on the CPU (self.device = cpu)
                 ("bit16_param_buffer" if stage < 3 else "grads_16bit"): part * b}
        if off_par:
            r.cpu["params_16bit"] = cpu_params
    r.model_states = ms
    r.assumptions.append(
        f"{label} on {n} GPU{'s' if n > 1 else ''}: module in {md}, fp32 master weights + optimizer states "
        + ("+ 16-bit gradients " if stage >= 2 else "") + ("+ parameters " if stage == 3 else "")
        + f"partitioned 1/{n}; DeepSpeed defaults (reduce_bucket_size 5e8"
        + (", stage3_prefetch_bucket_size 5e7, stage3_param_persistence_threshold 1e5" if stage == 3 else "") + ")"
        + ("; offload_optimizer: fp32 master, gradients and optimizer states in CPU memory, the step on the CPU"
           if off_opt else "") + ("; offload_param: 16-bit parameter partitions in CPU memory" if off_par else ""))
    return r


# ------------------------------------------------------------------------------------------------- entry
def rank_states(spec: ModelSpec, setup: Setup, st: Structure, *, fsdp_units: str | None = None) -> RankStates:
    """One rank's model states and buffers for ``setup.strategy`` on ``setup.gpus`` GPUs (``fsdp_units``: the
    FSDP2 unit layout, :func:`fsdp_unit_layout` of the setup when ``None``)."""
    if setup.strategy == "ddp":
        r = _ddp(spec, setup, st)
    elif setup.strategy in ("fsdp", "fsdp-grad-op"):
        r = _fsdp(spec, setup, st, fsdp_units)
    elif setup.strategy == "fsdp1":
        r = _fsdp1(spec, setup, st)
    else:
        r = _zero(spec, setup, st)
    if setup.gpus == 1 and setup.strategy in SHARDED:
        r.warnings.append(
            f"--strategy {setup.strategy} with --gpus 1 shards nothing: one rank holds every partition, and the "
            + ("DeepSpeed layout (16-bit module + fp32 master copies) and its buckets"
               if setup.strategy.startswith("zero") else "FSDP all-gather buffers")
            + " cost more than plain single-GPU training"
            + ("; only the offload saves memory" if setup.offload != "none" else
               "; use it with --offload, or more --gpus"))
    return r
