"""LitGPT full fine-tuning's loss, measured on CPU from litgpt itself (issue 14).

Not a CI test: it needs litgpt. In a private venv (``pip install torch==2.13.0 litgpt==0.5.13``) with this checkout
on ``PYTHONPATH``: ``python benchmarks/frameworks/litgpt_full_logits.py`` prints JSON.

litgpt 0.5.13 ``finetune/full.py:282-284`` (``fit``)::

    logits = model(input_ids)                                   # one batch x seq x vocab tensor
    loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])
    fabric.backward(loss / ...)                                 # `logits` is still a live local

``utils.py:302-350 chunked_cross_entropy`` on a tensor: ``logits.reshape(-1, V)`` (a copy of every shifted logit
when batch > 1: the slice is not contiguous), ``split(128)`` rows, ``cross_entropy(reduction="none")`` per chunk.
The model's own head path is run (``GPT.lm_head`` on bf16 hidden states requiring grad, the head frozen so its
weight gradient does not mix in); vramplan's :class:`~vramplan.simulate.tracker.Tracker` records every storage
(rounded to 512 B) and the peak of the forward and of the backward above the inputs.
"""

from __future__ import annotations

import json
import sys

import torch

from vramplan.simulate.tracker import Tracker

V, H = 8192, 64
CASES = [(1, 1024, False), (2, 300, False), (4, 257, False), (2, 300, True), (1, 1024, True)]


def measure(b: int, s: int, autocast: bool) -> dict:
    from litgpt import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    torch.manual_seed(0)
    cfg = Config(n_layer=1, n_head=2, n_embd=H, block_size=s, vocab_size=V, padded_vocab_size=V, bias=False)
    model = GPT(cfg).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(b, s, H, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (b, s))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with Tracker() as tr:
        for t in (model.lm_head.weight, x, targets):
            tr.see(t)
        base = tr.total
        tr.enter("forward")
        with ctx:
            logits = model.lm_head(x)                                            # model.py:177-181, no chunks
            loss = chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:])  # finetune/full.py:283
        tr.enter("backward")
        loss.backward()
        del loss, logits
    p = tr.phase_peaks()
    return {"b": b, "s": s, "autocast": autocast, "forward_peak": p["forward"].bytes - base,
            "backward_peak": p["backward"].bytes - base}


def main() -> None:
    import litgpt
    json.dump({"versions": {"torch": torch.__version__, "litgpt": getattr(litgpt, "__version__", "0.5.13")},
               "cases": [measure(*c) for c in CASES]}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
