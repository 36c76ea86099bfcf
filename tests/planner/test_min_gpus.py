"""``vramplan fit --gpu CARD``: ``min_gpus`` is the fewest cards (and the strategy) on which the setup fits per
rank — it fits there, and one card fewer fits with no strategy; the text line says the same."""

from __future__ import annotations

import pytest
from planner_helpers import vp, vp_json

from vramplan.cli.options import setup_from_options
from vramplan.estimate import estimate, smallest_gpus
from vramplan.estimate.distributed import OFFLOADS_BY_STRATEGY
from vramplan.planner import MIN_GPUS_LIMIT, fit_report
from vramplan.profiles import resolve_gpu, resolve_model
from vramplan.setup import STRATEGIES

#: (model, plan options as CLI arguments, card): one that fits one card, ones that need sharding, offload kept
CASES = [
    ("qwen3-0.6b", ["--method", "lora"], "a100-80gb"),
    ("llama-3.1-8b", ["--method", "full", "--grad-ckpt"], "a100-80gb"),
    ("llama-3.1-8b", ["--method", "full", "--grad-ckpt", "--gpus", "8", "--strategy", "zero3"], "a100-40gb"),
    ("qwen2.5-7b", ["--method", "full", "--grad-ckpt", "--strategy", "zero3", "--offload", "optimizer"], "rtx-4090"),
]


def _opts(args: list[str]) -> dict:
    out, it = {}, iter(args)
    for a in it:
        key = a.removeprefix("--").replace("-", "_")
        if key == "grad_ckpt":
            out[key] = True
        else:
            v = next(it)
            out[key] = int(v) if v.isdigit() else v
    return out


def _fits(spec, setup, gpu) -> bool:
    return estimate(spec, setup, gpu).fit.fits


@pytest.mark.parametrize("model,args,card", CASES, ids=[f"{c[0]}-{'-'.join(c[1][1::2])}-{c[2]}" for c in CASES])
def test_min_gpus_fits_and_one_fewer_does_not(model, args, card):
    d = vp_json("fit", model, *args, "--gpu", card)
    mg = d["min_gpus"]
    assert mg is not None, "every case fits on some number of cards"
    n, strategy = mg["gpus"], mg["strategy"]
    assert set(mg) == {"gpus", "strategy"} and strategy in STRATEGIES and 1 <= n <= MIN_GPUS_LIMIT
    setup = setup_from_options(_opts(args))
    spec, gpu = resolve_model(model).spec, resolve_gpu(card)
    assert (n, strategy) == smallest_gpus(spec, setup, gpu)
    assert setup.offload in OFFLOADS_BY_STRATEGY[strategy], "the setup's --offload is kept"
    # it fits there (through the CLI, as a user would check it) ...
    assert vp("plan", model, *_strip_gpus(args), "--gpus", str(n), "--strategy", strategy,
              "--gpu", card).exit_code == 0
    # ... and on one card fewer nothing fits, whatever the strategy
    if n > 1:
        for s in STRATEGIES:
            if setup.offload in OFFLOADS_BY_STRATEGY[s]:
                assert not _fits(spec, setup.with_(gpus=n - 1, strategy=s), gpu), (n - 1, s)


def _strip_gpus(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--gpus", "--strategy"):
            skip = True
            continue
        out.append(a)
    return out


def test_min_gpus_on_one_card_and_the_text_line():
    d = vp_json("fit", "qwen3-0.6b", "--gpu", "a100-80gb")
    assert d["fits"] is True and d["min_gpus"] == {"gpus": 1, "strategy": "ddp"}
    text = vp("fit", "qwen3-0.6b", "--gpu", "a100-80gb").stdout
    assert "fewest a100-80gb that fit: 1 (a single GPU)" in text


def test_min_gpus_when_sharding_is_needed_text_and_exit_code():
    r = vp("fit", "llama-3.1-8b", "--method", "full", "--grad-ckpt", "--gpu", "a100-80gb")
    assert r.exit_code == 1, "one card does not fit: fit still exits 1"
    mg = vp_json("fit", "llama-3.1-8b", "--method", "full", "--grad-ckpt", "--gpu", "a100-80gb")["min_gpus"]
    n, s = mg["gpus"], mg["strategy"]
    assert n >= 2
    assert (f"fewest a100-80gb that fit: {n} with --strategy {s} (--gpus {n} --strategy {s}, per-GPU batch 1)"
            in r.stdout)


def test_min_gpus_null_when_nothing_fits():
    args = ["qwen3-0.6b", "--method", "full", "--seq", "1048576", "--gpu", "t4"]
    d = vp_json("fit", *args)
    assert d["min_gpus"] is None, "activations of one sequence do not shrink with more GPUs"
    assert f"fewest t4 that fit: none up to {MIN_GPUS_LIMIT} GPUs" in vp("fit", *args).stdout


def test_inference_is_one_replica_per_gpu():
    d = vp_json("fit", "llama-3.1-8b", "--method", "inference", "--gpu", "rtx-4090")
    assert d["min_gpus"] == {"gpus": 1, "strategy": "ddp"}
    assert "fewest rtx-4090 that fit: 1 (one replica per GPU)" in vp("fit", "llama-3.1-8b", "--method", "inference",
                                                                     "--gpu", "rtx-4090").stdout


def test_fit_report_carries_min_gpus():
    spec, gpu = resolve_model("llama-3.1-8b").spec, resolve_gpu("a100-80gb")
    setup = setup_from_options({"method": "full", "grad_ckpt": True})
    rep = fit_report(spec, setup, gpu)
    assert rep.min_gpus == smallest_gpus(spec, setup, gpu)
    assert rep.to_dict()["min_gpus"] == {"gpus": rep.min_gpus[0], "strategy": rep.min_gpus[1]}
