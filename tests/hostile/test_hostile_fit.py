"""``fit`` gives one answer to "how many GPUs?" (issue 18: a 70B said "fewest: 4 with zero3" while its list of
changes suggested "FSDP across 8"): the "more GPUs" change is the fewest-GPUs search's count and strategy, over
a grid of large-model setups; the count is checked on its own against the estimate (it fits, one GPU fewer
fits with no strategy)."""

from __future__ import annotations

import itertools
import re

import pytest
from hostile_helpers import vp

from vramplan.cli.options import setup_from_options
from vramplan.errors import VramplanError
from vramplan.estimate import estimate
from vramplan.estimate.distributed import OFFLOADS_BY_STRATEGY, PREFERENCE
from vramplan.planner import MIN_GPUS_LIMIT, fit_report
from vramplan.profiles import resolve_gpu, resolve_model

MODELS = ["llama-3-70b", "qwen2.5-72b"]
METHODS = [{"method": "lora"}, {"method": "full"}, {"method": "qlora"}, {"method": "full", "grad_ckpt": True},
           {"method": "lora", "gpus": 2, "strategy": "ddp"}, {"method": "full", "grad_ckpt": True,
                                                                "strategy": "zero3", "offload": "optimizer"}]
GPUS = ["a100-80gb", "h100", "rtx-4090"]
GRID = list(itertools.product(MODELS, METHODS, GPUS))


def _fits_with_any_strategy(spec, setup, gpu, n: int) -> bool:
    for strategy in PREFERENCE:
        if setup.offload not in OFFLOADS_BY_STRATEGY[strategy] or (strategy == "ddp" and n > 1):
            continue
        try:
            if estimate(spec, setup.with_(gpus=n, strategy=strategy), gpu).fit.fits:
                return True
        except VramplanError:
            continue
    return False


@pytest.mark.parametrize(("model", "opts", "card"), GRID,
                         ids=[f"{m}-{'-'.join(f'{v}' for v in o.values())}-{g}" for m, o, g in GRID])
def test_more_gpus_suggestion_is_the_fewest_gpus_answer(model, opts, card):
    spec, gpu = resolve_model(model).spec, resolve_gpu(card)
    setup = setup_from_options(opts)
    rep = fit_report(spec, setup, gpu)
    more = [s for s in rep.suggestions if s.option.startswith("--gpus")]
    if rep.fits:
        assert rep.suggestions == ()
        return
    assert len(more) <= 1, more
    if rep.min_gpus is None:
        assert not _fits_with_any_strategy(spec, setup, gpu, MIN_GPUS_LIMIT)
        if more:
            assert more[0].option.startswith(f"--gpus {MIN_GPUS_LIMIT} --strategy ") and not more[0].fits_after
            assert f"none up to {MIN_GPUS_LIMIT} fits" in more[0].change
        return
    n, strategy = rep.min_gpus
    assert more, "a setup that fits on more GPUs gets that change"
    assert more[0].option == f"--gpus {n} --strategy {strategy}" and more[0].fits_after
    assert f"across {n} GPUs" in more[0].change or n == 1
    assert estimate(spec, setup.with_(gpus=n, strategy=strategy), gpu).fit.fits
    assert n == 1 or not _fits_with_any_strategy(spec, setup, gpu, n - 1), "the fewest, not just a count that fits"


@pytest.mark.parametrize(("card", "method"), [("a100-80gb", "lora"), ("h100", "lora"), ("rtx-4090", "qlora")])
def test_fit_text_names_one_count(card, method):
    r = vp("fit", "llama-3-70b", "--gpu", card, "--method", method, codes=(1,))
    m = re.search(r"fewest \S+ that fit: (\d+) with --strategy ([\w-]+)", r.stdout)
    assert m, r.stdout
    counts = set(re.findall(r"--gpus (\d+) --strategy ([\w-]+)", r.stdout))
    assert counts == {m.groups()}, counts
