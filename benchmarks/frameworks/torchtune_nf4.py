"""torchtune QLoRA's NF4 weights, measured on CPU from torchtune and torchao themselves (issue 14).

Not a CI test: it needs torchtune and torchao, which CI does not install. Run it in a private venv::

    python3 -m venv /tmp/nf4-venv && . /tmp/nf4-venv/bin/activate
    pip install torch==2.13.0 torchtune==0.6.1 torchao==0.10.0
    python benchmarks/frameworks/torchtune_nf4.py            # prints JSON

(torchao 0.17.0, the newest release that still has ``torchao.dtypes.nf4tensor``, imports and gives the same numbers
with torch 2.13.0: ``PYTHONPATH=<unzipped torchao-0.17.0 wheel>``; 0.18.0 moved NF4 to
``torchao/quantization/quantize_/workflows/nf4/``, which torchtune 0.6.1 does not import.)

What it measures, each the input of a pinned number in ``tests/estimate/test_torchao_nf4.py``:

1. ``storage``: the bytes of every inner tensor of ``to_nf4(W)`` (``quantized_data``, ``quantized_scalers``,
   ``quantization_factor``, ``scaler_mean``, ``nf4``) for several shapes and source dtypes, storage by storage.
2. ``dequant_peak``: the peak of live CPU bytes (allocator events from ``torch.profiler``, ``profile_memory=True``,
   in time order) while ``NF4Tensor.to(bf16)`` runs, i.e. ``get_original_weight`` — what ``linear_nf4`` does in
   forward and backward (torchao 0.10.0 dtypes/nf4tensor.py:756-783, :964-975).
3. ``lora_linear``: what ``LoRALinear(quantize_base=True)`` saves for backward (``saved_tensors_hooks``, unique
   storages; the NF4 weight itself is recognised by type) and the peaks of its forward and backward.
4. ``step``: a tiny ``lora_llama3(..., quantize_base=True)`` (2 layers), bf16, one forward + loss + backward: the
   saved bytes per layer and the forward and backward peaks above the resident model.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

SHAPES = [(4096, 4096), (14336, 4096), (1024, 4096), (128, 256), (512, 1024)]


def peaks(fn):
    """(peak, end) of live CPU bytes allocated while ``fn`` runs, above the start, and ``fn``'s result."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    evs = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())
    cur = peak = 0
    for e in evs:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak, cur, out


def storage(to_nf4):
    out = []
    for (o, i) in SHAPES:
        for dt in (torch.bfloat16, torch.float32):
            nf = to_nf4(torch.randn(o, i, dtype=dt))
            parts = {a: getattr(nf, a).untyped_storage().nbytes()
                     for a in ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")}
            out.append({"shape": [o, i], "dtype": str(dt), "parts": parts,
                        "dtypes": {a: str(getattr(nf, a).dtype) for a in parts}})
    return out


def dequant_peak(to_nf4):
    out = []
    for (o, i) in SHAPES[2:]:
        nf = to_nf4(torch.randn(o, i, dtype=torch.bfloat16))
        p, end, w = peaks(lambda nf=nf: nf.to(torch.bfloat16))
        out.append({"shape": [o, i], "peak": p, "end": end, "result": w.untyped_storage().nbytes()})
    return out


def _saved(fn):
    from torchao.dtypes.nf4tensor import NF4Tensor
    seen: dict[int, int] = {}
    nf4 = []

    def pack(t):
        if isinstance(t, NF4Tensor):
            nf4.append(tuple(t.shape))
        else:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn()
    return y, seen, nf4


def lora_linear():
    from torchtune.modules.peft import LoRALinear
    torch.manual_seed(0)
    T, IN, OUT, R = 64, 1024, 512, 8
    with torch.device("cpu"):
        torch.set_default_dtype(torch.bfloat16)
        m = LoRALinear(IN, OUT, rank=R, alpha=16, quantize_base=True)
        torch.set_default_dtype(torch.float32)
    x = torch.randn(T, IN, dtype=torch.bfloat16, requires_grad=True)
    xptr = x.untyped_storage().data_ptr()
    holder = {}

    def fwd():
        y, seen, nf4 = _saved(lambda: m(x))
        holder["y"] = y
        return seen, nf4

    fp, fend, (seen, nf4) = peaks(fwd)
    y = holder.pop("y")
    bp, bend, _ = peaks(lambda: y.sum().backward())
    return {"T": T, "in": IN, "out": OUT, "r": R, "weight_type": type(m.weight).__name__,
            "adapter_dtypes": sorted({str(p.dtype) for n, p in m.named_parameters() if p.requires_grad}),
            "saved_nf4_weights": nf4, "saved_input": xptr in seen,
            "saved_other_bytes": sum(b for p, b in seen.items() if p != xptr),
            "forward_peak": fp, "forward_end": fend, "backward_peak": bp}


def step():
    from torchtune import training
    from torchtune.models.llama3 import lora_llama3
    torch.manual_seed(0)
    cfg = dict(vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=256, max_seq_len=256,
               intermediate_dim=768, lora_rank=8, lora_alpha=16)
    with training.set_default_dtype(torch.bfloat16):
        model = lora_llama3(["q_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True, quantize_base=True, **cfg)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    B, S = 1, 128
    tokens = torch.randint(0, cfg["vocab_size"], (B, S))
    holder = {}

    def fwd():
        out, seen, nf4 = _saved(lambda: model(tokens))
        holder["out"] = out
        return seen, nf4

    fp, fend, (seen, nf4) = peaks(fwd)
    out = holder.pop("out")
    bp, bend, _ = peaks(lambda: out.float().sum().backward())
    return {"config": cfg, "B": B, "S": S, "logits_dtype": str(out.dtype), "saved_bytes": sum(seen.values()),
            "saved_nf4_weights": len(nf4), "forward_peak": fp, "forward_end": fend, "backward_peak": bp}


def main() -> None:
    import torchao
    import torchtune
    from torchao.dtypes.nf4tensor import to_nf4
    res = {"versions": {"torch": torch.__version__, "torchao": torchao.__version__, "torchtune": torchtune.__version__},
           "storage": storage(to_nf4), "dequant_peak": dequant_peak(to_nf4), "lora_linear": lora_linear(),
           "step": step()}
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
