"""Pre-quantized checkpoints (GPTQ, AWQ, FP8, compressed-tensors, bitsandbytes) -> exact stored bytes per Linear.

A leaf like :mod:`vramplan.dtypes`: pure Python, no torch. What a checkpoint's ``config.json`` says in its
``quantization_config`` becomes a :class:`Scheme` (:func:`scheme_from_config`); :func:`linear_parts` gives the
bytes of every tensor a quantized ``nn.Linear`` replacement registers, one entry per CUDA allocation, in the
layouts of the libraries transformers 5 loads them with:

* GPTQ — transformers' ``GptqHfQuantizer`` hands the model to optimum's ``GPTQQuantizer.convert_model``, which
  swaps the ``nn.Linear`` modules inside the decoder blocks (never the head) for a gptqmodel quant linear
  (``gptqmodel/nn_modules/qlinear/__init__.py::GPTQQuantLinear._register_gptq_buffers``, gptqmodel 7.7.0):
  ``qweight`` int32 ``[ceil(in·bits/32), out]``, ``qzeros`` int32 ``[ceil(in/g), ceil(out·bits/32)]``,
  ``scales`` fp16 ``[ceil(in/g), out]``, ``g_idx`` int32 ``[in]`` (always, whatever ``desc_act``), ``bias`` fp16;
  ``group_size=-1`` is one group of ``in`` (``GroupedQuantLinear.__init__``). The checkpoint formats ``gptq``
  and ``gptq_v2`` differ only in the zero-point offset, not in shapes.
* AWQ — transformers' ``replace_with_awq_linear`` builds gptqmodel's AWQ linears with ``register_buffers=True``:
  GEMM (``AWQuantLinear.__init__``) ``qweight`` int32 ``[in, out·bits/32]``, ``qzeros`` int32
  ``[in//g, out·bits/32]``, ``scales`` fp16 ``[in//g, out]``; GEMV (``gemv_awq.py``, AutoAWQ 0.2.9
  ``WQLinear_GEMV`` alike) ``qweight`` ``[out, in/8]``, ``qzeros`` ``[out, calculate_zeros_width(in, g)]``,
  ``scales`` fp16 ``[out, zeros_width·8]``. AWQ stores 4 bits (``SUPPORTS_BITS = [4]``).
* FP8 — transformers' ``FP8Linear`` (``integrations/finegrained_fp8.py``): ``weight`` float8_e4m3fn
  ``[out, in]``, ``weight_scale_inv`` fp32 ``[ceil(out/b0), ceil(in/b1)]`` for ``weight_block_size`` (128, 128)
  as DeepSeek-V3 and Qwen3-FP8 ship, a 0-dim fp32 for per-tensor scales, ``activation_scale`` fp32 scalar for the
  static scheme. compressed-tensors FP8 (``compressed_tensors/quantization/lifecycle/initialize.py``): fp8
  ``weight``, ``weight_scale`` (model dtype) and fp8 ``weight_zero_point`` per tensor ``[1]``, per channel
  ``[out, 1]`` or per block, ``input_scale``/``input_zero_point`` for static activations.
* bitsandbytes pre-quantized (``unsloth/*-bnb-4bit``): the :func:`vramplan.dtypes.bnb_4bit_parts` layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError
from .units import ceil_div

#: the ``--quant`` values that are pre-quantized checkpoints' formats (the rest are bitsandbytes')
CHECKPOINT_QUANTS = ("gptq", "awq", "fp8")
#: bits of one int32 packing word (gptqmodel ``pack_dtype=torch.int32``: ``pack_dtype_bits = 32``)
PACK_BITS = 32
#: transformers ``FineGrainedFP8Config.weight_block_size`` default, as DeepSeek-V3 and Qwen3-*-FP8 ship it
FP8_BLOCK = (128, 128)
#: AWQ checkpoint versions planned (AutoAWQ ``version``; gptqmodel ``FORMAT.GEMM``/``GEMV``)
AWQ_VERSIONS = ("gemm", "gemv")


@dataclass(frozen=True)
class Scheme:
    """How a checkpoint's Linear weights are stored (a ``quantization_config``), or what ``--quant`` asks for.

    Attributes:
        quant: vramplan's ``--quant`` value: ``gptq``, ``awq``, ``fp8``, ``nf4``, ``fp4`` or ``int8``.
        method: the config's ``quant_method`` as written (``gptq``, ``awq``, ``fp8``, ``compressed-tensors``,
            ``bitsandbytes``), or ``"--quant"`` for a scheme built from the command line.
        bits, group_size, desc_act, sym: GPTQ/AWQ (``group_size=-1``: one group per input row).
        fmt: GPTQ ``checkpoint_format`` (``gptq``/``gptq_v2``), AWQ ``version`` (``gemm``/``gemv``),
            FP8 ``finegrained`` or ``compressed-tensors``; bitsandbytes ``bnb``.
        zero_point: AWQ ``zero_point``.
        block: FP8 ``weight_block_size``; ``None`` = one scale per tensor (``strategy`` says which otherwise).
        strategy: FP8 scale granularity: ``block``, ``tensor`` or ``channel``.
        static_activations: FP8 ``activation_scheme: static`` (a stored activation scale per Linear).
        skip: modules left unquantized (``modules_to_not_convert``, ``llm_int8_skip_modules``, ``ignore``).
        double_quant, blocksize: bitsandbytes 4-bit ``bnb_4bit_use_double_quant`` and block size (64).
        source: where the scheme was read (``quantization_config of <file>``).
        only: GPTQ ``modules_in_block_to_quantize`` flattened: only block modules whose names end with one of
            these are quantized (optimum ``GPTQQuantizer.convert_model``); empty = every block Linear.
    """

    quant: str
    method: str = "--quant"
    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    fmt: str = ""
    zero_point: bool = True
    block: tuple[int, int] | None = FP8_BLOCK
    strategy: str = "block"
    static_activations: bool = False
    skip: tuple[str, ...] = ()
    double_quant: bool = True
    blocksize: int = 64
    source: str = ""
    only: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``GPTQ 4-bit, group 128`` and the like, for assumptions and warnings."""
        if self.quant == "gptq":
            g = "per column" if self.group_size == -1 else f"group {self.group_size}"
            return (f"GPTQ {self.bits}-bit, {g}{', desc_act' if self.desc_act else ''}"
                    f"{'' if self.sym else ', asymmetric'} ({self.fmt or 'gptq'} format)")
        if self.quant == "awq":
            return f"AWQ {self.bits}-bit, group {self.group_size}, {self.fmt or 'gemm'}" + \
                ("" if self.zero_point else ", no zero point")
        if self.quant == "fp8":
            how = (f"{self.block[0]}x{self.block[1]} blocks" if self.strategy == "block" and self.block
                   else f"per {self.strategy}")
            return f"FP8 e4m3 ({self.fmt or 'finegrained'}, scales {how}" + \
                (", static activation scales)" if self.static_activations else ")")
        if self.quant in ("nf4", "fp4"):
            return f"bitsandbytes {self.quant}{' with double quantization' if self.double_quant else ''}"
        return f"bitsandbytes {self.quant}"


