"""``--optim-in-bwd`` against torchtune 0.6.1's own hooks (``training/memory.py:219-242
register_optim_in_bwd_hooks``) on a small torchtune Llama-3 on CPU: one gradient alive at a time, none left for
``optimizer.step()``. Skips without torchtune (CI pins it nowhere; see ``test_loss_kinds_frameworks.py``)."""

from __future__ import annotations

import pytest

from vramplan.dtypes import alloc

torch = pytest.importorskip("torch")


def test_torchtune_register_optim_in_bwd_hooks_keeps_one_gradient():
    pytest.importorskip("torchao")
    training = pytest.importorskip("torchtune.training")
    llama3 = pytest.importorskip("torchtune.models.llama3").llama3
    torch.manual_seed(0)
    with training.set_default_dtype(torch.bfloat16):
        model = llama3(vocab_size=512, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, max_seq_len=128,
                       intermediate_dim=160)
    def alive() -> int:
        return sum(alloc(q.grad.untyped_storage().nbytes()) for q in model.parameters() if q.grad is not None)

    before: list[tuple[int, int]] = []
    after: list[int] = []
    for p in model.parameters():                 # hooks run in the order registered: this one before torchtune's
        p.register_post_accumulate_grad_hook(lambda q: before.append((alive(), alloc(q.grad.untyped_storage().nbytes()))))
    # recipes/full_finetune_single_device.py:468-478: one optimizer per parameter, then the hooks
    optim = {p: torch.optim.AdamW([p], lr=1e-5) for p in model.parameters()}
    training.register_optim_in_bwd_hooks(model=model, optim_dict=optim)
    for p in model.parameters():                 # ... and this one after its step() and zero_grad()
        p.register_post_accumulate_grad_hook(lambda _q: after.append(alive()))
    ids = torch.randint(0, 512, (2, 32))
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 512).float(), ids.reshape(-1)).backward()
    n = sum(1 for _ in model.parameters())
    assert len(before) == len(after) == n
    assert all(total == own for total, own in before)    # only the parameter being stepped has a gradient
    assert max(after) == 0                               # each gradient freed in its own hook
    assert max(own for _, own in before) == max(alloc(p.numel() * p.element_size()) for p in model.parameters())
    assert all(len(o.state) == 1 for o in optim.values())   # the step ran for every parameter
