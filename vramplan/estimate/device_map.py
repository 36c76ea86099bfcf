"""``from_pretrained(device_map="auto")`` across several GPUs: which module lands on which device, and each GPU's peak.

transformers 5.24.0 ``integrations/accelerate.py`` decides the split from parameter sizes alone (the model is on the
meta device when it runs), in two steps that this module replays on the model's shapes, without torch:

* ``_get_device_map``: for ``"auto"``, ``"balanced"`` and ``"balanced_low_0"`` it first calls
  ``get_balanced_memory``, which caps every GPU but the last at ``total // n`` plus a buffer of 1.25 × the larger
  of the biggest no-split block (the decoder layer, ``model._no_split_modules``) and the biggest leaf module (the
  embedding, usually); ``balanced_low_0`` keeps GPU 0 as empty as the others allow. ``"sequential"`` fills GPU 0
  first. With one GPU and no ``max_memory`` given, 90 % of it is used.
* ``infer_auto_device_map``: modules in order (the top module's parameters, children, buffers), each placed whole
  on the current device if it fits, else split into its children (a decoder layer is never split), else the next
  device. GPU 0 and the CPU keep room for the largest remaining layer (``max_layer_size``, for an offloaded layer
  to be brought back); a tied weight travels with the module it is tied to (``get_module_size_with_ties``), so a
  tied ``lm_head`` lands on the embedding's GPU. What does not fit on the GPUs goes to the CPU (when it is given a
  budget: by default its free RAM), then to disk.

Sizes are ``numel × element_size`` of the loaded dtype per parameter, tied weights once
(``compute_module_sizes``). A quantized model is sized as transformers sizes it (:func:`split_sizes`): the
quantizer's ``preprocess_model`` has already replaced the Linears (``modeling_utils.py from_pretrained`` runs it
before ``_get_device_map``), so GPTQ / AWQ / FP8 checkpoints count their real buffers and parameters (qweight,
qzeros, scales, g_idx, fp16 bias; fp8 weight + fp32 ``weight_scale_inv``), and bitsandbytes counts each
``Linear4bit``/``Linear8bitLt`` weight at ``quantized_element_size`` (0.5 / 1 B per element: ``HfQuantizer.
param_element_size``) and then gives ``infer_auto_device_map`` 90 % of every budget (``adjust_max_memory``).
Not modelled: non-persistent buffers (the rotary ``inv_freq``, a few hundred bytes per model, counted by
transformers) and ``_no_placement_params``. The tests compare the split with transformers' own functions on meta
models.

A GPU's peak during ``generate`` is then its weights, the KV cache of its layers, the working set of one layer
(every GPU that holds layers runs them, one at a time, on hidden states that accelerate's hooks move between
devices), the logits where ``lm_head`` sits, its cuBLAS workspace and CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..dtypes import BYTES
from ..errors import SetupError
from ..shapes.spec import ModelSpec
from ..units import SizeError, parse_size

#: ``--device-map`` values other than ``none`` (transformers ``from_pretrained(device_map=...)`` strings)
DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")


# ------------------------------------------------------------------------------------------------ module tree
@dataclass
class _Node:
    name: str
    size: int = 0                                   # bytes of every parameter below (tied weights once)
    params: list[tuple[str, int]] = field(default_factory=list)      # direct parameters (full name, bytes)
    children: dict[str, _Node] = field(default_factory=dict)
    no_split: bool = False                          # a decoder layer (``_no_split_modules``)


def _layer_module(tensor_name: str, layer: int) -> str | None:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``: the decoder layer module of a layer tensor."""
    parts = tensor_name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == str(layer) and i > 0:
            return ".".join(parts[: i + 1])
    return None