def scheme_for(quant: str, *, bits: int = 4, group_size: int = 128, skip: tuple[str, ...] = (),
               double_quant: bool = True, blocksize: int = 64) -> Scheme:
    """The scheme ``--quant`` asks for on an unquantized config: GPTQ in the gptq_v2 layout without desc_act,
    AWQ GEMM with zero points, FP8 block-wise 128x128 (``FineGrainedFP8Config()`` defaults)."""
    fmt = {"gptq": "gptq", "awq": "gemm", "fp8": "finegrained"}.get(quant, "bnb")
    return Scheme(quant, bits=bits, group_size=group_size, fmt=fmt, skip=tuple(skip), double_quant=double_quant,
                  blocksize=blocksize)


# ------------------------------------------------------------------------------------------ per Linear
def gptq_parts(in_features: int, out_features: int, bits: int, group_size: int) -> dict[str, int]:
    """Bytes of the buffers of one gptqmodel GPTQ quant linear (``_register_gptq_buffers``), bias apart.

    Llama-3-8B ``q_proj`` (4096 -> 4096), 4 bits, group 128: qweight 8,388,608 B, qzeros 65,536 B, scales
    262,144 B, g_idx 16,384 B.
    """
    g = in_features if group_size == -1 else group_size
    groups = ceil_div(in_features, g)
    return {"qweight": ceil_div(in_features * bits, PACK_BITS) * out_features * 4,
            "qzeros": groups * ceil_div(out_features * bits, PACK_BITS) * 4,
            "scales": groups * out_features * 2,
            "g_idx": in_features * 4}


