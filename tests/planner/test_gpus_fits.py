"""``vramplan gpus --fits``: verdicts per card equal ``plan --gpu``; ordering by size or price; exit codes."""

from __future__ import annotations

import pytest
from planner_helpers import vp, vp_json

from vramplan.cli.options import setup_from_options
from vramplan.estimate import estimate
from vramplan.planner import device_used_on, fit_on
from vramplan.profiles import gpu_catalogue, resolve_gpu, resolve_model


@pytest.mark.parametrize("model,opts,margin", [
    ("llama-3.1-8b", {"method": "qlora"}, 0.0),                           # bitsandbytes context
    ("qwen3-0.6b", {"method": "full", "optim": "paged-adamw-8bit"}, 0.1),  # paged states
    ("llama-3.2-1b", {"method": "lora", "batch": 4}, 0.05),
    ("llama-3.1-8b", {"method": "inference", "new_tokens": 128}, 0.0),
    ("llama-3.2-1b", {"method": "full", "gpus": 4, "strategy": "fsdp"}, 0.0),   # per-rank (sharded) states
])
def test_fit_on_equals_estimate_on_every_card(model, opts, margin):
    spec = resolve_model(model).spec
    setup = setup_from_options(opts)
    base = estimate(spec, setup)
    for g in [*gpu_catalogue(), resolve_gpu("24GB")]:
        direct = estimate(spec, setup, g, margin)
        assert device_used_on(base, g) == direct.device_used_bytes, g.name
        assert fit_on(base, g, margin) == direct.fit, g.name


def test_every_card_listed_smallest_fitting_first():
    d = vp_json("gpus", "--fits", "llama-3.1-8b", "--method", "qlora", "--margin", "10%")
    cards = d["cards"]
    assert {c["gpu"] for c in cards} == {g.name for g in gpu_catalogue()}
    fits = [c for c in cards if c["fits"]]
    rest = [c for c in cards if not c["fits"]]
    assert fits and rest and cards == fits + rest
    assert [c["capacity_bytes"] for c in fits] == sorted(c["capacity_bytes"] for c in fits)
    first = fits[0]
    p = vp_json("plan", "llama-3.1-8b", "--method", "qlora", "--margin", "10%", "--gpu", first["gpu"])
    assert p["fits"]["headroom_bytes"] == first["headroom_bytes"] and p["device_used_bytes"] == first["device_used_bytes"]
    assert all(c["headroom_bytes"] < 0 for c in rest)


def test_prices_rank_by_cost_unpriced_last(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("a100-80gb: 1.64\nrtx-4090: 0.69\nH100: 2.99\nt4: 0.10\n")   # H100 is an alias
    d = vp_json("gpus", "--fits", "llama-3.1-8b", "--method", "qlora", "--seq", "4096", "--prices", str(prices))
    assert d["ranked_by"] == "price"
    fits = [c for c in d["cards"] if c["fits"]]
    assert [c["gpu"] for c in fits[:3]] == ["rtx-4090", "a100-80gb", "h100-80gb"]
    assert all(c["usd_per_hour"] is None for c in fits[3:])
    t4 = next(c for c in d["cards"] if c["gpu"] == "t4")
    assert t4["fits"] is False and d["cards"].index(t4) >= len(fits), "a cheap card that does not fit is not first"
    listed = tmp_path / "list.yaml"
    listed.write_text("- {gpu: l4, usd_per_hour: 0.8}\n- {name: a10g, price: 1.0}\n")
    d2 = vp_json("gpus", "--fits", "llama-3.1-8b", "--method", "qlora", "--prices", str(listed))
    assert [c["gpu"] for c in d2["cards"][:2]] == ["l4", "a10g"]


@pytest.mark.parametrize("text,needle", [
    ("rtx-4909: 1\n", "unknown GPU 'rtx-4909' (did you mean: rtx-4090"),
    ("rtx-4090: cheap\n", "usd_per_hour must be a number"),
    ("[unclosed\n", "not YAML"),
    ("just a string\n", "expected a mapping"),
])
def test_bad_price_files_exit_2(tmp_path, text, needle):
    f = tmp_path / "prices.yaml"
    f.write_text(text)
    r = vp("gpus", "--fits", "qwen3-0.6b", "--prices", str(f))
    assert r.exit_code == 2 and needle in r.stderr and str(f) in r.stderr, r.stderr


def test_exit_1_when_no_card_fits_and_text_view():
    r = vp("gpus", "--fits", "llama-3.1-405b", "--method", "full")
    assert r.exit_code == 1 and "does not fit" in r.stdout and "fits " not in r.stdout.replace("does not fit", "")
    ok = vp("gpus", "--fits", "qwen3-0.6b")
    assert ok.exit_code == 0 and ok.stdout.splitlines()[1].startswith("gpu ")


def test_plain_gpus_unchanged_and_plan_options_need_fits():
    r = vp("gpus")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].split() == ["name", "memory", "MiB", "memory", "GiB",
                                                                     "arch", "bf16"]
    assert isinstance(vp_json("gpus", codes=(0,)), list)
    bad = vp("gpus", "--batch", "4")
    assert bad.exit_code == 2 and "--fits" in bad.stderr