def module_tree(spec: ModelSpec, dtype: str, sizes: dict[str, float] | None = None) -> tuple[_Node, list[list[str]]]:
    """The module tree of ``spec`` with parameter bytes in ``dtype`` (or ``sizes[tensor name]``, as
    :func:`split_sizes` gives them; tied weights not counted), and the tied groups ``[[tied name, target name],
    ...]`` (``model.all_tied_weights_keys``)."""
    root = _Node("")
    layer_modules = {m for t in spec.tensors if t.layer is not None
                     for m in [_layer_module(t.name, t.layer)] if m is not None}
    tied: list[list[str]] = []
    for t in spec.tensors:
        size = 0 if t.tied_to is not None else (sizes[t.name] if sizes is not None else t.numel * BYTES[dtype])
        if t.tied_to is not None:
            tied.append(sorted([t.name, t.tied_to]))
        *mods, _ = t.name.split(".")
        node = root
        node.size += size
        prefix = ""
        for m in mods:
            prefix = f"{prefix}.{m}" if prefix else m
            node = node.children.setdefault(m, _Node(prefix, no_split=prefix in layer_modules))
            node.size += size
        node.params.append((t.name, size))
    return root, tied or [[]]


def _sizes(root: _Node) -> dict[str, int]:
    """Bytes by module and by parameter name (``compute_module_sizes(only_modules=False)``)."""
    out: dict[str, int] = {}
    for n in _walk(root):
        out[n.name] = n.size
        out.update(n.params)
    return out


# ------------------------------------------------------------------------------------------------ max_memory
def parse_max_memory(text: str | None, gpus: int) -> dict[int | str, int] | None:
    """``--max-memory``: ``20GiB`` (every GPU), or ``0=20GiB,1=30GiB,cpu=64GiB`` (transformers' ``max_memory``
    dict); ``None`` when not given.

    Raises:
        SetupError: a part that is not ``DEVICE=SIZE`` or a size, a GPU index beyond ``--gpus``.
    """
    if text is None:
        return None
    out: dict[int | str, int] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.rpartition("=") if "=" in part else ("", "", part)
        try:
            size = parse_size(value.strip())
        except (ValueError, SizeError) as exc:
            raise SetupError(f"--max-memory {part[:60]!r}: {exc}") from None
        key = key.strip().lower()
        if not sep:
            for i in range(gpus):
                out[i] = size
        elif key.isdecimal() and int(key) < gpus:
            out[int(key)] = size
        elif key in ("cpu", "disk"):
            out[key] = size
        else:
            raise SetupError(f"--max-memory {part[:60]!r}: the device must be a GPU index below --gpus {gpus}, cpu "
                             "or disk, as in 0=20GiB,1=20GiB,cpu=64GiB")
    if not any(isinstance(k, int) for k in out):
        raise SetupError(f"--max-memory {str(text)[:60]!r} gives no GPU a budget: write 20GiB or 0=20GiB,1=20GiB")
    return out


def balanced_memory(root: _Node, max_memory: dict[int | str, int], *, low_zero: bool,
                    user_set: bool) -> dict[int | str, int]:
    """transformers 5.24.0 ``integrations/accelerate.py::get_balanced_memory``."""
    max_memory = dict(max_memory)
    gpus = sorted(k for k, v in max_memory.items() if isinstance(k, int) and v > 0)
    n = len(gpus)
    if n == 0:
        return max_memory
    if n == 1:
        low_zero = False
        if not user_set:
            max_memory[gpus[0]] = max_memory[gpus[0]] * 0.9      # "90% is a good compromise" (a float there too)
    per_gpu = root.size // (n - 1 if low_zero else n)
    biggest_block = max((c.size for c in _walk(root) if c.no_split), default=0)
    leaves: dict[str, int] = {}
    for node in _walk(root):
        for p, b in node.params:
            if "." in p:
                leaves[p.rsplit(".", 1)[0]] = leaves.get(p.rsplit(".", 1)[0], 0) + b
    per_gpu += int(1.25 * max(biggest_block, max(leaves.values(), default=0)))
    for idx in gpus[:-1]:
        max_memory[idx] = min(max_memory[0] if low_zero and idx == 0 else per_gpu, max_memory[idx])
    if low_zero:
        min_zero = max(0, root.size - sum(max_memory[i] for i in range(1, n)))
        max_memory[0] = min(min_zero, max_memory[0])
    return max_memory


