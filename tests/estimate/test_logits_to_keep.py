"""``--prompt-tokens`` and ``--logits-to-keep`` against ms-swift's real step on CPU (issue 14: a stack's loss).

ms-swift 4.6.0 turns ``use_logits_to_keep`` on for a text model (``trainers/mixin.py:213-225``) and, before each
forward, asks the model for the logits from the batch's first supervised label on
(``SwiftMixin.prepare_logits_to_keep``, ``mixin.py:1271-1293``): several rows keep the last
``seq - first_label + 1`` positions (an int: ``hidden_states[:, -k:, :]``), one row the positions whose next label is
supervised plus the last (a bool mask). ``benchmarks/frameworks/msswift_step.py`` ran its ``Seq2SeqTrainer`` on a
tiny Llama (``_step.TINY_LLAMA``: hidden 64, vocab 128, seq 32) with the first ``PROMPT`` = 12 labels of every row
masked (``prompt_cases`` in ``benchmarks/frameworks/results/msswift.json``), LoRA, QLoRA and full fine-tuning, 2 rows
and 1, with and without checkpointing, measuring every storage autograd saved and where it was made. This test
reads that JSON (CI installs no ms-swift) and compares it with vramplan's estimate for the same setup.

What the measurement says, and the rule vramplan follows (``vramplan/estimate/logits.py logits_positions``,
``activations.py LayerActivations``):

* 21 = 32 - 12 + 1 positions reach the head, for 2 rows (a slice) and for 1 (a mask): the loss's fp32 log-probs
  and its int64 targets are those of 21 positions per row, not 32;
* the decoder layers and the final norm still run on all 32 (their saves are the unmasked run's);
* what the lm_head matmul saves (its input, under full fine-tuning) is a copy of the kept rows: the slice is not
  contiguous for 2 rows (``F.linear`` flattens it into a copy), the mask is an index copy for 1.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cli_entry import vp

from vramplan.dtypes import alloc
from vramplan.errors import SetupError
from vramplan.estimate.estimator import estimate
from vramplan.estimate.logits import logits_positions
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

DATA = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "frameworks" / "results" /
                   "msswift.json").read_text())
PROMPT, SEQ, RANK = DATA["prompt"], DATA["seq"], DATA["rank"]
SPEC = spec_from_config(DATA["config"], name="tiny-llama")
V, H = SPEC.vocab_size, SPEC.hidden_size
CASES = sorted(DATA["prompt_cases"])


def _setup(name: str, prompt: int = PROMPT, **kw) -> Setup:
    c = DATA["prompt_cases"][name]
    method, rows = c["setup"]["method"], c["rows"]
    lora = LoraConfig(r=RANK, alpha=RANK, targets=("all-linear",), dropout=0.0) if method != "full" else None
    return Setup.create(method=method, stack="ms-swift", lora=lora, batch=rows, seq=SEQ, prompt_tokens=prompt,
                        grad_ckpt=c["setup"]["grad_ckpt"], **kw)


def _loss_entries(tokens: int, rows: int) -> Counter:
    """The loss's saves at ``tokens`` scored positions of ``rows`` sequences: log_softmax's fp32 output, nll_loss's
    int64 targets and its 0-dim fp32 total weight (as tests/estimate/test_stack_frameworks_cpu.py ``_head``). The
    targets are not modelled (8 B per token); their storage is one longer for one row: ms-swift pads the selected
    labels in front (``mixin.py:1282``), ``ForCausalLMLoss`` pads them again at the end and shifts them, a
    contiguous view of that storage for one row and a ``.contiguous()`` copy of ``tokens`` for several."""
    return Counter({(tokens * V * 4, "fp32"): 1, ((tokens + (rows == 1)) * 8, "int64"): 1, (4, "fp32"): 1})


def _head_trace(s: Setup, tokens: int, kept: int, rows_per_seq: int) -> Counter:
    """vramplan's head trace: the final norm's saves at ``tokens``, the lm_head matmul's at ``kept`` positions."""
    st = static_structure(SPEC, structural_setup(s))
    out: Counter = Counter()
    for x in st.head.saved:
        n = x.nbytes(tokens, tokens * SEQ) if x.category == "norms" else x.nbytes(kept, kept * rows_per_seq)
        out[(n, x.dtype)] += 1
    return out


@pytest.mark.parametrize("name", CASES)
def test_ms_swift_keeps_the_logits_from_the_first_supervised_label(name):
    c = DATA["prompt_cases"][name]
    assert c["use_logits_to_keep"] is True, "ms-swift's default for a text model"
    assert c["prompt"] == PROMPT and c["logits_to_keep_kept"] == SEQ - PROMPT + 1 == 21
    s = _setup(name)
    assert s.logits_to_keep is True, "--stack ms-swift decides --logits-to-keep"
    assert logits_positions(SEQ, PROMPT, s.logits_to_keep) == c["logits_to_keep_kept"]


