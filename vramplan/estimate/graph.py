"""A tiny symbolic autograd: which tensors a forward creates, which autograd saves, what stays alive.

Activations are not a per-token constant: they are the storages that autograd's saved variables keep alive
between forward and backward. This module replays a decoder layer's forward op by op — in the order the
installed transformers / peft / bitsandbytes code runs it — with sizes and dtypes only, and applies each
op's saving rule:

* ``tools/autograd/derivatives.yaml``: ``mm``/``linear`` save the input only if the weight needs a
  gradient and the weight only if the input does; ``mul`` saves each operand only for the other's
  gradient; ``silu``/``gelu`` save their input; ``_softmax``/``_log_softmax`` save their output; ``add``,
  ``_to_copy``, ``view``, ``cat`` save no tensor.
* a parameter that autograd saves (a frozen weight kept for ``grad_input``, an RMSNorm weight) is not an
  activation: it is already counted with the weights, so :meth:`Tracer.param` storages are never saved
  here; a *new* tensor made from a parameter (an autocast copy, ``1 + weight.float()``) is.
* autocast (``aten/src/ATen/autocast_mode.cpp``): ``linear``/``matmul``/``scaled_dot_product_attention``
  cast floating inputs to the autocast dtype (a new tensor when the dtype differs); ``layer_norm`` runs in
  fp32.

Sizes are symbolic, ``Size(const, per_token, per_bss)`` elements with ``tokens = batch*seq`` and
``bss = batch*seq*seq`` (the attention-score term of eager attention), so one trace serves every batch and
sequence length: a sweep evaluates thousands of setups without tracing again. Views share their base's
storage; a storage is counted once however many saved views point into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..dtypes import BYTES


class Size(NamedTuple):
    """Elements as ``const + per_token * tokens + per_bss * batch * seq**2``."""

    const: int = 0
    per_token: int = 0
    per_bss: int = 0

    def at(self, tokens: int, bss: int) -> int:
        return self.const + self.per_token * tokens + self.per_bss * bss

    def times(self, k: int) -> Size:
        return Size(self.const * k, self.per_token * k, self.per_bss * k)

    def plus(self, other: Size) -> Size:
        return Size(self.const + other.const, self.per_token + other.per_token, self.per_bss + other.per_bss)


def tok(n: int) -> Size:
    """``n`` elements per token."""
    return Size(0, n, 0)


@dataclass(eq=False)
class Storage:
    size: Size
    dtype: str
    label: str
    saved_by: list[str] = field(default_factory=list)
    category: str = ""             # the program section that first saved it (attention, mlp, norms, ...)
    param: bool = False            # a model parameter (or a view of one): counted with the weights

    def nbytes(self, tokens: int, bss: int) -> int:
        return self.size.at(tokens, bss) * BYTES[self.dtype]


@dataclass(eq=False)
class Sym:
    """A symbolic tensor: size, dtype, whether autograd tracks it, and the storage it lives in."""

    size: Size
    dtype: str
    rg: bool
    storage: Storage
    label: str


def promote(a: str, b: str) -> str:
    order = {"fp32": 3, "bf16": 2, "fp16": 2}
    return a if order.get(a, 0) >= order.get(b, 0) else b


@dataclass(frozen=True)
class Op:
    name: str
    inputs: tuple[Sym, ...]
    outputs: tuple[Sym, ...]


class _Section:
    """``with tracer.in_section("mlp"):`` — the program section that saved tensors are attributed to."""

    __slots__ = ("tracer", "name", "prev")

    def __init__(self, tracer: Tracer, name: str) -> None:
        self.tracer, self.name, self.prev = tracer, name, ""

    def __enter__(self) -> None:
        self.prev = self.tracer.section
        self.tracer.section = self.name

    def __exit__(self, *exc: object) -> None:
        self.tracer.section = self.prev


class Tracer:
    """Records the ops, allocations and saves of one forward region.

    Args:
        autocast: the autocast dtype (``bf16``/``fp16``) or ``None`` when autocast is off.
        no_grad: inference (``torch.no_grad``): autograd records nothing, so :meth:`save` keeps nothing alive.
    """

    def __init__(self, autocast: str | None, no_grad: bool = False) -> None:
        self.autocast = autocast
        self.no_grad = no_grad
        self.events: list[tuple[str, Storage]] = []      # ("alloc"|"use", storage) in program order
        self.ops: list[Op] = []
        self.saved: dict[int, Storage] = {}
        self.constants: list[tuple[str, int]] = []       # size-independent transients (dequant buffers)
        self.bwd_constants: list[tuple[str, int]] = []   # the same in backward, where they differ (4-bit grad_input)
        self.section = "other"

    # --------------------------------------------------------------------------------------- basics
    def in_section(self, name: str) -> _Section:
        """Context manager: tensors saved inside are attributed to ``name``."""
        return _Section(self, name)

    def new(self, label: str, size: Size, dtype: str, rg: bool) -> Sym:
        st = Storage(size, dtype, label)
        self.events.append(("alloc", st))
        return Sym(size, dtype, rg, st, label)

    def external(self, label: str, size: Size, dtype: str, rg: bool) -> Sym:
        """A tensor that exists before the traced region (the layer input): not allocated here."""
        return Sym(size, dtype, rg, Storage(size, dtype, label), label)

    def param(self, label: str, size: Size, dtype: str, trainable: bool) -> Sym:
        """A parameter (or a view of one) as an op input: saving it costs no activation memory."""
        st = Storage(size, dtype, label, param=True)
        return Sym(size, dtype, trainable, st, label)

    def view(self, x: Sym, size: Size, label: str) -> Sym:
        return Sym(size, x.dtype, x.rg, x.storage, label)

    def op(self, name: str, inputs: tuple[Sym, ...], outputs: tuple[Sym, ...]) -> None:
        for x in inputs:
            self.events.append(("use", x.storage))
        self.ops.append(Op(name, inputs, outputs))

    def save(self, by: str, *xs: Sym | None) -> None:
        if self.no_grad:
            return
        for x in xs:
            if x is not None and not x.storage.param:
                x.storage.saved_by.append(f"{by} saves {x.label}")
                if not x.storage.category:
                    x.storage.category = self.section
                self.saved[id(x.storage)] = x.storage

    def cast(self, x: Sym, dtype: str, label: str | None = None) -> Sym:
        """``x.to(dtype)``: the same tensor when the dtype matches, else a copy; saves nothing."""
        if x.dtype == dtype:
            return x
        out = self.new(label or f"{x.label}.to({dtype})", x.size, dtype, x.rg)
        self.op("to", (x,), (out,))
        return out

    def autocast_in(self, x: Sym) -> Sym:
        """The input an autocast-eligible op sees: a copy in the autocast dtype when it differs."""
        if self.autocast and x.dtype != self.autocast:
            return self.cast(x, self.autocast, f"{x.label} ({self.autocast} autocast copy)")
        return x

    # ------------------------------------------------------------------------------------- elementwise
    def unary_saving_input(self, name: str, x: Sym, label: str) -> Sym:
        """silu / gelu / tanh-gelu: ``derivatives.yaml`` saves ``self``."""
        out = self.new(label, x.size, x.dtype, x.rg)
        self.op(name, (x,), (out,))
        if x.rg:
            self.save(name, x)
        return out

    def mul(self, a: Sym, b: Sym, label: str) -> Sym:
        size = a.size if a.size.per_token >= b.size.per_token else b.size
        out = self.new(label, size, promote(a.dtype, b.dtype), a.rg or b.rg)
        self.op("mul", (a, b), (out,))
        if a.rg:
            self.save("mul", b)
        if b.rg:
            self.save("mul", a)
        return out

    def add(self, a: Sym, b: Sym, label: str) -> Sym:
        size = a.size if a.size.per_token >= b.size.per_token else b.size
        out = self.new(label, size, promote(a.dtype, b.dtype), a.rg or b.rg)
        self.op("add", (a, b), (out,))
        return out

    def fresh(self, name: str, x: Sym, label: str, dtype: str | None = None) -> Sym:
        """An op that makes a new tensor of ``x``'s size and saves nothing (scalar mul, clone, rope)."""
        out = self.new(label, x.size, dtype or x.dtype, x.rg)
        self.op(name, (x,), (out,))
        return out

    # ----------------------------------------------------------------------------------------- results
    def saved_storages(self, exclude: tuple[Storage, ...] = ()) -> list[Storage]:
        skip = {id(s) for s in exclude}
        return [s for k, s in self.saved.items() if k not in skip]

    def transient_candidates(self, keep: tuple[Storage, ...] = ()) -> list[tuple[Size, str]]:
        """For each point of the forward, the bytes (as sizes per dtype, folded to fp32-equivalent bytes)
        of storages alive there that are not saved: a storage lives from allocation to its last use."""
        return self._alive(uncounted=set(self.saved) | {id(s) for s in keep}, held=set())

    def live_candidates(self, hold: tuple[Storage, ...] = ()) -> list[tuple[Size, str]]:
        """Inference (``no_grad``): for each point of the region, the bytes of every storage allocated in it
        that is alive there — from its allocation to its last use, or to the end of the region for ``hold``
        (the output, KV-cache entries) — as sizes in bytes. Storages from before the region (its input) are
        not counted."""
        return self._alive(uncounted=set(), held={id(s) for s in hold})

    def _alive(self, *, uncounted: set[int], held: set[int]) -> list[tuple[Size, str]]:
        """The running bytes of the storages allocated in the region, at each event: each from its allocation to
        its last use, ``held`` ones to the end, ``uncounted`` ones never (linear in the number of events)."""
        last: dict[int, int] = {}
        for i, (_kind, st) in enumerate(self.events):
            last[id(st)] = i
        c = a = q = 0
        dying: dict[int, list[Storage]] = {}
        out: list[tuple[Size, str]] = []
        for i, (kind, st) in enumerate(self.events):
            if kind == "alloc" and id(st) not in uncounted:
                k = BYTES[st.dtype]
                c, a, q = c + st.size.const * k, a + st.size.per_token * k, q + st.size.per_bss * k
                if id(st) not in held:
                    dying.setdefault(max(last.get(id(st), i), i), []).append(st)
            out.append((Size(c, a, q), st.label))
            for d in dying.pop(i, ()):
                k = BYTES[d.dtype]
                c, a, q = c - d.size.const * k, a - d.size.per_token * k, q - d.size.per_bss * k
        return out

    def backward_candidates(self) -> list[tuple[Size, str]]:
        """Bytes of gradients alive while each op runs backward: its output grads plus its input grads."""
        out: list[tuple[Size, str]] = []
        for op in reversed(self.ops):
            total = Size()
            for y in op.outputs:
                if y.rg:
                    total = total.plus(y.size.times(BYTES[y.dtype]))
            for x in op.inputs:
                if x.rg:
                    total = total.plus(x.size.times(BYTES[x.dtype]))
            out.append((total, op.name))
        return out


def prune(cands: list[tuple[Size, str]]) -> list[tuple[Size, str]]:
    """Drop candidates dominated in every coefficient (keeps evaluation cheap for sweeps)."""
    kept: list[tuple[Size, str]] = []
    for c in sorted(cands, key=lambda c: (-c[0].per_bss, -c[0].per_token, -c[0].const)):
        if not any(k[0].const >= c[0].const and k[0].per_token >= c[0].per_token and k[0].per_bss >= c[0].per_bss
                   for k in kept):
            kept.append(c)
    return kept