def _walk(n: _Node):
    yield n
    for c in n.children.values():
        yield from _walk(c)


# ------------------------------------------------------------------------------------------------ the split
def _max_layer(items: list[tuple[str, Any]], sizes: dict[str, int]) -> tuple[int, list[str]]:
    """accelerate ``utils/modeling.py::get_max_layer_size``: the largest leaf or no-split module among ``items``."""
    best, names = 0, []
    todo = list(items)
    while todo:
        name, obj = todo.pop(0)
        if isinstance(obj, _Node) and obj.children and not obj.no_split:
            todo = [(c.name, c) for c in obj.children.values()] + todo
            continue
        s = sizes[name]
        if s > best:
            best, names = s, [name]
        elif s == best:
            names.append(name)
    return best, names


def infer_device_map(root: _Node, tied: list[list[str]], max_memory: dict[int | str, int]) -> dict[str, int | str]:
    """transformers 5.24.0 ``integrations/accelerate.py::infer_auto_device_map`` (``clean_result=True``,
    ``no_placement_params=None``) on the module tree."""
    sizes = _sizes(root)
    devices: list[int | str] = list(max_memory)
    if "disk" not in devices:
        devices.append("disk")
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    main = [gpus[0], "cpu"] if gpus else ["cpu"]
    todo: list[tuple[str, Any]] = [(p, None) for p, _ in root.params] + [(c.name, c) for c in root.children.values()]
    device_map: dict[str, int | str] = {}
    current = 0
    used = dict.fromkeys(devices, 0)
    max_size, max_names = _max_layer([(n, m) for n, m in todo if isinstance(m, _Node)], sizes)
    while todo:
        name, module = todo.pop(0)
        max_names = [n for n in max_names if n != name and not n.startswith(name + ".")]
        if not max_names:
            max_size, max_names = _max_layer([(n, m) for n, m in todo if isinstance(m, _Node)], sizes)
        size = sizes[name]
        groups = [g for g in tied if any(name + "." in k + "." for k in g) and not all(name + "." in k + "." for k in g)]
        tied_params = [p for g in groups for p in g if name + "." not in p + "."]
        device = devices[current]
        cap = max_memory[device] if device != "disk" else None
        reserved = 0
        if device in main and cap is not None:
            cap, reserved = cap - max_size, max_size
        with_ties, tied_names, tied_modules = size, [], []
        for tp in tied_params:
            idx = [i for i, (n, _) in enumerate(todo) if tp.startswith(n + ".")]
            if idx and todo[idx[0]][0] not in tied_names:
                tied_names.append(todo[idx[0]][0])
                tied_modules.append(todo[idx[0]][1])
                with_ties += sizes[todo[idx[0]][0]]
        if cap is None or used[device] + with_ties <= cap:
            used[device] += with_ties
            device_map[name] = device
            for tn in tied_names:
                todo = [(n, m) for n, m in todo if n != tn]
                device_map[tn] = device
            continue
        if tied_params and used[device] + size <= cap:
            split = False
            for tn, tm in zip(tied_names, tied_modules, strict=True):
                if not isinstance(tm, _Node) or not tm.children or tm.no_split:
                    continue
                kids = [(p, None) for p, _ in tm.params] + [(c.name, c) for c in tm.children.values()]
                i = [k for k, (n, _) in enumerate(todo) if n == tn][0]
                todo = [(name, module)] + todo[:i] + kids + todo[i + 1:]
                max_size, max_names = _max_layer([(n, m) for n, m in todo if isinstance(m, _Node)], sizes)
                split = True
                break
            if split:
                continue
        if isinstance(module, _Node) and module.children and not module.no_split:
            kids = [(p, None) for p, _ in module.params] + [(c.name, c) for c in module.children.values()]
            todo = kids + todo
            max_size, max_names = _max_layer([(n, m) for n, m in todo if isinstance(m, _Node)], sizes)
            continue
        used[device] += reserved
        current += 1
        if current >= len(devices):        # cannot happen: disk takes everything
            raise AssertionError("device map ran past the disk")
        todo = [(name, module)] + todo
    return _clean(device_map)