@pytest.mark.parametrize("name", CASES)
def test_head_and_loss_saves(name):
    """After the last layer: the final norm's saves at every position, the head matmul's and the loss's at the kept
    positions only — the measured multiset, storage for storage."""
    c = DATA["prompt_cases"][name]
    rows = c["rows"]
    kept = rows * c["logits_to_keep_kept"]
    got = Counter(tuple(x) for x in c["saved_per_layer"]["-1"])
    want = _head_trace(_setup(name), rows * SEQ, kept, c["logits_to_keep_kept"]) + _loss_entries(kept, rows)
    assert got == want, (sorted((got - want).items()), sorted((want - got).items()))


@pytest.mark.parametrize("name", CASES)
def test_estimate_and_allocations_follow_the_kept_positions(name):
    """The step's allocations (the estimator's terms as the allocator replay reads them): the head's saves and the
    loss's saved log-probs equal the measured storages, allocator-rounded."""
    from vramplan.estimate.allocations import step_allocations

    c = DATA["prompt_cases"][name]
    rows = c["rows"]
    kept = rows * c["logits_to_keep_kept"]
    measured = Counter(tuple(x) for x in c["saved_per_layer"]["-1"]) - _loss_entries(kept, rows)
    head = sum(alloc(n) * k for (n, _), k in measured.items())
    sa = step_allocations(SPEC, _setup(name))
    T = rows * SEQ
    TL, per_seq = sa.logits_shape(rows, SEQ)
    assert (TL, per_seq) == (kept, c["logits_to_keep_kept"])
    assert sum(sa.head_saved_bytes(T, T * SEQ) + sa.head_kept_bytes(TL, per_seq)) == head
    assert sa.loss(TL, per_seq)[0] == alloc(kept * V * 4), "the fp32 log-probs of the kept positions"


@pytest.mark.parametrize("name", [n for n in CASES if not DATA["prompt_cases"][n]["setup"]["grad_ckpt"]])
def test_decoder_layers_run_every_position(name):
    """The masked prompt changes nothing before the head: each layer saves what the layer trace says at all
    ``rows x 32`` tokens."""
    c = DATA["prompt_cases"][name]
    s = _setup(name)
    st = static_structure(SPEC, structural_setup(s))
    T = c["rows"] * SEQ
    for i, tr in enumerate(st.layer_traces):
        got = Counter(tuple(x) for x in c["saved_per_layer"][str(i)])
        assert got == Counter((x.nbytes(T, T * SEQ), x.dtype) for x in tr.saved), f"layer {i}"


def test_the_prompt_shrinks_the_loss_only_under_logits_to_keep():
    s = _setup("lora-b2-nogc")
    base = estimate(SPEC, s.with_(prompt_tokens=0))
    kept = estimate(SPEC, s)
    off = estimate(SPEC, s.with_(logits_to_keep=False))
    # the forward peak holds the loss's saved fp32 log-probs: 2 x 21 rows instead of 2 x 32
    assert kept.peak_phase == base.peak_phase == "forward"
    assert kept.component("logits/log_softmax") == alloc(2 * 21 * V * 4)
    assert base.component("logits/log_softmax") == off.component("logits/log_softmax") == alloc(2 * SEQ * V * 4)
    assert kept.peak_allocated_bytes < base.peak_allocated_bytes == off.peak_allocated_bytes
    measured = Counter(tuple(x) for x in DATA["prompt_cases"]["lora-b2-nogc"]["saved_per_layer"]["-1"])
    measured -= _loss_entries(2 * 21, 2)
    assert kept.component("activations/head") == sum(alloc(n) * k for (n, _), k in measured.items())


def test_prompt_tokens_edges():
    """No masked label, or one (the first label is never scored): every position; a prompt at least as long as
    the sequence leaves no supervised label (ms-swift's argmax finds none: every position)."""
    assert [logits_positions(32, p, True) for p in (0, 1, 2, 12, 31)] == [32, 32, 31, 21, 2]
    assert logits_positions(32, 40, True) == 32 and logits_positions(32, 12, False) == 32
    with pytest.raises(SetupError, match=r"--prompt-tokens must be an integer from 0 to 31"):
        Setup(seq=32, prompt_tokens=32).validate()
    with pytest.raises(SetupError, match=r"--prompt-tokens"):
        Setup(prompt_tokens=True).validate()


def test_warnings_name_what_logits_to_keep_needs():
    s = Setup.create(stack="ms-swift", seq=2048)
    assert any("--logits-to-keep" in w and "--prompt-tokens" in w for w in estimate(SPEC, s).warnings)
    assert not any("--logits-to-keep" in w for w in estimate(SPEC, s.with_(prompt_tokens=512)).warnings)


def test_cli_prompt_tokens():
    out = vp("plan", "llama-3-8b", "--stack", "ms-swift", "--prompt-tokens", "1536", "--json")
    assert out.exit_code == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["setup"]["prompt_tokens"] == 1536 and d["setup"]["logits_to_keep"] is True
    bad = vp("plan", "llama-3-8b", "--prompt-tokens", "4096", "--seq", "2048")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "--prompt-tokens must be an integer from 0 to 2,047" in bad.stderr and "got 4096" in bad.stderr
    inf = vp("plan", "llama-3-8b", "--method", "inference", "--prompt-tokens", "12")
    assert inf.exit_code == 0 and "--prompt-tokens ignored" in inf.stderr