def awq_zeros_width(in_features: int, group_size: int, pack_num: int = 8) -> int:
    """AutoAWQ ``calculate_zeros_width`` (``awq/modules/linear/gemv.py``; gptqmodel ``gemv_awq.py`` alike)."""
    if group_size not in (32, 64) and group_size < 128:
        raise ConfigError(f"AWQ GEMV group_size {group_size} is not supported (AutoAWQ calculate_zeros_width "
                          "takes 32, 64 or >= 128)")
    mult = {64: 2, 32: 4}.get(group_size, 1)
    base = ceil_div(in_features // group_size, pack_num)      # make_divisible(c, divisor) = ceil(c / divisor)
    return ceil_div(base, mult) * mult


def awq_parts(in_features: int, out_features: int, bits: int, group_size: int, version: str = "gemm") -> dict[str, int]:
    """Bytes of the buffers of one AWQ linear, bias apart: GEMM (``AWQuantLinear.__init__``) or GEMV
    (``AwqGEMVQuantLinear``, AutoAWQ ``WQLinear_GEMV``).

    Llama-3-8B ``q_proj``, group 128, GEMM: qweight 8,388,608 B, qzeros 65,536 B, scales 262,144 B.
    """
    g = in_features if group_size == -1 else group_size
    if version == "gemm":
        words = ceil_div(out_features * bits, PACK_BITS)
        return {"qweight": in_features * words * 4, "qzeros": (in_features // g) * words * 4,
                "scales": (in_features // g) * out_features * 2}
    pack = PACK_BITS // bits
    width = awq_zeros_width(in_features, g, pack)
    return {"qweight": out_features * (in_features // pack) * 4, "qzeros": out_features * width * 4,
            "scales": out_features * width * pack * 2}


def fp8_parts(out_features: int, in_features: int, block: tuple[int, int] | None = FP8_BLOCK,
              strategy: str = "block", static_activations: bool = False,
              compressed_tensors: bool = False) -> dict[str, int]:
    """Bytes of one FP8 linear's weight and scales.

    transformers ``FP8Linear``: block-wise ``weight_scale_inv`` fp32 ``[ceil(out/b0), ceil(in/b1)]``, per tensor a
    0-dim fp32 (``torch.tensor(1.0)``); ``activation_scale`` a 0-dim fp32 for the static scheme.
    compressed-tensors (``initialize_module_for_quantization``, 0.20.0): ``weight_scale`` in the model's dtype
    (2 B) and an fp8 ``weight_zero_point`` of the same shape, ``[1]`` per tensor, ``[out, 1]`` per channel,
    ``[ceil(out/b0), ceil(in/b1)]`` per block; static activations add ``input_scale`` (2 B) + ``input_zero_point``
    (1 B). The fp8 weight itself, 1 B per element, either way.
    """
    if strategy == "block" and block is not None:
        n_scales = ceil_div(out_features, block[0]) * ceil_div(in_features, block[1])
    elif strategy == "channel":
        n_scales = out_features
    else:
        n_scales = 1
    parts = {"weight": out_features * in_features}
    if compressed_tensors:
        parts.update(weight_scale=n_scales * 2, weight_zero_point=n_scales)
        if static_activations:
            parts.update(input_scale=2, input_zero_point=1)
        return parts
    parts["weight_scale"] = n_scales * 4
    if static_activations:
        parts["input_scale"] = 4
    return parts


def linear_parts(scheme: Scheme, out_features: int, in_features: int) -> list[tuple[str, int]]:
    """``(component, bytes)`` per allocation of one quantized Linear weight of a pre-quantized format:
    ``weights/quantized`` for the packed codes, ``weights/quant_constants`` for scales, zeros and indices."""
    if scheme.quant == "gptq":
        p = gptq_parts(in_features, out_features, scheme.bits, scheme.group_size)
        packed = p.pop("qweight")
    elif scheme.quant == "awq":
        p = awq_parts(in_features, out_features, scheme.bits, scheme.group_size, scheme.fmt or "gemm")
        packed = p.pop("qweight")
    elif scheme.quant == "fp8":
        p = fp8_parts(out_features, in_features, scheme.block, scheme.strategy, scheme.static_activations,
                      scheme.fmt == "compressed-tensors")
        packed = p.pop("weight")
    else:
        raise ValueError(f"linear_parts: {scheme.quant!r} is not a pre-quantized format ({', '.join(CHECKPOINT_QUANTS)})")
    return [("weights/quantized", packed)] + [("weights/quant_constants", b) for b in p.values()]


def converted(module: str, scheme: Scheme) -> bool:
    """Whether a Linear the converter would take is quantized under ``scheme``'s own lists: outside ``skip``
    and, for GPTQ with ``modules_in_block_to_quantize``, one of those (``name.endswith(layer)``, as optimum)."""
    if scheme.skip and skipped(module, scheme.skip):
        return False
    return not scheme.only or any(module.endswith(x) for x in scheme.only)


def skipped(module: str, skip: tuple[str, ...]) -> bool:
    """transformers ``should_convert_module`` (``quantizers/quantizers_utils.py``): a module is left unquantized
    when a pattern equals its name, is a dotted suffix of it (``lm_head``, ``mlp.gate``) or a dotted prefix."""
    for pat in skip:
        if module == pat or module.endswith("." + pat) or module.startswith(pat + "."):
            return True
    return False


# ------------------------------------------------------------------------------- reading a config.json
def _bool(qc: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    v = qc.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"{source}: quantization_config field '{key}' must be true or false, got {v!r}")
    return v


def _int(qc: Mapping[str, Any], key: str, default: int, source: str, allowed: tuple[int, ...] | None = None) -> int:
    v = qc.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or (allowed is not None and v not in allowed):
        want = f"one of {', '.join(map(str, allowed))}" if allowed else "an integer"
        raise ConfigError(f"{source}: quantization_config field '{key}' must be {want}, got {v!r}")
    return v


def _names(qc: Mapping[str, Any], keys: tuple[str, ...], source: str) -> tuple[str, ...]:
    out: list[str] = []
    for key in keys:
        v = qc.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{source}: quantization_config field '{key}' must be a list of module names, got {v!r}")
        out.extend(x.removeprefix("re:") for x in v)
    return tuple(dict.fromkeys(out))


def _group(qc: Mapping[str, Any], source: str) -> int:
    g = _int(qc, "group_size", 128, source)
    if g != -1 and (g < 1 or g & (g - 1)):
        raise ConfigError(f"{source}: quantization_config group_size must be -1 or a power of two, got {g!r}")
    return g


def scheme_from_config(qc: Any, source: str = "config.json") -> Scheme:
    """The :class:`Scheme` of a checkpoint's ``quantization_config`` (the dict of its ``config.json``).

    Reads what transformers' config classes read (``utils/quantization_config.py``): ``GPTQConfig`` (``bits``,
    ``group_size``, ``desc_act``, ``sym``, ``checkpoint_format``/``format``, ``modules_to_not_convert``),
    ``AwqConfig`` (``bits``, ``group_size``, ``version``/``format``, ``zero_point``), ``FineGrainedFP8Config``
    (``weight_block_size``, ``activation_scheme``), ``BitsAndBytesConfig`` (``load_in_4bit``/``load_in_8bit``,
    ``bnb_4bit_quant_type``, ``bnb_4bit_use_double_quant``, ``llm_int8_skip_modules``) and compressed-tensors'
    ``config_groups`` (fp8 weights only).

    Raises:
        ConfigError: a method vramplan does not plan (hqq, torchao, aqlm, eetq, ...) or a field of the wrong
            type, naming ``source`` and the field.
    """
    where = f"quantization_config of {source}"
    if not isinstance(qc, Mapping):
        raise ConfigError(f"{source}: field 'quantization_config' must be an object, got {type(qc).__name__}")
    method = qc.get("quant_method")
    if method is None and (qc.get("load_in_4bit") or qc.get("load_in_8bit")):
        method = "bitsandbytes"
    if not isinstance(method, str):
        raise ConfigError(f"{source}: quantization_config has no 'quant_method' (gptq, awq, fp8, bitsandbytes or "
                          "compressed-tensors); fix the config")
    method = method.lower()
    if method == "gptq":
        bits = _int(qc, "bits", 4, source, (2, 3, 4, 8))
        fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
        if fmt not in ("gptq", "gptq_v2"):
            raise ConfigError(f"{source}: GPTQ checkpoint_format {fmt!r} is not planned (gptq, gptq_v2)")
        only = qc.get("modules_in_block_to_quantize")
        if only is not None and (not isinstance(only, list) or not all(
                isinstance(g, list) and all(isinstance(x, str) for x in g) for g in only)):
            raise ConfigError(f"{source}: quantization_config field 'modules_in_block_to_quantize' must be a list of "
                              f"lists of module names, got {only!r}")
        return Scheme("gptq", method, bits, _group(qc, source), _bool(qc, "desc_act", False, source),
                      _bool(qc, "sym", True, source), fmt,
                      skip=_names(qc, ("modules_to_not_convert",), source), source=where,
                      only=tuple(x for g in only for x in g) if only else ())
    if method == "awq":
        bits = _int(qc, "bits", qc.get("w_bit") or 4, source, (4,))
        fmt = str(qc.get("version") or qc.get("format") or "gemm").lower()
        if fmt not in AWQ_VERSIONS:
            raise ConfigError(f"{source}: AWQ version {fmt!r} is not planned (gemm, gemv)")
        group = qc.get("group_size", qc.get("q_group_size", 128))
        return Scheme("awq", method, bits, _group({"group_size": group}, source), fmt=fmt,
                      zero_point=_bool(qc, "zero_point", True, source),
                      skip=_names(qc, ("modules_to_not_convert",), source), source=where)
    if method == "fp8":
        block = qc.get("weight_block_size", list(FP8_BLOCK))
        if block is not None and (not isinstance(block, (list, tuple)) or len(block) != 2
                                  or not all(type(b) is int and b > 0 for b in block)):
            raise ConfigError(f"{source}: quantization_config weight_block_size must be two positive integers "
                              f"such as [128, 128], or null, got {block!r}")
        return Scheme("fp8", method, 8, fmt="finegrained", block=tuple(block) if block else None,
                      strategy="block" if block else "tensor",
                      static_activations=qc.get("activation_scheme", "dynamic") == "static",
                      skip=_names(qc, ("modules_to_not_convert",), source), source=where)
    if method == "bitsandbytes":
        skip = _names(qc, ("llm_int8_skip_modules", "modules_to_not_convert"), source)
        if qc.get("load_in_4bit"):
            qt = str(qc.get("bnb_4bit_quant_type") or "fp4").lower()      # BitsAndBytesConfig default: fp4
            if qt not in ("nf4", "fp4"):
                raise ConfigError(f"{source}: bnb_4bit_quant_type {qt!r} is not nf4 or fp4")
            return Scheme(qt, method, 4, fmt="bnb", skip=skip, source=where,
                          double_quant=_bool(qc, "bnb_4bit_use_double_quant", False, source))
        if qc.get("load_in_8bit"):
            return Scheme("int8", method, 8, fmt="bnb", skip=skip, source=where)
        raise ConfigError(f"{source}: a bitsandbytes quantization_config with neither load_in_4bit nor load_in_8bit")
    if method == "compressed-tensors":
        return _compressed_tensors(qc, source, where)
    raise ConfigError(f"{source}: quantization_config quant_method {method!r} is not planned yet (vramplan plans "
                      "gptq, awq, fp8, bitsandbytes and compressed-tensors fp8 checkpoints)")


def _compressed_tensors(qc: Mapping[str, Any], source: str, where: str) -> Scheme:
    """compressed-tensors ``config_groups``: one group of fp8 (``num_bits: 8, type: float``) weights."""
    groups = qc.get("config_groups")
    if not isinstance(groups, Mapping) or len(groups) != 1:
        raise ConfigError(f"{source}: compressed-tensors config_groups with {len(groups) if isinstance(groups, Mapping) else 'no'} "
                          "groups: vramplan plans one group of fp8 weights")
    (g,) = groups.values()
    w = g.get("weights") if isinstance(g, Mapping) else None
    if not isinstance(w, Mapping) or w.get("num_bits") != 8 or w.get("type") != "float":
        raise ConfigError(f"{source}: compressed-tensors weights {w!r} are not fp8 (num_bits 8, type float): "
                          "only fp8 compressed-tensors checkpoints are planned")
    strategy = str(w.get("strategy") or "tensor")
    if strategy not in ("tensor", "channel", "block"):
        raise ConfigError(f"{source}: compressed-tensors fp8 strategy {strategy!r} is not planned (tensor, channel, block)")
    block = tuple(w["block_structure"]) if strategy == "block" and w.get("block_structure") else None
    if strategy == "block" and block is None:
        block = FP8_BLOCK
    acts = g.get("input_activations") if isinstance(g, Mapping) else None
    static = isinstance(acts, Mapping) and acts.get("dynamic") is False
    return Scheme("fp8", "compressed-tensors", 8, fmt="compressed-tensors", block=block, strategy=strategy,
                  static_activations=static, skip=_names(qc, ("ignore",), source), source=where)


def with_skip(scheme: Scheme, extra: tuple[str, ...]) -> Scheme:
    """``scheme`` with more modules left unquantized (``--quant-skip`` on top of the checkpoint's list)."""
    return replace(scheme, skip=tuple(dict.fromkeys((*scheme.skip, *extra)))) if extra else scheme


# ------------------------------------------------------------------------------------------ in a plan
#: ``quantization_method`` values whose parameters ``peft.prepare_model_for_kbit_training`` does not upcast to
#: fp32 (``peft/utils/other.py``: ``not is_gptq_quantized and not is_aqlm_quantized ...``; AWQ and FP8 models
#: are upcast like bitsandbytes ones, their packed buffers and fp8 weights are not fp16/bf16 parameters)
KBIT_UPCAST_SKIPPED = ("gptq",)
#: ``quantization_method`` values for which ``prepare_model_for_kbit_training(use_gradient_checkpointing=True)``
#: enables checkpointing and input gradients (``loaded_in_kbit or is_gptq_quantized or ...``): not AWQ, not FP8
KBIT_CHECKPOINTING = ("nf4", "fp4", "int8", "gptq")


def checkpoint_scheme(config: Mapping[str, Any] | None, source: str = "config.json") -> Scheme | None:
    """The scheme of a config's ``quantization_config`` (top level, or a multimodal ``text_config``'s), or
    ``None`` for an unquantized checkpoint."""
    if not config:
        return None
    qc = config.get("quantization_config")
    if qc is None and isinstance(config.get("text_config"), Mapping):
        qc = config["text_config"].get("quantization_config")
    return None if qc is None else scheme_from_config(qc, source)


def setup_scheme(setup: Any, config: Mapping[str, Any] | None) -> Scheme:
    """The scheme a quantized ``setup`` stores its Linear weights in: the checkpoint's own (``config``'s
    ``quantization_config``) when it is of ``setup.quant``, else what ``--quant`` and its options ask for;
    ``--quant-skip`` adds to the checkpoint's skip list."""
    ckpt = checkpoint_scheme(config)
    if ckpt is not None and ckpt.quant == setup.quant:
        return with_skip(ckpt, tuple(setup.quant_skip))
    return scheme_for(setup.quant, bits=setup.quant_bits, group_size=setup.quant_group, skip=tuple(setup.quant_skip),
                      double_quant=setup.double_quant, blocksize=setup.quant_blocksize)


def checkpoint_setup(config: Mapping[str, Any] | None, setup: Any, source: str = "config.json"
                     ) -> tuple[Any, list[str], list[str]]:
    """``setup`` as it runs on a pre-quantized checkpoint, with the assumptions and warnings that say so.

    A checkpoint's ``quantization_config`` decides how its weights are stored: transformers' ``from_pretrained``
    keeps it and ignores a ``quantization_config`` passed for a different method, with a warning
    (``quantizers/auto.py::AutoHfQuantizer.merge_quantization_configs``: "the `quantization_config` from the
    model will be used"). So the checkpoint's quantization replaces ``--quant none`` and wins over a conflicting
    ``--quant`` (a warning, as transformers gives). ``--method full`` on it is refused, as the HF Trainer refuses
    to fine-tune a purely quantized model.

    Raises:
        SetupError: ``--method full`` on a quantized checkpoint.
    """
    ckpt = checkpoint_scheme(config, source)
    if ckpt is None:
        return setup, [], []
    from .errors import SetupError

    if setup.method == "full":
        raise SetupError(f"--method full cannot train the pre-quantized checkpoint ({ckpt.label}, "
                         f"{ckpt.source}): the HF Trainer refuses to fine-tune purely quantized models; use "
                         "--method qlora (LoRA on the quantized base) or an unquantized checkpoint")
    warnings: list[str] = []
    if setup.quant not in ("none", ckpt.quant):
        default = " (--method qlora's default)" if setup.method == "qlora" and setup.quant == "nf4" else ""
        warnings.append(f"--quant {setup.quant}{default} not used: the checkpoint is already quantized ({ckpt.label}) and "
                        "transformers loads it as stored, ignoring a quantization_config passed for another method "
                        "(quantizers/auto.py merge_quantization_configs)")
    changes: dict[str, Any] = {"quant": ckpt.quant}
    if ckpt.quant in ("gptq", "awq"):
        if setup.quant == ckpt.quant and (setup.quant_bits, setup.quant_group) != (ckpt.bits, ckpt.group_size) \
                and (setup.quant_bits, setup.quant_group) != (4, 128):
            warnings.append(f"--quant-bits {setup.quant_bits} / --quant-group {setup.quant_group} not used: the "
                            f"checkpoint stores {ckpt.bits} bits in groups of {ckpt.group_size}")
        changes.update(quant_bits=ckpt.bits, quant_group=ckpt.group_size)
    if ckpt.quant in ("nf4", "fp4"):
        changes.update(double_quant=ckpt.double_quant, quant_blocksize=ckpt.blocksize)
    skip = tuple(dict.fromkeys((*ckpt.skip, *setup.quant_skip)))
    if skip != tuple(setup.quant_skip):
        changes["quant_skip"] = skip
    new = setup.with_(**changes)
    assumptions = [f"pre-quantized checkpoint: {ckpt.label} as stored ({ckpt.source})"
                   + (", used since --quant was not given" if setup.quant == "none" else "")
                   + (f"; left unquantized: {', '.join(ckpt.skip)}" if ckpt.skip else "")]
    return new, assumptions, warnings


def kernel_notes(scheme: Scheme, *, training: bool) -> tuple[list[str], list[str]]:
    """What the estimate assumes about the GPTQ/AWQ/FP8 kernels that run (assumptions) and what it does not
    model (warnings). Which GPTQ/AWQ kernel runs on the card and the buffers it allocates are
    :mod:`vramplan.estimate.quant_kernels`' (gptqmodel 7.7.0's auto selection, ``utils/importer.py``); this says
    what holds whatever the card: the training backend and transformers 5.24's ``fp8_linear`` dispatch."""
    a: list[str] = []
    w: list[str] = []
    if scheme.quant == "gptq":
        if training:
            a.append("GPTQ training: TritonV2Linear in train mode runs TorchLinear.forward (gptqmodel 7.7.0 "
                     "tritonv2.py:179-180): each call dequantizes the whole weight (in x out, the input's dtype) "
                     "and torch.matmul saves it for the input's gradient (torch.py:369-376): a saved activation "
                     "of its layer (kept for backward, or made again when a checkpointed layer is recomputed)")
            w.append("GPTQ training needs GPTQConfig(backend='auto_trainable') (or 'torch'/'triton'): the default "
                     "'auto' selects Machete, Marlin or ExllamaV2, which raise NotImplementedError in train mode "
                     "(SUPPORTS_TRAINING = False)")
        else:
            a.append("GPTQ inference: the fused kernels (Machete, Marlin, ExllamaV2) make no dequantized weight in "
                     "HBM except ExllamaV2 above 50 rows, which reconstructs it into its preallocated scratch")
            w.append("GPTQ post_init transients at load (repacked copies of one layer, ExllamaV2's cudaMalloc of "
                     "one qweight in make_sequential, Machete's int32-unpacked weight) are not in the load phase")
    elif scheme.quant == "awq":
        a.append("AWQ: transformers casts a bf16 model to fp16 on CUDA (quantizer_awq.update_dtype); same bytes")
        if training:
            a.append("AWQ training kernel: gptqmodel AwqGEMMLinear (AwqGemmFn): forward dequantizes the weight "
                     "(in x out x 2 B) above 1,024 rows, backward always (gemm_awq.py)")
            w.append("AWQ training needs AwqConfig(backend='auto_trainable') (or 'gemm'): the default 'auto' selects "
                     "Machete-AWQ, Marlin-AWQ or ExllamaV2-AWQ, which raise NotImplementedError in train mode")
        else:
            a.append("AWQ inference: the fused kernels (Machete-AWQ, Marlin-AWQ, ExllamaV2-AWQ) make no dequantized "
                     "weight; the GEMM kernel does above 1,024 rows (counted as its per-call scratch)")
    elif scheme.quant == "fp8":
        if training:
            a.append("FP8 training: FP8LinearFunction saves the fp8 weight and its scales only; backward "
                     "dequantizes the weight to the gradient's dtype, in x out x 2 B (integrations/finegrained_fp8.py)")
        else:
            a.append("FP8 inference: DeepGEMM (Hopper, 128x128 blocks) or the Triton finegrained-fp8 kernel, "
                     "activation quantization fused: no dequantized weight")
        w.append("FP8 kernels need compute capability 8.9+ (Ada, Hopper); the fused kernels' scratch is not counted")
        if scheme.fmt == "compressed-tensors":
            w.append("compressed-tensors fp8 runs through transformers' CompressedTensorsHfQuantizer: its "
                     "layouts are counted from compressed_tensors 0.20 initialize_qparams; kernel temporaries "
                     "not modelled")
    return a, w


def check_lora_targets(setup: Any) -> None:
    """PEFT's ``target_modules="all-linear"`` collects ``torch.nn.Linear`` and ``Conv1D`` modules only
    (peft 0.21.2 ``tuners_utils._maybe_include_all_linear_layers``); gptqmodel's GPTQ and AWQ quant linears are
    ``nn.Module``s, so on a fully quantized GPTQ/AWQ model it finds nothing and ``get_peft_model`` raises
    ``NoMatchingPeftModuleError`` (measured: optimum 2.3.0 ``convert_model`` on a 2-layer Llama, then
    ``get_peft_model(LoraConfig(target_modules="all-linear"))``; ``["q_proj", "v_proj"]`` works and trains as
    many parameters as on the 16-bit model). FP8Linear and bitsandbytes' layers subclass ``nn.Linear``.

    Raises:
        SetupError: all-linear LoRA on a GPTQ/AWQ base with every block Linear quantized.
    """
    lora = getattr(setup, "lora", None)
    if lora is None or setup.quant not in ("gptq", "awq") or tuple(lora.targets or ()) != ("all-linear",):
        return
    if setup.quant_skip:
        return          # the unquantized Linears are matched; what PEFT then adapts is those only
    from .errors import SetupError

    raise SetupError(f"--targets all-linear on a --quant {setup.quant} base: PEFT's all-linear matches nn.Linear "
                     "modules only and gptqmodel's quant linears are not, so get_peft_model raises "
                     "NoMatchingPeftModuleError; name the modules, e.g. --targets "
                     "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