def _clean(device_map: dict[str, int | str], module: str = "") -> dict[str, int | str]:
    """accelerate ``utils/modeling.py::clean_device_map``: submodules on one device are grouped under their parent."""
    prefix = "" if module == "" else f"{module}."
    values = [v for k, v in device_map.items() if k.startswith(prefix)]
    if len(set(values)) == 1 and len(values) > 1:
        for k in [k for k in device_map if k.startswith(prefix)]:
            del device_map[k]
        device_map[module] = values[0]
    idx = len(module.split(".")) + 1 if module else 1
    for child in {".".join(k.split(".")[:idx]) for k in device_map if k.startswith(prefix) and len(k) > len(module)}:
        _clean(device_map, child)
    return device_map


def device_of(device_map: dict[str, int | str], tensor_name: str) -> int | str:
    """The device a parameter lands on: its own entry or its closest listed parent's."""
    name = tensor_name
    while True:
        if name in device_map:
            return device_map[name]
        if "." not in name:
            return device_map[""] if "" in device_map else "disk"
        name = name.rsplit(".", 1)[0]


# ------------------------------------------------------------------------------------------------ per GPU
@dataclass(frozen=True)
class DeviceShare:
    """What one device holds under the split."""

    device: int | str
    layers: tuple[int, ...]
    weights_bytes: int
    holds_head: bool


@dataclass(frozen=True)
class DevicePlan:
    strategy: str
    max_memory: dict[int | str, int]           # the budget infer_auto_device_map was given (after balancing)
    device_map: dict[str, int | str]
    shares: tuple[DeviceShare, ...]

    def share(self, device: int | str) -> DeviceShare | None:
        return next((s for s in self.shares if s.device == device), None)


#: ``quantized_element_size`` of the bitsandbytes quantizers (transformers 5.24 quantizers/quantizer_bnb_4bit.py,
#: quantizer_bnb_8bit.py) and the share of each budget their ``adjust_max_memory`` leaves (``val * 0.90``)
BNB_ELEMENT_SIZE = {"nf4": 0.5, "fp4": 0.5, "int8": 1}
BNB_MAX_MEMORY_FACTOR = 0.90


def split_sizes(spec: ModelSpec, setup: Any) -> tuple[dict[str, float] | None, dict[str, int] | None, float]:
    """Per tensor: the bytes transformers 5.24 ``compute_module_sizes(model, hf_quantizer)`` counts, the bytes it
    occupies once loaded (``estimate/weights.py place_weights``: the same for GPTQ, AWQ and FP8; bitsandbytes'
    packed codes and absmax), both None for an unquantized model, and the factor ``hf_quantizer.adjust_max_memory`` applies to the budgets.

    Raises:
        SetupError: a quantization whose device-map sizing is not mirrored here (compressed-tensors).
    """
    from .weights import place_weights

    if not setup.quantized:                # every parameter in the loaded dtype (module_tree's default)
        return None, None, 1.0
    placed = {p.tensor.name: p for p in place_weights(spec, setup)}
    resident = {n: sum(b for _, b in p.parts) for n, p in placed.items()}
    if setup.bnb:
        # HfQuantizer.param_element_size: quantized_element_size where param_needs_quantization (a Linear4bit /
        # Linear8bitLt weight, not its bias), the param's own element size elsewhere; replace_with_bnb_linear
        # creates the new module without a dtype, so on the meta model its bias is fp32 (4 B) whatever it loads as
        size = BNB_ELEMENT_SIZE[setup.quant]
        quantized = {p.tensor.module for p in placed.values() if p.quant != "none"}
        sizes = {n: (p.tensor.numel * size if p.quant != "none"
                     else 4.0 * p.tensor.numel if p.tensor.module in quantized and p.tensor.role == "bias"
                     else float(resident[n])) for n, p in placed.items()}
        return sizes, resident, BNB_MAX_MEMORY_FACTOR
    from ..quantized import setup_scheme

    scheme = setup_scheme(setup, spec.config)
    if scheme.fmt == "compressed-tensors":
        raise SetupError("--device-map on a compressed-tensors checkpoint is not modelled (its quantizer's "
                         "parameter sizes are not mirrored); plan it without --device-map")
    # GPTQ (optimum convert_model), AWQ (replace_with_awq_linear), FP8 (replace_with_fp8_linear): the converted
    # modules' buffers and parameters themselves; no adjust_max_memory in quantizer_gptq/awq/finegrained_fp8.py.
    # FP8Linear is created without a dtype: its bias is fp32 on the meta model (GPTQ/AWQ register an fp16 one)
    quantized = {p.tensor.module for p in placed.values() if p.quant != "none"}
    fp32_bias = scheme.quant == "fp8"
    return {n: (4.0 * p.tensor.numel if fp32_bias and p.tensor.module in quantized and p.tensor.role == "bias"
                else float(resident[n])) for n, p in placed.items()}, resident, 1.0


