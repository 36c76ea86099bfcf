"""Hostile flags of ``serve`` (issue 18 classes 5 and 7, for the command added after the issue's corpus) and
error lines of click's own checks: bounded integers, one short line, options the run does not read named in a
warning. A hypothesis fuzz (derandomized) over serve's flags checks the contract on every answer."""

from __future__ import annotations

import pytest
from hostile_helpers import MAX_ERROR_CHARS, vp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HUGE = str(10**400)
LONG = "a" * 5000

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(("flag", "words"), [
    ("--tp", "must be at most 65,536"), ("--max-model-len", "must be at most 16,777,216"),
    ("--max-num-seqs", "must be at most 1,048,576"), ("--max-num-batched-tokens", "must be at most 16,777,216"),
    ("--block-size", "must be at most 16,777,216"), ("--target-concurrency", "must be at most 1,048,576"),
])
def test_serve_integers_are_bounded(flag, words):
    r = vp("serve", "qwen3-0.6b", "--gpu", "h100", flag, HUGE, "--json", codes=(2,))
    assert words in r.stderr and "(401 digits)" in r.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--engine", "sglang", "--mem-fraction-static", "0.8", "--block-size", "32", "--enforce-eager"],
     "--block-size, --enforce-eager ignored: they are vLLM's, and --engine is sglang"),
    (["--mem-fraction-static", "0.8"], "--mem-fraction-static ignored: it is SGLang's, and --engine is vllm"),
    (["--page-size", "4", "--cuda-context", "1GB"], "--page-size, --cuda-context ignored: they are SGLang's"),
    (["--prices", "nowhere.yaml"], "--prices ignored: it ranks the setups found for --target-concurrency"),
])
def test_serve_options_the_engine_does_not_read_warn(args, words):
    r = vp("serve", "qwen3-0.6b", "--gpu", "h100", *args, codes=(0,))
    assert f"vramplan: warning: {words}" in r.stderr


def test_serve_options_the_engine_reads_do_not_warn():
    r = vp("serve", "qwen3-0.6b", "--gpu", "h100", "--block-size", "32", "--max-num-seqs", "8", codes=(0,))
    assert "ignored" not in r.stderr


@pytest.mark.parametrize("args", [
    ["plan", "qwen3-0.6b", "--batch", LONG], ["plan", "qwen3-0.6b", "--attn", LONG],
    ["fit", "qwen3-0.6b", "--gpu", "t4", "--seq", LONG], ["sweep", "--model", "qwen3-0.6b", "--format", LONG],
    ["serve", "qwen3-0.6b", "--gpu", "h100", "--tp", LONG], ["serve", "qwen3-0.6b", "--gpu", LONG],
    ["report", LONG], ["check", "--gpu", LONG, "x.yaml"], ["plan", "qwen3-0.6b", "--batch", "1\n2\n3"],
    ["validate", LONG],
])
def test_click_errors_quoting_a_long_value_are_one_short_line(args):
    r = vp(*args, codes=(2,))
    line = r.stderr.strip()
    assert "\n" not in line and len(line) <= MAX_ERROR_CHARS


flag_texts = st.one_of(
    st.text(alphabet="0123456789-.,%eE+ abinfGBKMiT", max_size=14),
    st.sampled_from(["0", "-1", "1", "8", "4096", "0.9", "1e400", HUGE, "nan", "inf", "", " ", "80GB", "0.4B"]),
)
SERVE_FLAGS = ["--tp", "--max-model-len", "--gpu-memory-utilization", "--max-num-seqs", "--max-num-batched-tokens",
               "--block-size", "--non-torch-memory", "--activation-memory", "--cudagraph-memory",
               "--target-concurrency", "--gpu", "--kv-cache-dtype", "--quant", "--dtype"]
SGLANG_FLAGS = ["--mem-fraction-static", "--page-size", "--cuda-context", "--max-model-len", "--tp", "--gpu"]


@FUZZ
@given(values=st.dictionaries(st.sampled_from(SERVE_FLAGS), flag_texts, min_size=1, max_size=3))
def test_fuzz_serve_flags(values):
    args = ["--gpu", "h100"] if "--gpu" not in values else []
    for flag, value in values.items():
        args += [flag, value]
    vp("serve", "qwen3-0.6b", "--json", *args)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(SGLANG_FLAGS), flag_texts, min_size=1, max_size=3))
def test_fuzz_serve_sglang_flags(values):
    args = ["--gpu", "h100"] if "--gpu" not in values else []
    if "--mem-fraction-static" not in values:
        args += ["--mem-fraction-static", "0.85"]
    for flag, value in values.items():
        args += [flag, value]
    vp("serve", "qwen3-0.6b", "--engine", "sglang", "--json", *args)
