"""Generate's prefill peak under the installed transformers release, on a tiny Llama on CPU (issue 14).

Run it in an environment with the release under test (``pip install torch==2.13.0 transformers==4.44.2
'huggingface_hub<0.30'``): it prints one JSON line with the release and the peak bytes of new storages (512-B
blocks; parameters and buffers not counted) during ``generate``'s first forward as that release calls it — every
position's logits before 4.45.0 (no ``num_logits_to_keep``), the last one after — then the next-token copy and
the sampler's probabilities. ``tests/estimate/test_inference_liveset.py`` pins what it printed for 4.44.2 and
4.45.0 and compares vramplan's ``--versions transformers=...`` prefill with it. Needs only torch and transformers.
"""

from __future__ import annotations

import inspect
import json
import weakref

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

#: the same tiny Llama as tests/estimate/test_inference_liveset.py ``tiny("llama")``
CONFIG = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=1000, max_position_embeddings=65536, tie_word_embeddings=False,
              hidden_act="silu")
PROMPT = 2048


class Allocations(TorchDispatchMode):
    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known, self.live, self.total, self.peak = known, {}, 0, 0

    def _free(self, key: int) -> None:
        n, _ = self.live.pop(key)
        self.total -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                k = id(st)
                if k in self.live or k in self.known or st.nbytes() == 0:
                    continue
                n = -(-st.nbytes() // 512) * 512
                self.live[k] = (n, weakref.ref(st, lambda _r, k=k: self._free(k)))
                self.total += n
                self.peak = max(self.peak, self.total)
        return out


def train_peaks(batch: int = 2, seq: int = 1000, vocab: int = 8192) -> dict[str, int]:
    """One ``model(input_ids, labels=labels)`` step as the HF Trainer runs it (the outputs dropped before
    backward), only the final norm's weight trainable so that backward runs through the head and the loss: the
    peak bytes of new storages in forward and in backward."""
    hf = transformers.LlamaConfig(**{**CONFIG, "vocab_size": vocab})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf).to(torch.bfloat16)
    model.requires_grad_(False)
    model.model.norm.weight.requires_grad_(True)
    known = {id(p.untyped_storage()) for p in [*model.parameters(), *model.buffers()]}
    ids = torch.randint(0, vocab, (batch, seq))
    mode = Allocations(known)
    with mode:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        forward = mode.peak
        mode.peak = mode.total
        loss.backward()
        del loss
    return {"train_batch": batch, "train_seq": seq, "train_vocab": vocab, "train_forward_peak_bytes": forward,
            "train_backward_peak_bytes": mode.peak}


def main() -> None:
    hf = transformers.LlamaConfig(**CONFIG)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf).to(torch.bfloat16).eval()
    params = inspect.signature(model.forward).parameters
    keep = {k: 1 for k in ("logits_to_keep", "num_logits_to_keep") if k in params}   # what generate passes
    known = {id(p.untyped_storage()) for p in [*model.parameters(), *model.buffers()]}
    ids = torch.randint(0, hf.vocab_size, (1, PROMPT))
    with torch.no_grad():
        mode = Allocations(known)
        with mode:
            out = model(input_ids=ids, use_cache=True, **keep)
            last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
            probs = last.softmax(-1)
            logits_dtype = str(out.logits.dtype)
            del out, last, probs
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__, "prompt": PROMPT,
                      "logits_to_keep": sorted(keep), "logits_dtype": logits_dtype, "prefill_peak_bytes": mode.peak,
                      **train_peaks()}))


if __name__ == "__main__":
    main()
