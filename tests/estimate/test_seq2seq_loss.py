"""The loss of encoder-decoder models (T5, flan-t5, BART; issue 16): ``T5ForConditionalGeneration.forward`` and
``BartForConditionalGeneration.forward`` call ``CrossEntropyLoss()(lm_logits.view(-1, V), labels.view(-1))``
themselves — no label shift, no ``.float()`` as the causal ``ForCausalLMLoss`` does — and BART adds
``final_logits_bias`` first (``vramplan/estimate/seq2seq.py seq2seq_loss_bytes``).

The independent source: a real step of tiny T5 / flan-t5 / BART models (transformers 5.24.0, torch 2.13.0, CPU)
with a 8,192-token vocabulary, under the simulation's allocation tracker (512-B blocks). Only the weight of the
last norm before the head trains, so backward runs through the head and the loss and little else. Measured: the
peak from ``lm_head``'s forward pre-hook to the end of forward (the logits, BART's biased copy, log_softmax's
output and an fp32 copy of 16-bit logits under autocast), and the peak of backward over what was alive when it
started (the log-probs' gradient and the logits' gradient). CPU autocast (bf16) casts at ``cross_entropy_loss``,
CUDA's at ``log_softmax``: the same tensors. Not modelled, pinned: ``nll_loss``'s two 0-d fp32 outputs (the loss
and ``total_weight``, 2 × 512 B) and, on an fp32 model under autocast, the head weight's bf16 autocast copy (which
vramplan counts with the autocast weight copies, not the loss).
"""

from __future__ import annotations

import json
import logging

import pytest

from vramplan.lora import LoraConfig
from vramplan.setup import Setup

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)
from vramplan.simulate.tracker import Tracker  # noqa: E402

V, H, B, S, TG = 8192, 32, 2, 8, 250
SCALARS = 2 * 512       # nll_loss's 0-d output and total_weight (fp32), one 512-B block each


def _config(family: str):
    if family == "bart":
        return "BartForConditionalGeneration", transformers.BartConfig(
            d_model=H, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, vocab_size=V, max_position_embeddings=512,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return "T5ForConditionalGeneration", transformers.T5Config(
        d_model=H, d_ff=32, num_layers=1, num_heads=2, d_kv=16, vocab_size=V, dropout_rate=0.0,
        decoder_start_token_id=0, feed_forward_proj="gated-gelu" if family == "flan-t5" else "relu")


def _measure(family: str, weights: str, autocast: bool) -> tuple[int, int]:
    """(forward bytes from lm_head on, backward bytes over its start) of one real CPU step."""
    torch.manual_seed(0)
    cls, cfg = _config(family)
    model = getattr(transformers, cls)(cfg)
    if weights == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    model.requires_grad_(False)
    last_norm = model.model.decoder.layers[-1].final_layer_norm if family == "bart" else model.decoder.final_layer_norm
    last_norm.weight.requires_grad_(True)
    ids, labels = torch.randint(3, V, (B, S)), torch.randint(3, V, (B, TG))
    mark = {}

    with Tracker() as tr:
        def at_head(*_):
            mark["head"] = tr.total
            tr.enter("loss")
        model.get_output_embeddings().register_forward_pre_hook(at_head)
        for t in (*model.parameters(), *model.buffers(), ids, labels):
            tr.see(t)
        tr.enter("forward")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=labels).loss      # the outputs dropped, as the HF Trainer does
        tr.enter("backward")
        start = tr.total
        loss.backward()
        del loss
    peaks = tr.phase_peaks()
    return peaks["loss"].bytes - mark["head"], peaks["backward"].bytes - start


def _spec(family: str, monkeypatch):
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = _config(family)
    d = json.loads(cfg.to_json_string())
    d["architectures"] = [cls]
    return spec_from_meta(d, family)


#: (precision, method) -> (weights the real model holds, autocast): what vramplan places for that setup
SETUPS = {("32-true", "lora"): ("fp32", False), ("bf16-true", "lora"): ("bf16", False),
          ("bf16-mixed", "lora"): ("bf16", True), ("bf16-mixed", "full"): ("fp32", True)}


@pytest.mark.parametrize("family", ["t5", "flan-t5", "bart"])
@pytest.mark.parametrize(("precision", "method"), sorted(SETUPS))
def test_loss_equals_a_real_cpu_step(family, precision, method, monkeypatch):
    from vramplan.estimate.states import model_states

    weights, autocast = SETUPS[(precision, method)]
    forward, backward = _measure(family, weights, autocast)
    d = model_states(_spec(family, monkeypatch), Setup(method=method, precision=precision, batch=B, seq=S,
                                                        target_seq=TG, lora=LoraConfig(r=4)))
    a = d.structure.seq2seq.at(B, S, TG)
    head_copy = V * H * 2 if autocast and weights == "fp32" else 0     # autocast's bf16 copy of lm_head.weight
    assert forward - SCALARS - head_copy == a.logits_saved + a.loss_fwd_tmp
    assert backward == a.loss_bwd_tmp


@pytest.mark.parametrize(("family", "precision", "method", "elements"), [
    # bf16 weights, no autocast: bf16 logits, bf16 log-probs (the causal loss's .float() would make 2 + 4 + 4)
    ("t5", "bf16-true", "lora", 2 + 2),
    # autocast on bf16 weights: bf16 logits, log_softmax's fp32 copy of them and its fp32 output
    ("t5", "bf16-mixed", "lora", 2 + 4 + 4),
    # autocast on fp32 weights: BART's bf16 head output + the fp32 bias is fp32; no copy; fp32 log-probs
    ("bart", "bf16-mixed", "full", 4 + 4),
    # bf16 weights: the head's output and its biased copy (the first freed when log_softmax runs)
    ("bart", "bf16-true", "lora", 2 + 2),
])
def test_first_principles(family, precision, method, elements, monkeypatch):
    """Bytes per (target token, vocabulary entry) at the loss's forward peak."""
    from vramplan.estimate.states import model_states

    d = model_states(_spec(family, monkeypatch), Setup(method=method, precision=precision, batch=B, seq=S,
                                                        target_seq=TG, lora=LoraConfig(r=4)))
    a = d.structure.seq2seq.at(B, S, TG)
    assert a.logits_saved + a.loss_fwd_tmp == B * TG * V * elements


def test_other_loss_kinds_keep_the_causal_rules(monkeypatch):
    """--loss chunked etc. on an encoder-decoder model: estimated as for a causal LM, and said so."""
    from vramplan.estimate.estimator import estimate

    spec = _spec("t5", monkeypatch)
    est = estimate(spec, Setup(method="lora", precision="bf16-true", batch=B, seq=S, target_seq=TG,
                               loss="chunked", lora=LoraConfig(r=4)))
    assert any(w.startswith("--loss chunked on an encoder-decoder model") for w in est.warnings)
