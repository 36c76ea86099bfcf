"""``fit`` and ``sweep`` with ``--lengths``/``--alloc-conf`` replay the caching allocator as ``plan`` does
(issue 20): sweep rows carry the run's reserved peak and, per card, whether the run OOMs there; fit decides
its verdict and searches on the run. Every number is checked against ``vramplan plan``'s allocator section."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner, Result

from vramplan.cli.main import main


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    main(list(args))


def vp(*args: str) -> Result:
    """``vramplan ARGS`` through the real entry point (user errors: one line, exit 2)."""
    return CliRunner().invoke(_entry, list(args), catch_exceptions=False)


def vp_json(*args: str) -> dict:
    r = vp(*args, "--json")
    assert r.exit_code in (0, 1), (r.exit_code, r.stderr)
    return json.loads(r.stdout)


#: a short run keeps the replays to a fraction of a second each
LENGTHS = "alpaca@steps=6"
MODEL = ["qwen3-0.6b", "--method", "full", "--batch", "4", "--seq", "4096"]


def _plan_allocator(*args: str) -> dict:
    return vp_json("plan", *args)["allocator"]


def test_sweep_rows_carry_plans_run_level_reserved_peak():
    r = vp("sweep", "--model", "qwen3-0.6b", "--batch", "4,8", "--seq", "4096", "--lengths", LENGTHS,
           "--gpu", "rtx-4060-ti-8gb,a100-80gb", "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert "do not replay" not in r.stderr
    for row in rows:
        args = ["qwen3-0.6b", "--batch", str(row["batch"]), "--seq", "4096", "--lengths", LENGTHS]
        a = _plan_allocator(*args)
        assert row["run_peak_reserved_bytes"] == a["peak_reserved_bytes"]
        assert row["run_peak_allocated_bytes"] == a["peak_allocated_bytes"]
        assert row["run_fragmentation_share"] == a["fragmentation_share"]
        assert row["run_peak_reserved (GiB)"] == a["peak_reserved_bytes"] / 2**30
        for card in ("rtx-4060-ti-8gb", "a100-80gb"):
            on_card = _plan_allocator(*args, "--gpu", card)
            assert row[f"{card}_run_fits"] == (on_card["oom_step"] is None), (row["batch"], card, on_card)
    # the 8 GB card is below the run's unlimited peak (its replay on the card runs again), the 80 GB one above
    assert all(r["run_peak_reserved_bytes"] > 8 * 10**9 for r in rows)
    assert {r["rtx-4060-ti-8gb_run_fits"] for r in rows} == {False} and {r["a100-80gb_run_fits"] for r in rows} == {True}


def test_sweep_replays_only_with_lengths_or_alloc_conf(monkeypatch):
    from vramplan.allocator import lengths

    monkeypatch.setattr(lengths, "run_reserved", lambda *a, **k: (_ for _ in ()).throw(AssertionError("replayed")))
    r = vp("sweep", "--model", "qwen3-0.6b", "--batch", "1,2", "--format", "jsonl")
    assert r.exit_code == 0 and "run_peak_reserved_bytes" not in json.loads(r.stdout.splitlines()[0])


def test_sweep_alloc_conf_alone_replays_fixed_length_steps():
    r = vp("sweep", "--model", "qwen3-0.6b", "--batch", "1", "--seq", "1024", "--alloc-conf",
           "expandable_segments:True", "--columns", "batch,run_peak_reserved_bytes,run_peak_allocated_bytes")
    assert r.exit_code == 0, r.stderr
    a = _plan_allocator("qwen3-0.6b", "--batch", "1", "--seq", "1024", "--alloc-conf", "expandable_segments:True")
    assert r.stdout.splitlines()[1] == f"1,{a['peak_reserved_bytes']},{a['peak_allocated_bytes']}"


def test_a_bad_lengths_value_in_a_sweep_is_one_error():
    r = vp("sweep", "--model", "qwen3-0.6b", "--lengths", "alpaca@packed")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "rule 'packed'" in r.stderr


def test_fit_decides_on_the_run_and_says_so():
    """alpaca samples are at most 2,048 tokens: a full fine-tuning step of 4 x 4,096 does not fit an RTX 4090,
    the run does."""
    d = vp_json("fit", *MODEL, "--lengths", LENGTHS, "--gpu", "rtx-4090")
    assert d["fits_on"] == "run_peak_reserved_bytes" and d["plan"]["fits"]["fits"] is False
    on_card = _plan_allocator(*MODEL, "--lengths", LENGTHS, "--gpu", "rtx-4090")
    assert d["fits"] == (on_card["oom_step"] is None) is True
    assert d["allocator"]["peak_reserved_bytes"] == on_card["peak_reserved_bytes"]
    assert d["single_step"] == ["seq"] and d["min_gpus"] == {"gpus": 1, "strategy": "ddp"}    # the run fits one card
    # the largest batch is the run's: it runs on the card without OOM, one more does not
    mb = d["max_batch"]
    rest = ["--seq", "4096", "--lengths", LENGTHS, "--gpu", "rtx-4090"]
    at = _plan_allocator("qwen3-0.6b", "--method", "full", "--batch", str(mb), *rest)
    above = _plan_allocator("qwen3-0.6b", "--method", "full", "--batch", str(mb + 1), *rest)
    assert at["oom_step"] is None and above["oom_step"] is not None, (mb, at["oom_step"], above["oom_step"])
    text = vp("fit", *MODEL, "--lengths", LENGTHS, "--gpu", "rtx-4090")
    assert text.exit_code == 0, text.stderr
    assert "one step with every sample 4,096 tokens: DOES NOT FIT" in text.stdout
    assert "the run (6 steps of --lengths alpaca@steps=6" in text.stdout and "): FITS — run peak reserved" in text.stdout
    assert "(single-step estimate: every sample this long)" in text.stdout and "fixes, best first" in text.stdout
    assert "fewest rtx-4090 that fit: 1 (a single GPU)\n" in text.stdout


def test_fit_without_lengths_is_unchanged():
    d = vp_json("fit", "qwen3-0.6b", "--gpu", "rtx-4090")
    assert d["fits_on"] == "device_used_bytes" and "allocator" not in d and d["fits"] == d["plan"]["fits"]["fits"]
