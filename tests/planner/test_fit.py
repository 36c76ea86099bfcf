"""``vramplan fit``: the largest batch / seq / rank it reports fit under ``estimate`` (what ``plan`` prints), one
more step does not; suggestions are real options that save what they say; exit codes 0/1/2."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace

import pytest
from planner_helpers import vp, vp_json

from vramplan.cli.options import setup_from_options
from vramplan.estimate import estimate
from vramplan.planner import BATCH_LIMIT, MIN_GPUS_LIMIT, RANK_LIMIT, SEQ_LIMIT, SEQ_STEP, fit_report
from vramplan.profiles import resolve_gpu, resolve_model

#: (model, plan options, gpu, margin): several models, methods (full, lora, qlora, inference) and cards
CASES = [
    ("qwen3-0.6b", {"method": "lora"}, "rtx-4060-ti-8gb", 0.0),
    ("llama-3.2-1b", {"method": "full", "grad_ckpt": True}, "a100-40gb", 0.0),
    ("llama-3.1-8b", {"method": "qlora", "seq": 4096}, "rtx-4090", 0.1),
    ("qwen2.5-7b", {"method": "lora", "targets": "all-linear", "grad_ckpt": True, "batch": 2}, "a100-80gb", 0.0),
    ("mistral-7b-v0.3", {"method": "qlora", "rank": 64, "optim": "paged-adamw-8bit"}, "t4", 0.0),
    ("phi-2", {"method": "lora", "attn": "eager", "seq": 1024}, "l4", 0.05),
    ("gemma-2-2b", {"method": "qlora", "loss": "chunked", "batch": 4}, "rtx-3060-12gb", 0.0),
    ("llama-3.1-8b", {"method": "inference", "new_tokens": 256}, "rtx-4090", 0.0),
    ("gpt2", {"method": "full", "precision": "32-true", "batch": 8, "seq": 1024}, "rtx-4060-ti-8gb", 0.0),
    ("llama-3.1-8b", {"method": "full", "gpus": 8, "strategy": "zero3", "grad_ckpt": True}, "a100-80gb", 0.0),
]


def _models_gpus() -> bool:
    """Whether the estimator models multi-GPU sharding (``estimate/distributed.py``)."""
    spec = resolve_model("qwen3-0.6b").spec
    one = setup_from_options({"method": "full"})
    return estimate(spec, one.with_(gpus=4, strategy="fsdp")).device_used_bytes < estimate(spec, one).device_used_bytes


def _fits(spec, setup, gpu, margin) -> bool:
    return estimate(spec, setup, gpu, margin).fit.fits


@pytest.mark.parametrize("model,opts,gpu,margin", CASES, ids=[f"{c[0]}-{c[1]['method']}-{c[2]}" for c in CASES])
def test_reported_maxima_fit_and_one_more_step_does_not(model, opts, gpu, margin):
    spec = resolve_model(model).spec
    setup = setup_from_options(opts)
    g = resolve_gpu(gpu)
    rep = fit_report(spec, setup, g, margin)
    assert rep.fit.fits == _fits(spec, setup, g, margin)
    found = 0
    if rep.max_batch is not None:
        found += 1
        assert _fits(spec, setup.with_(batch=rep.max_batch), g, margin)
        assert rep.max_batch == BATCH_LIMIT or not _fits(spec, setup.with_(batch=rep.max_batch + 1), g, margin)
    else:
        assert not _fits(spec, setup.with_(batch=1), g, margin)
    if rep.max_seq is not None:
        found += 1
        assert rep.max_seq % SEQ_STEP == 0
        assert _fits(spec, setup.with_(seq=rep.max_seq), g, margin)
        assert rep.max_seq == SEQ_LIMIT or not _fits(spec, setup.with_(seq=rep.max_seq + SEQ_STEP), g, margin)
    if setup.method in ("lora", "qlora"):
        lora = setup.lora
        if rep.max_rank is None:
            assert not _fits(spec, setup.with_(lora=replace(lora, r=1)), g, margin)
        else:
            found += 1
            assert _fits(spec, setup.with_(lora=replace(lora, r=rep.max_rank)), g, margin)
            assert rep.max_rank == RANK_LIMIT or not _fits(
                spec, setup.with_(lora=replace(lora, r=rep.max_rank + 1)), g, margin)
    else:
        assert rep.max_rank is None
    assert found >= 1, "every case should have at least one searched maximum"
    # consistency with the verdict: a fitting setup's own batch/seq are within the maxima
    if rep.fit.fits:
        assert rep.max_batch >= setup.batch and rep.max_seq >= (setup.seq // SEQ_STEP) * SEQ_STEP
        assert rep.suggestions == ()


def test_cli_maxima_agree_with_plan_exit_codes():
    args = ["llama-3.1-8b", "--method", "qlora", "--gpu", "rtx-4090", "--margin", "10%"]
    d = vp_json("fit", *args)
    assert d["fits"] is True and d["headroom_bytes"] == d["plan"]["fits"]["headroom_bytes"] > 0
    for key in ("fits", "headroom_bytes", "max_batch", "max_seq", "max_rank", "suggestions", "plan"):
        assert key in d
    b, s, r = d["max_batch"], d["max_seq"], d["max_rank"]
    assert vp("plan", *args, "--batch", str(b)).exit_code == 0
    assert vp("plan", *args, "--batch", str(b + 1)).exit_code == 1
    assert vp("plan", *args, "--seq", str(s)).exit_code == 0
    assert vp("plan", *args, "--seq", str(s + SEQ_STEP)).exit_code == 1
    assert vp("plan", *args, "--rank", str(r)).exit_code == 0
    assert vp("plan", *args, "--rank", str(r + 1)).exit_code == 1


NOT_FITTING = ["llama-3.1-8b", "--method", "lora", "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj",
               "--modules-to-save", "lm_head", "--batch", "4", "--seq", "4096", "--gpu", "a100-40gb"]


def test_suggestions_are_real_options_that_save_what_they_say():
    r = vp("fit", *NOT_FITTING, "--json")
    assert r.exit_code == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] is False and d["headroom_bytes"] < 0
    sug = d["suggestions"]
    assert sug, "a setup this far over should have suggestions"
    assert [x["saves_bytes"] for x in sug] == sorted((x["saves_bytes"] for x in sug), reverse=True)
    options = {x["option"].split()[0] for x in sug}
    expected = {"--grad-ckpt", "--method", "--optim", "--loss", "--seq", "--batch", "--targets", "--modules-to-save"}
    if _models_gpus():
        expected.add("--gpus")
    assert expected <= options, options
    base = d["plan"]["device_used_bytes"]
    for x in sug:
        assert set(x) >= {"change", "saves_bytes", "fits_after", "option"}
        after = vp_json("plan", *NOT_FITTING, *shlex.split(x["option"]))
        assert base - after["device_used_bytes"] == x["saves_bytes"] > 0, x
        assert after["fits"]["fits"] == x["fits_after"], x
    if _models_gpus():
        more = next(x for x in sug if x["option"].startswith("--gpus"))
        fewest = d["min_gpus"]          # one answer (issue 18): the suggestion is the fewest-GPUs search's
        if fewest is None:
            assert more["option"].startswith(f"--gpus {MIN_GPUS_LIMIT} ") and not more["fits_after"]
        else:
            assert more["option"] == f"--gpus {fewest['gpus']} --strategy {fewest['strategy']}" and more["fits_after"]
    batch = next(x for x in sug if x["option"].startswith("--batch"))
    new_b = int(batch["option"].split()[1])
    assert 4 % new_b == 0 and "effective batch 4" in batch["change"]
    seq = next(x for x in sug if x["option"].startswith("--seq"))
    assert seq["fits_after"] is True and int(seq["option"].split()[1]) == d["max_seq"]


def test_text_output_and_exit_codes():
    ok = vp("fit", "qwen3-0.6b", "--gpu", "a100-80gb")
    assert ok.exit_code == 0 and "FITS" in ok.stdout and "largest batch at seq 2,048:" in ok.stdout
    assert "largest rank" in ok.stdout and "GiB = 2**30 bytes" in ok.stdout
    bad = vp("fit", *NOT_FITTING)
    assert bad.exit_code == 1 and "DOES NOT FIT" in bad.stdout and "changes that save memory" in bad.stdout
    assert "--grad-ckpt" in bad.stdout


@pytest.mark.parametrize("args,needle", [
    (["qwen3-0.6b"], "--gpu"),
    (["qwen3-0.6b", "--gpu", "rtx-40900"], "rtx-4090"),
    (["qwen3-0.6b", "--gpu", "t4", "--rank", "0"], "--rank"),
    (["qwen3-0.6b", "--gpu", "t4", "--margin", "150%"], "--margin"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    r = vp("fit", *args)
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vramplan: error:") and needle in lines[0], r.stderr


def test_nothing_fits_reports_none_not_a_sentinel():
    d = vp_json("fit", "llama-3.1-70b", "--method", "full", "--gpu", "t4")
    assert d["fits"] is False and d["max_batch"] is None and d["max_seq"] is None and d["max_rank"] is None


@pytest.mark.parametrize("stack", ["hf", "trl", "litgpt", "torchtune", "unsloth"])
def test_the_qlora_suggestion_is_what_its_command_line_gives_under_the_stack(stack):
    # The suggestion must save exactly what `plan ... --stack S <option>` saves: under LitGPT a quantized base is
    # bf16-true, paged AdamW, bnb.nf4 and a quantized head where its bf16-mixed LoRA keeps an fp32 frozen base
    # (litgpt 0.5.13 finetune/lora.py:131-149, :218-233); TRL casts QLoRA adapters to bf16 (sft_trainer.py:902-911).
    args = ("llama-3-70b", "--stack", stack, "--method", "lora", "--gpu", "rtx-4090")
    d = json.loads(vp("fit", *args, "--json").stdout)
    q = next(x for x in d["suggestions"] if x["option"].startswith("--method qlora"))
    after = vp_json("plan", *args, *shlex.split(q["option"]))
    assert d["plan"]["device_used_bytes"] - after["device_used_bytes"] == q["saves_bytes"] > 0