def plan_device_map(spec: ModelSpec, dtype: str, strategy: str, gpus: int, free_bytes: int | None,
                    max_memory_text: str | None, setup: Any = None) -> DevicePlan:
    """The split ``from_pretrained(device_map=strategy, max_memory=...)`` makes of ``spec`` loaded in ``dtype``
    over ``gpus`` GPUs with ``free_bytes`` free each (``--gpu``'s memory less the CUDA context) unless
    ``--max-memory`` says otherwise; without ``--max-memory`` the CPU takes what the GPUs cannot (as accelerate
    gives it the free RAM), with it only the devices it names and then disk. ``setup``: its quantization sizes
    the modules (:func:`split_sizes`); without it every parameter is ``dtype``.

    Raises:
        SetupError: a bad ``--max-memory``, or neither ``--max-memory`` nor a GPU size to split on.
    """
    if strategy not in DEVICE_MAPS:
        raise SetupError(f"--device-map {strategy!r} is not one of: {', '.join(DEVICE_MAPS)}")
    given = parse_max_memory(max_memory_text, gpus)
    if given is None:
        if free_bytes is None:
            raise SetupError("--device-map needs the GPUs' memory: pass --gpu (a card or a size) or --max-memory")
        budget: dict[int | str, int] = {i: free_bytes for i in range(gpus)}
        budget["cpu"] = 1 << 62               # the free RAM: not known here, taken as enough
    else:
        budget = {**{k: v for k, v in sorted((k, v) for k, v in given.items() if isinstance(k, int))},
                  **{k: given[k] for k in ("cpu", "disk") if k in given}}
    sizes, resident, factor = split_sizes(spec, setup) if setup is not None else (None, None, 1.0)
    root, tied = module_tree(spec, dtype, sizes)
    if strategy != "sequential":
        budget = balanced_memory(root, budget, low_zero=strategy == "balanced_low_0", user_set=given is not None)
    if factor != 1.0:                      # hf_quantizer.adjust_max_memory, after balancing (_get_device_map)
        budget = {k: v * factor for k, v in budget.items()}
    dmap = infer_device_map(root, tied, budget)
    shares: dict[int | str, list] = {}
    head = spec.output_head or "lm_head"
    for t in spec.tensors:
        d = device_of(dmap, t.name)
        s = shares.setdefault(d, [set(), 0, False])
        if t.tied_to is None:
            s[1] += resident[t.name] if resident is not None else t.numel * BYTES[dtype]
        if t.layer is not None:
            s[0].add(t.layer)
        if t.name.startswith(head + ".") or t.name == head:
            s[2] = True
    order = [d for d in budget if d in shares] + [d for d in ("cpu", "disk") if d in shares and d not in budget]
    return DevicePlan(strategy, budget, dmap, tuple(DeviceShare(d, tuple(sorted(shares[d][0])), shares[d][1],
                                                                shares[d][2]) for d in order))



