"""Logits and the loss: what the causal-LM loss saves for backward and what it allocates around it.

One home for the rules the estimator (``estimator.py``), the sweep's evaluator (``grid.py``) and the simulation's
comparison (``simulate/compare.py``) all need. Plain integers in and out: :func:`loss_bytes` runs once per
sweep row, so the loss kind travels as a small integer (:func:`loss_code`; ``False``/``True`` still mean
standard/Liger, as before the stacks' losses existed).

The kinds (``--loss``), each with the code it follows:

* ``standard``: transformers ``loss/loss_utils.py::ForCausalLMLoss`` (the HF Trainer);
* ``chunked``: Liger-Kernel fused linear cross-entropy (``liger_kernel/ops/fused_linear_cross_entropy.py``);
* ``torchtune-chunked``: torchtune 0.6.1 ``CEWithChunkedOutputLoss(num_output_chunks=8)`` on the decoder's
  chunked output (``modules/transformer.py:482-501 chunked_output``), logits deleted before backward
  (``recipes/lora_finetune_single_device.py:656-659``);
* ``litgpt-chunked``: litgpt 0.5.13 ``model(input_ids, lm_head_chunk_size=128)`` + ``utils.py:302-330
  chunked_cross_entropy``; the ``logits`` list stays a live local through backward and ``optimizer.step()``
  (``finetune/lora.py:355-366``), and in the next step's forward until it is rebound;
* ``litgpt-full``: litgpt 0.5.13 ``finetune/full.py:282-284``: ``model(input_ids)`` makes one batch × seq × vocab
  logits tensor (no ``lm_head_chunk_size``), ``chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])``
  flattens the shifted logits (``reshape(-1, V)``: a copy when batch > 1) and splits them into 128-row chunks; the
  ``logits`` local lives through backward and ``optimizer.step()``;
* ``trl-fused``: trl 1.16.0 ``add_fused_lm_head`` (``trainer/utils.py:1548-1698``) through
  ``kernels/chunked_logprob.py:299-465 ChunkedLogProbFunction``, its Triton path (CUDA): tiles of
  ``min(N, 4096)`` tokens × 32,768 vocabulary columns, no ``N × V`` tensor.

Where the chunked losses allocate in backward: autograd runs the ready node with the highest sequence number
first (``torch/csrc/autograd/engine.cpp`` ``CompareNodeTaskTime``), so the loss's nodes of every chunk (created
after the model's head matmuls) run before any head matmul's backward, and the chunks' logits gradients pile up
while the saved log-probs are freed chunk by chunk: the peak is at the first chunk or two backward visits
(measured on CPU, ``tests/estimate/test_loss_kinds.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ..dtypes import BYTES, alloc
from ..shapes.spec import ModelSpec
from ..units import ceil_div
from ..versions import predates

_new = tuple.__new__     # builds the NamedTuple without its Python-level __new__ (called once per sweep row)

#: the ``--loss`` kinds, in the order of their codes (:func:`loss_code`)
LOSS_KINDS = ("standard", "chunked", "torchtune-chunked", "litgpt-chunked", "trl-fused")
STANDARD, LIGER, TORCHTUNE, LITGPT, TRL = range(5)
#: the standard loss as older transformers releases run it (``versions.CHANGES``; codes, not ``--loss`` kinds):
#: before 4.49.0 ``ForCausalLMLoss`` shifts the fp32 logits (``logits[..., :-1, :].contiguous()``, a copy at
#: batch > 1; 4.48.3 loss/loss_utils.py:36-39); before 4.46.0 the model's own forward upcasts them, so the fp32
#: logits are the model output and the 16-bit ones are freed at once (4.44.2 models/llama/modeling_llama.py:1208-1215)
STANDARD_SHIFTED, STANDARD_FP32_OUTPUT = 5, 6
#: LitGPT full fine-tuning's loss (``--loss litgpt-full``: :func:`litgpt_full_loss_bytes`), a kind with a code after
#: the transformers-release variants'; :func:`loss_code` takes its name
LITGPT_FULL = 7
LATER_KINDS = {"litgpt-full": LITGPT_FULL}

#: torchtune 0.6.1 ``CEWithChunkedOutputLoss.__init__(num_output_chunks=8)`` (``modules/loss/ce_chunked_output_loss.py:30``)
TORCHTUNE_CHUNKS = 8
#: litgpt 0.5.13 ``finetune/lora.py:355`` ``model(input_ids, lm_head_chunk_size=128)``
LITGPT_CHUNK_TOKENS = 128
#: trl 1.16.0 ``kernels/chunked_logprob.py:31 TOKEN_CHUNK_SIZE`` and ``trainer/utils.py:1506 _CHUNKED_LOGPROB_CHUNK_SIZE``
TRL_TILE_TOKENS, TRL_TILE_VOCAB = 4096, 32768
#: fp32 vectors of N elements alive at once in ``ChunkedLogProbFunction.forward`` (``chunked_logprob.py:340-383``):
#: the seven running statistics, ``log(sum_exp)``, ``log_z``, the log-probs, ``x_sum_exp / sum_exp`` and the entropy
#: being built (measured: 11 × 4,096 B at N = 1,000, ``tests/estimate/test_loss_kinds.py``)
TRL_FWD_VECTORS = 11


def logits_positions(seq: int, prompt: int, keep: bool) -> int:
    """Positions per sequence whose logits the forward computes, of ``seq``, when the first ``prompt`` labels are
    masked (-100) and ``keep`` (``--logits-to-keep``) computes them from the first supervised label on, as ms-swift
    4.6.0 ``SwiftMixin.prepare_logits_to_keep`` (``trainers/mixin.py:1271-1293``) asks the model: several rows keep
    the last ``seq - first_label + 1`` positions (``logits_to_keep`` an int: ``hidden_states[:, -k:, :]``), one row
    those whose next label is supervised plus the last (a bool mask, the same count here). No masked label, or no
    supervised one (``argmax`` finds none): every position."""
    if not keep or prompt <= 1 or prompt >= seq:
        return seq
    return seq - prompt + 1


class LossBytes(NamedTuple):
    """Bytes of the loss at one point, allocator-rounded."""

    saved: int          # held from the end of forward to the loss's backward (log-probs, tanh output, ...)
    forward_tmp: int    # transient while the loss runs in forward
    backward_tmp: int   # transient at the first backward node (gradients of the log-probs and the logits)


def loss_code(kind: str, versions: Mapping[str, tuple[str, str]] | None = None) -> int:
    """The integer :func:`loss_bytes` takes for a ``--loss`` value, and for ``standard`` the transformers release
    it runs on (``versions`` as :func:`vramplan.versions.modelled_versions` gives them; ``None``: the current one).

    Raises:
        ValueError: an unknown kind, with the choices.
    """
    if kind in LATER_KINDS:
        return LATER_KINDS[kind]
    try:
        code = LOSS_KINDS.index(kind)
    except ValueError:
        raise ValueError(f"--loss {kind!r} is not a loss kind; choose one of "
                         f"{', '.join((*LOSS_KINDS, *LATER_KINDS))}") from None
    if code == STANDARD and versions:
        if predates(versions, "transformers", "4.46.0"):
            return STANDARD_FP32_OUTPUT
        if predates(versions, "transformers", "4.49.0"):
            return STANDARD_SHIFTED
    return code


def final_logit_softcapping(spec: ModelSpec) -> bool:
    """Gemma-2/3 ``final_logit_softcapping``: logits / cap -> tanh -> * cap before the loss; tanh saves its
    output (transformers ``models/gemma2/modeling_gemma2.py::Gemma2ForCausalLM.forward``; measured in
    ``tests/estimate`` and by the simulation)."""
    return spec.model_type.startswith("gemma") and bool(spec.config.get("final_logit_softcapping"))


def chunk_rows(tokens: int, vocab: int, hidden: int) -> int:
    """Rows of one Liger-Kernel fused-linear-cross-entropy chunk: ``ceil(BT / ceil(V/H))`` rounded up to a
    power of two, at most ``BT`` (``liger_kernel/ops/fused_linear_cross_entropy.py``)."""
    chunk = 1 << max(0, (ceil_div(tokens, ceil_div(vocab, hidden)) - 1).bit_length())
    return min(chunk, tokens)


def _seq_chunks(seq: int, size: int) -> tuple[int, int, int]:
    """``(n, full, last)``: ``seq`` positions split into ``n`` chunks of ``full`` positions, the last one ``last``
    (``torch.split(size)``; ``torch.chunk(k)`` is ``split(ceil(seq/k))``)."""
    n = ceil_div(seq, size)
    return n, size, seq - size * (n - 1)


def loss_bytes(tokens: int, vocab: int, hidden: int, logits_bytes: int, compute_bytes: int, kind: int,
               softcap: bool, autocast: bool = False, hidden_bytes: int = 0, head_bytes: int = 0,
               head_trainable: bool = False, *, seq: int = 0) -> LossBytes:
    """The loss's memory at ``tokens`` = batch × seq (``seq`` positions per sequence; 0: one sequence).

    Args:
        tokens: batch × seq.
        vocab, hidden: the head's shape.
        logits_bytes: bytes of one logit as the head produces it.
        compute_bytes: bytes of the compute dtype.
        kind: :func:`loss_code` of the ``--loss`` kind (``False``/``True``: standard/Liger).
        softcap: Gemma's final logit softcapping (the standard loss only).
        autocast: the forward runs under autocast (LitGPT ``bf16-mixed``: ``log_softmax`` autocasts to fp32).
        hidden_bytes, head_bytes, head_trainable: the final hidden states' and the head weight's element bytes
            and whether the head trains (the TRL fused head reads them; 0: ``compute_bytes``).
        seq: positions per sequence (the stacks chunk along the sequence).

    The kinds:

    * standard (transformers ``loss/loss_utils.py::ForCausalLMLoss`` -> ``nn.functional.cross_entropy``):
      logits in the logits dtype (``logits_bytes`` B each), ``logits.float()`` (a new fp32 copy unless they
      are fp32 already), log_softmax's saved fp32 output (+ tanh's saved output under softcapping); backward
      starts with the fp32 gradients of the log-probs and of the logits;
    * chunked (Liger-Kernel ``FusedLinearCrossEntropy``): :func:`chunk_rows` tokens at a time × vocab in fp32;
      the input gradient (tokens × hidden × ``compute_bytes``) is computed in forward and kept;
    * torchtune-chunked: 8 chunks along the sequence; forward holds every chunk (the model output), the saved
      fp32 log-probs of every chunk and one chunk's ``.float()`` copy; the chunks are deleted before backward,
      which starts with one chunk's two fp32 gradients;
    * litgpt-chunked: 128-position chunks, the last one shortened by the label shift; log_softmax saves its
      output in the logits dtype (fp32 under autocast, plus one chunk's fp32 copy in forward); ``reshape`` copies
      the shifted last chunk when batch > 1; backward starts with one chunk's two gradients. The chunks
      themselves are :func:`logits_kept`;
    * trl-fused: N = batch × (seq − 1) label positions (all valid: an upper bound); saved ``targets`` (int64),
      ``log_z`` and the entropy (fp32 N each), the label mask (bool) and the compacted hidden states ``hidden[mask]`` (N × hidden), which stand in
      for the head's saved matmul input (the head trace keeps only the final norm's saves); forward: the projection buffer ``min(N, 4096) × 32,768`` in the matmul dtype (``:347``), casts of the hidden
      chunk and weight tile when their dtype differs, :data:`TRL_FWD_VECTORS` fp32 vectors; backward: the fp32
      ``grad_hidden`` accumulator, its cast back, the tile, the weight tile's cast and, when the head trains, its
      fp32 gradient accumulator and cast.
    """
    if kind == STANDARD:
        saved = alloc(tokens * vocab * 4)
        if softcap:
            saved += alloc(tokens * vocab * logits_bytes)
        fwd = alloc(tokens * vocab * logits_bytes) + (alloc(tokens * vocab * 4) if logits_bytes != 4 else 0)
        return _new(LossBytes, (saved, fwd, 2 * alloc(tokens * vocab * 4)))
    if kind in (STANDARD_SHIFTED, STANDARD_FP32_OUTPUT):
        s = seq or tokens
        b = tokens // s
        rows = b * (s - 1) if s > 1 else tokens                     # the shifted positions
        saved = alloc(rows * vocab * 4) + (alloc(tokens * vocab * logits_bytes) if softcap else 0)
        shifted = alloc(rows * vocab * 4) if b > 1 else 0           # at batch 1 the slice is contiguous: a view
        if kind == STANDARD_FP32_OUTPUT:        # the 16-bit logits are gone once the forward's .float() returns
            fwd = alloc(tokens * vocab * 4) + shifted
        else:
            fwd = alloc(tokens * vocab * logits_bytes) + (alloc(tokens * vocab * 4) if logits_bytes != 4 else 0) \
                + shifted
        # backward: the log-probs' fp32 gradient, then slice_backward's zero-filled fp32 tensor of every position
        return _new(LossBytes, (saved, fwd, alloc(rows * vocab * 4) + alloc(tokens * vocab * 4)))
    if kind == LIGER:
        chunk = chunk_rows(tokens, vocab, hidden)
        return _new(LossBytes, (alloc(tokens * hidden * compute_bytes),
                                alloc(chunk * vocab * 4) * 2 + alloc(chunk * vocab * logits_bytes), 0))
    s = seq or tokens
    b = tokens // s
    if kind == TORCHTUNE:
        # labels.chunk(8, dim=1) / last_hidden_state.chunk(8, dim=1): split(ceil(s/8)) along the sequence
        n, full, last = _seq_chunks(s, ceil_div(s, TORCHTUNE_CHUNKS))
        f32_full, f32_last = alloc(4 * b * full * vocab), alloc(4 * b * last * vocab)
        saved = (n - 1) * f32_full + f32_last
        chunks = (n - 1) * alloc(logits_bytes * b * full * vocab) + alloc(logits_bytes * b * last * vocab)
        upcast = logits_bytes != 4          # .float() of fp32 logits returns them: no copy
        # the last chunk's copy with every log-prob saved, or the one before with the last chunk's still to come
        fwd = chunks + (max(f32_last, f32_full - f32_last if n > 1 else 0) if upcast else 0)
        # backward visits the last chunk first: its two fp32 gradients; then the one before, with the last
        # chunk's log-probs freed and its gradient (logits dtype) kept
        grad_last = alloc(logits_bytes * b * last * vocab) if upcast else f32_last
        bwd = max(2 * f32_last, 2 * f32_full - f32_last + grad_last if n > 1 else 0)
        return _new(LossBytes, (saved, fwd, bwd))
    if kind == LITGPT:
        n, full, last = _seq_chunks(s, LITGPT_CHUNK_TOKENS)
        used = last - 1 if n > 1 or s > 1 else last          # logits[-1][..., :-1, :] (finetune/lora.py:356)
        out = 4 if autocast else logits_bytes                 # log_softmax's output dtype
        o_full, o_last = alloc(out * b * full * vocab), alloc(out * b * used * vocab)
        saved = (n - 1) * o_full + o_last
        # reshape(-1, V) of the shifted last chunk copies it when batch > 1 (a non-contiguous view); the list
        # holding it lives until chunked_cross_entropy returns
        fwd = alloc(logits_bytes * b * used * vocab) if b > 1 else 0
        if autocast and logits_bytes != 4:                    # each chunk's fp32 copy, freed after log_softmax
            fwd += max(o_last, o_full - o_last if n > 1 else 0)
        grad_last = alloc(logits_bytes * b * used * vocab)
        bwd = max(2 * o_last, 2 * o_full - o_last + grad_last if n > 1 else 0)
        return _new(LossBytes, (saved, fwd, bwd))
    if kind == LITGPT_FULL:
        return litgpt_full_loss_bytes(b, s, vocab, logits_bytes, autocast)
    if kind == TRL:
        N = b * (s - 1) if s > 1 else tokens
        hb = hidden_bytes or compute_bytes
        wb = head_bytes or compute_bytes
        mm = compute_bytes if autocast else hb                # chunked_logprob.py:329-331 compute_dtype
        rows = min(N, TRL_TILE_TOKENS)
        tile = alloc(rows * TRL_TILE_VOCAB * mm)              # mm_buf is chunk_size wide even when V is smaller
        # `hidden_chunk = hidden[...].to(dtype)` / `w_chunk = weight[...].to(dtype)` in a loop: the previous
        # chunk's cast lives until the next one is bound (the forward casts the weight tile inside the mm call)
        h_cast = (alloc(rows * hidden * mm) + (alloc(min(N - rows, rows) * hidden * mm) if N > rows else 0)
                  if hb != mm else 0)
        w_cast = alloc(min(vocab, TRL_TILE_VOCAB) * hidden * mm) if wb != mm else 0
        w_cast2 = (alloc(min(vocab - TRL_TILE_VOCAB, TRL_TILE_VOCAB) * hidden * mm)
                   if wb != mm and vocab > TRL_TILE_VOCAB else 0)
        # + the bool label mask hidden[mask] saves, and the compacted hidden states ChunkedLogProbFunction saves
        # (kernels/chunked_logprob.py:386), alive through backward (measured, tests/estimate/test_stack_trl_cpu.py)
        saved = alloc(8 * N) + 2 * alloc(4 * N) + alloc(N) + alloc(N * hidden * hb)
        fwd = tile + TRL_FWD_VECTORS * alloc(4 * N) + w_cast + h_cast
        bwd = (alloc(N * hidden * 4) + (alloc(N * hidden * hb) if hb != 4 else 0) + tile + h_cast + w_cast
               + w_cast2 + alloc(4 * N))
        if head_trainable:
            bwd += alloc(vocab * hidden * 4) + (alloc(vocab * hidden * wb) if wb != 4 else 0)
        return _new(LossBytes, (saved, fwd, bwd))
    raise ValueError(f"loss kind code {kind!r} is not one of 0..{len(LOSS_KINDS) - 1} ({', '.join(LOSS_KINDS)})")


def litgpt_full_loss_bytes(batch: int, seq: int, vocab: int, logits_bytes: int, autocast: bool = False) -> LossBytes:
    """LitGPT full fine-tuning's loss (``--loss litgpt-full``): litgpt 0.5.13 ``finetune/full.py:282-284`` on the
    whole ``batch × seq × vocab`` logits (kept alive by the loop: :func:`logits_kept`), ``utils.py:302-350
    chunked_cross_entropy`` on a tensor.

    * rows: the ``R = batch·(seq − 1)`` shifted positions, flattened and split into 128-row chunks across sequence
      boundaries (``logits.reshape(-1, V).split(128)``), the last one ``R − 128·(n − 1)`` rows;
    * saved: each chunk's ``log_softmax`` output, in the logits dtype (fp32 under autocast);
    * forward: the ``reshape`` copy of every shifted logit when batch > 1 (``logits[..., :-1, :]`` is then not
      contiguous; at batch 1 it is a view), alive until the loss returns, and under autocast one chunk's fp32 copy;
    * backward: the chunks' nodes run first (highest sequence numbers): one chunk's two gradients, then the one
      before's with the last chunk's gradient (in the logits dtype) piled up; once every chunk ran, ``SplitBackward``
      concatenates their gradients (``R·V``, all chunk gradients still alive) and ``SliceBackward`` allocates the
      zero-filled ``batch·seq·V`` gradient of the unshifted logits while the concatenation is alive — both after
      the saved log-probs are freed, so the transient is that moment less them when it is the larger.

    Measured on CPU with litgpt 0.5.13 (``benchmarks/frameworks/litgpt_full_logits.py``, five cases within 0.04 %:
    ``tests/estimate/test_litgpt_full_logits.py``).
    """
    rows = batch * (seq - 1) if seq > 1 else batch * seq
    n, full, last = _seq_chunks(rows, LITGPT_CHUNK_TOKENS)
    out = 4 if autocast else logits_bytes                       # log_softmax's output dtype
    o_full, o_last = alloc(out * full * vocab), alloc(out * last * vocab)
    saved = (n - 1) * o_full + o_last
    fwd = alloc(logits_bytes * rows * vocab) if batch > 1 else 0
    if autocast:                                                # each chunk's fp32 copy, freed after log_softmax
        fwd += max(o_last, o_full - o_last if n > 1 else 0)
    g_full, g_last = alloc(logits_bytes * full * vocab), alloc(logits_bytes * last * vocab)
    first = max(2 * o_last, 2 * o_full - o_last + g_last if n > 1 else 0)
    grads = (n - 1) * g_full + g_last
    cat = alloc(logits_bytes * rows * vocab)
    after = max(grads + cat, cat + alloc(logits_bytes * batch * seq * vocab))     # SplitBackward, SliceBackward
    return _new(LossBytes, (saved, fwd, max(first, after - saved)))


def logits_kept(tokens: int, vocab: int, logits_bytes: int, kind: int, *, seq: int = 0) -> int:
    """Logits alive in every phase of the step: LitGPT's ``logits`` list (``finetune/lora.py:355-366``: a local
    through ``fabric.backward`` and ``optimizer.step()``, and through the next forward until it is rebound);
    LitGPT full fine-tuning's one logits tensor (``finetune/full.py:282-284``, the same loop); 0 for the other kinds
    (the HF Trainer drops the outputs, torchtune deletes them, the fused heads make none)."""
    return sum(logits_kept_blocks(tokens, vocab, logits_bytes, kind, seq=seq))


def logits_kept_blocks(tokens: int, vocab: int, logits_bytes: int, kind: int, *, seq: int = 0) -> tuple[int, ...]:
    """The allocations of :func:`logits_kept`, one per tensor: LitGPT's list holds one ``lm_head`` output per
    128-position chunk of every sequence (litgpt 0.5.13 ``model.py:177-179`` ``x.split(lm_head_chunk_size, dim=1)``;
    ``finetune/lora.py:357`` rebinds the last one to a view of itself), full fine-tuning one tensor."""
    if kind == LITGPT_FULL:
        return (alloc(logits_bytes * tokens * vocab),)
    if kind != LITGPT:
        return ()
    s = seq or tokens
    b = tokens // s
    n, full, last = _seq_chunks(s, LITGPT_CHUNK_TOKENS)
    return (alloc(logits_bytes * b * full * vocab),) * (n - 1) + (alloc(logits_bytes * b * last * vocab),)


def loss_formula(spec: ModelSpec, tokens: int, logits_dtype: str, compute_dtype: str, kind: int | bool,
                 seq: int = 0, autocast: bool = False) -> str:
    """The explanation of :func:`loss_bytes` with its numbers."""
    V = spec.vocab_size
    kind = int(kind)
    s = seq or tokens
    if kind == LIGER:
        chunk = chunk_rows(tokens, V, spec.hidden_size)
        return (f"chunked loss (Liger-Kernel FusedLinearCrossEntropy): logits of {chunk:,} tokens at a "
                f"time × vocab {V:,} in fp32, never all {tokens:,}; the input gradient "
                f"(tokens × hidden × {BYTES[compute_dtype]} B) is computed in forward and kept")
    if kind == TORCHTUNE:
        n, full, last = _seq_chunks(s, ceil_div(s, TORCHTUNE_CHUNKS))
        return (f"torchtune CEWithChunkedOutputLoss: the decoder returns {n} chunks of {full:,} positions × vocab "
                f"{V:,} in {logits_dtype}; each chunk's .float() copy goes through cross_entropy, whose "
                "log_softmax saves its fp32 output (all chunks until backward); the recipe deletes the chunks "
                "before backward, which starts with one chunk's two fp32 gradients (torchtune 0.6.1 "
                "modules/loss/ce_chunked_output_loss.py:30-80, modules/transformer.py:482-501, "
                "recipes/lora_finetune_single_device.py:639-661)")
    if kind == LITGPT:
        n, _, last = _seq_chunks(s, LITGPT_CHUNK_TOKENS)
        out = "fp32 (log_softmax autocasts)" if autocast else logits_dtype
        return (f"LitGPT chunked_cross_entropy: {n} lm_head chunks of {LITGPT_CHUNK_TOKENS} positions × vocab {V:,} in "
                f"{logits_dtype}, the last shortened by the label shift; log_softmax saves each chunk's output in "
                f"{out}; backward starts with one chunk's two gradients; the logits list stays alive through "
                "backward and optimizer.step() (litgpt 0.5.13 utils.py:302-330, model.py:177-179, "
                "finetune/lora.py:355-366)")
    if kind == LITGPT_FULL:
        rows = (tokens // s) * (s - 1) if s > 1 else tokens
        out = "fp32 (log_softmax autocasts)" if autocast else logits_dtype
        return (f"LitGPT full fine-tuning: one tokens {tokens:,} × vocab {V:,} logits tensor in {logits_dtype}, kept "
                f"alive by the loop through backward; chunked_cross_entropy flattens the {rows:,} shifted positions "
                "(a copy at batch > 1) into 128-row chunks whose log_softmax saves its output in "
                f"{out}; backward ends with the chunk gradients' concatenation and the zero-filled gradient of "
                "every position (litgpt 0.5.13 finetune/full.py:282-284, utils.py:302-350)")
    if kind == TRL:
        N = (tokens // s) * (s - 1) if s > 1 else tokens
        return (f"TRL fused LM head: {N:,} label positions projected in tiles of {min(N, TRL_TILE_TOKENS):,} × "
                f"{TRL_TILE_VOCAB:,} vocab columns (no tokens × vocab logits); saved targets, log_z and "
                "entropy (N each), the compacted hidden states standing in for the head's saved input; backward: "
                "an fp32 grad_hidden accumulator and the tile (trl 1.16.0 trainer/utils.py:1548-1698, "
                "kernels/chunked_logprob.py:299-465, Triton path)")
    upcast = logits_dtype != "fp32"
    if kind == STANDARD_FP32_OUTPUT:
        return (f"tokens {tokens:,} × vocab {V:,}: transformers < 4.46 upcasts the logits inside the model's forward "
                f"(the {logits_dtype} ones freed at once: an fp32 model output), shifts them (a .contiguous() fp32 "
                "copy at batch > 1) and CrossEntropyLoss saves log_softmax's fp32 output; backward: the log-probs' "
                "fp32 gradient and slice_backward's fp32 gradient of every position (transformers 4.44.2 "
                "models/llama/modeling_llama.py:1208-1229)")
    if kind == STANDARD_SHIFTED:
        return (f"tokens {tokens:,} × vocab {V:,}: logits in {logits_dtype}, ForCausalLMLoss's logits.float() copy "
                "and, at batch > 1, the shifted logits' .contiguous() fp32 copy (transformers 4.48.3 "
                "loss/loss_utils.py:36-39; 4.49.0 pads the labels instead); log_softmax's saved fp32 output; "
                "backward: the log-probs' fp32 gradient and slice_backward's fp32 gradient of every position")
    return (f"tokens {tokens:,} × vocab {V:,}: logits in {logits_dtype} ({BYTES[logits_dtype]} B), logits.float() "
            f"({'a new fp32 copy' if upcast else 'already fp32'}) and log_softmax's saved fp32 output "
            + (f"plus tanh's saved {logits_dtype} output (final_logit_softcapping) "
               if final_logit_softcapping(spec) else "") +
            "(transformers loss/loss_utils.py ForCausalLMLoss -> nn.functional.cross_entropy); backward adds "
            "the fp32 gradient of the log-probs and of the logits")
