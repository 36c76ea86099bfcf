"""The allocation tracker: every storage a step creates, rounded as the CUDA caching allocator rounds it.

:class:`Tracker` is a ``TorchDispatchMode``: below autograd, it sees every ATen op of the forward, the backward
and the optimizer. For each output whose storage it has not seen it opens a record — size rounded up to 512 B
(``c10/cuda/CUDACachingAllocator.cpp``: ``kMinBlockSize``), tag, phase, the module running (a stack kept by
global module pre/post forward hooks), the layer — and closes it from a weakref callback when the storage
dies. Views and in-place results share their base's storage and are not counted again.

Tags start as ``temporary`` and are refined later: ``parameter`` (registered at load), ``activation`` (a
``saved_tensors_hooks`` pack hook marks what autograd saves for backward; what is still alive when the
forward ends — checkpointed layer inputs — too), ``gradient`` (a post-accumulate-grad hook), ``optimizer_state``
and ``kv_cache``. The log of alloc/free events is replayed to break any instant down by tag, category and
layer; peaks are kept per phase and per *segment* (which part of the model was running), which is what the
per-layer extrapolation needs.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..dtypes import alloc

#: outputs that CUDA kernels return on the host, not the GPU: the philox seed and offset of the flash and
#: memory-efficient attention kernels without dropout (``at::empty({}, at::dtype(at::kLong))`` in
#: ``aten/src/ATen/native/transformers/cuda/attention.cu``); the meta kernels return them as meta tensors.
HOST_OUTPUTS = {
    "_scaled_dot_product_flash_attention.default": (6, 7),
    "_scaled_dot_product_efficient_attention.default": (2, 3),
}

ATTENTION_OPS = {
    torch.ops.aten._scaled_dot_product_flash_attention.default: "flash",
    torch.ops.aten._scaled_dot_product_efficient_attention.default: "efficient",
    torch.ops.aten._scaled_dot_product_attention_math.default: "math",
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: "math",
}

TAGS = ("parameter", "buffer", "gradient", "optimizer_state", "activation", "temporary", "kv_cache")


@dataclass
class Record:
    """One allocation: what ``torch.cuda.memory_allocated`` would count for one storage."""

    rid: int
    nbytes: int                 # allocator-rounded
    raw_nbytes: int
    tag: str
    phase: str
    segment: str
    module: str                 # innermost module running when it was allocated
    op: str
    layer: int | None = None    # decoder layer that allocated (or, for activations, saved) it
    category: str = ""          # activations: attention / mlp / norms / lora_inputs / head / logits / ...
    component: str = ""         # parameters: weights/... adapters/... (set by the builder)


@dataclass
class Peak:
    bytes: int = -1
    event: int = -1             # index into Tracker.events after which the peak holds
    segment: str = ""
    module: str = ""
    op: str = ""


@dataclass
class Snapshot:
    """Live records at one instant, grouped."""

    total: int
    by_key: dict[tuple[str, str], int] = field(default_factory=dict)     # (tag, category) -> bytes
    records: list[Record] = field(default_factory=list)


class Tracker(TorchDispatchMode):
    """Records every new storage; see the module docstring.

    Attributes:
        phase: set by the step driver (``load``, ``forward``, ``backward``, ``optimizer``, ``prefill`` ...).
        segment: which part of the model runs (``embedding``, ``layer 3``, ``head``); set by hooks.
        layer_of: module -> decoder layer index, for attributing records.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[Record] = []
        self.events: list[int] = []             # rid for an allocation, ~rid for a free
        self.live: dict[int, int] = {}          # id(storage) -> rid
        self._refs: dict[int, weakref.ref] = {}
        self.total = 0
        self.phase = "load"
        self.segment = ""
        self.module_stack: list[str] = []
        self.layer_stack: list[int] = []
        self.peaks: dict[tuple[str, str], Peak] = {}
        self.marks: dict[str, int] = {}
        self.counting = True
        self.layer_names: set[str] = set()
        self.checkpointing = False
        self.shared = 0                         # > 0 inside modules whose outputs every layer shares (rotary)
        self.on_op: Callable[[Any, tuple, dict], Any] | None = None   # kernel-workspace emulation hook
        self.override: Callable[[Any, tuple, dict], Any] | None = None  # meta kernels that differ from CUDA's
        self.ops = 0
        self.current_op: Any = None
        self.attention: dict[str, int] = {}     # attention kernels run in forward (recomputes included)

    # ----------------------------------------------------------------------------------------- storage
    def _storage_of(self, t: torch.Tensor):
        try:
            return t.untyped_storage()
        except (RuntimeError, NotImplementedError):   # sparse / nested tensors: no single storage
            return None

    def see(self, t: torch.Tensor, op: str = "", tag: str = "temporary") -> Record | None:
        """Open a record for ``t``'s storage if it is new; return the storage's record."""
        st = self._storage_of(t)
        if st is None:
            return None
        key = id(st)
        rid = self.live.get(key)
        if rid is not None:
            return self.records[rid]
        raw = st.nbytes()
        if raw == 0:                    # the caching allocator hands out no block for 0 bytes
            return None
        rid = len(self.records)
        layer = self.layer_stack[-1] if self.layer_stack else None
        rec = Record(rid, alloc(raw), raw, tag, self.phase, self.segment,
                     self.module_stack[-1] if self.module_stack else "", op, layer)
        if self.shared:
            rec.category, rec.layer = "rotary", None
        elif self.phase == "backward" and self.module_stack:
            rec.category = "recomputed"         # a checkpointed layer's forward, re-run in backward
        self.records.append(rec)
        self.live[key] = rid
        self._refs[rid] = weakref.ref(st, self._freer(key, rid))
        self.events.append(rid)
        self.total += rec.nbytes
        self._bump()
        return rec

    def _freer(self, key: int, rid: int) -> Callable[[Any], None]:
        def free(_ref: Any) -> None:
            if self.live.get(key) == rid:
                del self.live[key]
            self._refs.pop(rid, None)
            self.events.append(~rid)
            self.total -= self.records[rid].nbytes
        return free

    def record_of(self, t: torch.Tensor) -> Record | None:
        st = self._storage_of(t)
        if st is None:
            return None
        rid = self.live.get(id(st))
        return None if rid is None else self.records[rid]

    def _bump(self) -> None:
        if not self.counting:
            return
        key = (self.phase, self.segment)
        p = self.peaks.get(key)
        if p is None:
            p = self.peaks[key] = Peak()
        if self.total > p.bytes:
            p.bytes, p.event, p.segment = self.total, len(self.events), self.segment
            p.module = self.module_stack[-1] if self.module_stack else ""

    def enter(self, phase: str, segment: str = "") -> None:
        """Start a phase: what is live now is its first candidate peak."""
        self.phase, self.segment = phase, segment
        self._bump()

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.events)

    # ------------------------------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        self.ops += 1
        self.current_op = func
        if func in ATTENTION_OPS and self.phase != "backward":
            k = ATTENTION_OPS[func]
            self.attention[k] = self.attention.get(k, 0) + 1
        workspace = self.on_op(func, args, kwargs) if self.on_op is not None else None
        for w in workspace or ():
            rec = self.see(w, f"{func.__name__} workspace")
            if rec is not None:
                rec.category = "workspace"
        out = self.override(func, args, kwargs) if self.override is not None else NotImplemented
        if out is NotImplemented:
            out = func(*args, **kwargs)
        name = func.__name__
        host = HOST_OUTPUTS.get(name)
        for i, t in enumerate(tree_leaves(out)):
            if isinstance(t, torch.Tensor) and not (host and i in host):
                self.see(t, name)
        del workspace
        return out

    # ------------------------------------------------------------------------------------------- replay
    def snapshot(self, event: int) -> Snapshot:
        """The live records after the first ``event`` events."""
        live: dict[int, None] = {}
        for e in self.events[:event]:
            if e >= 0:
                live[e] = None
            else:
                live.pop(~e, None)
        recs = [self.records[r] for r in live]
        by: dict[tuple[str, str], int] = defaultdict(int)
        for r in recs:
            by[(r.tag, r.category)] += r.nbytes
        return Snapshot(sum(r.nbytes for r in recs), dict(by), recs)

    def live_records(self) -> Iterator[Record]:
        for rid in self.live.values():
            yield self.records[rid]

    def phase_peaks(self) -> dict[str, Peak]:
        out: dict[str, Peak] = {}
        for (phase, _seg), p in self.peaks.items():
            if p.bytes > out.get(phase, Peak()).bytes:
                out[phase] = p
        return out