def layer_ranges(layers: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"``."""
    out, start, prev = [], None, None
    for i in layers:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out) or "-"


def device_map_section(spec: ModelSpec, setup: Any, breakdown: dict[str, int], gpu: Any, margin: float,
                       free_bytes: int | None, context_bytes: int) -> dict[str, Any]:
    """The ``device_map`` section of an inference plan: the split and each device's peak.

    ``breakdown`` is the single-GPU estimate's components (``Estimate.to_dict()["breakdown_bytes"]``): the KV cache
    is shared out by layer count (exact when every layer caches the same, an approximation for sliding-window and
    hybrid layers), the activation working set is that of one layer and sits on every GPU holding layers, the
    logits on the GPU holding ``lm_head``.
    """
    from .overhead import allocator_overhead_bytes, usable_bytes

    plan = plan_device_map(spec, setup.compute_dtype, setup.device_map, setup.gpus, free_bytes, setup.max_memory,
                           setup)
    n_layers = max(spec.num_layers, 1)
    kv = sum(v for k, v in breakdown.items() if k.startswith("kv_cache"))
    working = sum(v for k, v in breakdown.items() if k.startswith("activations/"))
    logits = sum(v for k, v in breakdown.items() if k.startswith("logits/"))
    cublas = breakdown.get("buffers/cublas_workspace", 0)
    rows, warnings = [], []
    fits = True
    cap = usable_bytes(gpu.memory_bytes, margin) if gpu is not None else None
    if setup.bnb and any(not isinstance(s.device, int) for s in plan.shares):
        # Bnb4BitHfQuantizer / Bnb8BitHfQuantizer.validate_environment(device_map=...) after the split
        raise SetupError(f"--device-map {setup.device_map} with --quant {setup.quant}: the split offloads modules to "
                         "the CPU or disk, which transformers refuses for bitsandbytes (\"Some modules are dispatched "
                         "on the CPU or the disk\", quantizer_bnb_4bit.py validate_environment); give more GPUs or "
                         "--max-memory")
    for s in plan.shares:
        if not isinstance(s.device, int):
            warnings.append(f"--device-map {setup.device_map}: {s.weights_bytes / 2**30:.2f} GiB of weights "
                            f"(layers {layer_ranges(s.layers)}) offloaded to {s.device}; generation brings each "
                            "back per forward (slow), and its memory is not counted on a GPU")
            continue
        kv_b = kv * len(s.layers) // n_layers
        work = (working if s.layers else 0) + (logits if s.holds_head else 0)
        alloc = s.weights_bytes + kv_b + work + (cublas if s.layers or s.holds_head else 0)
        reserved = alloc + allocator_overhead_bytes(alloc)
        used = reserved + context_bytes
        ok = cap is None or used <= cap
        fits = fits and ok
        rows.append({"device": s.device, "layers": layer_ranges(s.layers), "holds_lm_head": s.holds_head,
                     "weights_bytes": s.weights_bytes, "kv_cache_bytes": kv_b, "working_set_bytes": work,
                     "peak_allocated_bytes": alloc, "peak_reserved_bytes": reserved, "device_used_bytes": used,
                     "fits": ok if cap is not None else None})
    if any(len(s.layers) not in (0, n_layers) for s in plan.shares) and spec.sliding_window:
        warnings.append("--device-map: the KV cache is shared out by layer count; sliding-window layers cache less")
    return {"strategy": setup.device_map, "gpus": setup.gpus,
            "max_memory_bytes": {str(k): int(v) for k, v in plan.max_memory.items() if v < 0.9 * (1 << 62)},
            "device_map": {k or "": v for k, v in plan.device_map.items()},
            "devices": rows, "fits": fits if cap is not None else None, "warnings": warnings,
            "source": "transformers 5.24.0 integrations/accelerate.py _get_device_map (get_balanced_memory, "
                      "infer_auto_device_map), replayed on the shapes"}
