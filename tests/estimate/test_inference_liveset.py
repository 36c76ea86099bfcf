"""The inference prefill peak against real CPU forward passes (issue 17).

Tiny transformers models (randomly initialised from config objects, transformers 5.24) run ``model(input_ids,
use_cache=True, logits_to_keep=1)`` under ``torch.no_grad`` as ``generate``'s prefill does, then take the fp32 copy
and the sampler's probabilities. A ``TorchDispatchMode`` (``benchmarks/versions/transformers_logits.py``'s,
independent of vramplan's simulator) records every new storage, rounded to the CUDA caching allocator's 512-B
blocks, and frees it when the storage dies; the
parameters' storages are known beforehand and not counted. Its peak is what the estimate's prefill adds to the
weights (``inference_bytes(...).prefill``): they must agree within 1 %.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


from vramplan.estimate.inference import inference_bytes  # noqa: E402
from vramplan.estimate.states import model_states  # noqa: E402
from vramplan.profiles import build_spec  # noqa: E402
from vramplan.setup import Setup  # noqa: E402


def _tracker():
    """The allocation tracker of ``benchmarks/versions/transformers_logits.py`` (one copy: that script runs alone
    under old transformers releases, without vramplan): live bytes of the storages ops create (512-B blocks), and
    their peak."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "versions" / "transformers_logits.py"
    spec = importlib.util.spec_from_file_location("vramplan_bench_transformers_logits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Allocations


Allocations = _tracker()


FAMILIES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "mistral": {"sliding_window": None},
    "phi3": {"pad_token_id": 0},
    "gemma3_text": {"head_dim": 16, "sliding_window": 64, "query_pre_attn_scalar": 16,
                    "hidden_act": "gelu_pytorch_tanh"},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}


def tiny(model_type: str) -> dict:
    cfg = dict(model_type=model_type, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=65536,
               tie_word_embeddings=False, hidden_act="silu")
    cfg.update(FAMILIES[model_type])
    return cfg


def measured_prefill(cfg: dict, prompt: int, attn: str = "sdpa", cache=None) -> int:
    c = dict(cfg)
    hf = transformers.AutoConfig.for_model(c.pop("model_type"), **c)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16, attn_implementation=attn).eval()
    known = {id(p.untyped_storage()) for p in [*model.parameters(), *model.buffers()]}
    with torch.no_grad():
        mode = Allocations(known)
        with mode:
            ids = torch.randint(0, hf.vocab_size, (1, prompt))
            kw = {"cache": cache(hf)} if cache is not None else {}
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kw)
            last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
            probs = last.softmax(-1)
            del out, last, probs
    return mode.peak


def analytic_prefill(cfg: dict, prompt: int, **setup) -> int:
    spec = build_spec(cfg, f"tiny-{cfg['model_type']}", "test")
    s = Setup.create(method="inference", precision="bf16-true", seq=prompt, **setup)
    return inference_bytes(spec, model_states(spec, s).structure, 1, prompt, 0, "bf16", s).prefill


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
@pytest.mark.parametrize("prompt", [128, 4096])
def test_prefill_peak_matches_a_real_cpu_forward(model_type, prompt):
    cfg = tiny(model_type)
    real = measured_prefill(cfg, prompt)
    est = analytic_prefill(cfg, prompt)
    assert abs(est - real) <= 0.01 * real, (
        f"{model_type} at {prompt} tokens: estimate {est:,} B, real CPU forward {real:,} B "
        f"({(est - real) / real:+.2%}; tolerance 1 %: per-storage 512-B rounding of small tensors)")


def test_the_working_set_grows_with_the_mlp_live_set_not_every_tensor():
    """Llama: at the MLP the gate is dead, act(gate), up and their product (3·i) are alive with the layer input,
    the residual, the norm output and inputs_embeds (4·h), the rotary cos/sin (2·head_dim), input_ids and
    position_ids (int64) and both layers' K/V (4·kv·head_dim): 1,904 B per token here, counted by hand."""
    cfg = tiny("llama")
    h, i, hd, kv = 64, 176, 16, 2
    per_token = 2 * (3 * i + 4 * h + 2 * hd + 2 * 2 * kv * hd) + 8 + 8
    assert per_token == 1904
    for prompt in (1024, 2048):
        assert analytic_prefill(cfg, prompt) == measured_prefill(cfg, prompt) == per_token * prompt


def test_static_cache_prefill_matches_a_real_cpu_forward():
    """StaticCache preallocates max_cache_len positions for K and V of every layer (StaticLayer.lazy_initialization);
    the prefill's update is index_copy_ in place."""
    from transformers import StaticCache

    cfg, prompt, cache_len = tiny("llama"), 1024, 1536
    real = measured_prefill(cfg, prompt, cache=lambda hf: StaticCache(config=hf, max_cache_len=cache_len))
    spec = build_spec(cfg, "tiny-llama", "test")
    s = Setup.create(method="inference", precision="bf16-true", seq=cache_len, new_tokens=cache_len - prompt,
                     cache="static", cache_len=cache_len)
    est = inference_bytes(spec, model_states(spec, s).structure, 1, cache_len, cache_len - prompt, "bf16", s).prefill
    assert abs(est - real) <= 0.01 * real, f"static: estimate {est:,} B, real {real:,} B"


def measured_decode(cfg: dict, seq: int) -> int:
    """The peak of one decode step after a ``seq - 1``-token prefill (the last step of a generation to ``seq``),
    counting what is alive when it starts (the cache, generate's input_ids)."""
    c = dict(cfg)
    hf = transformers.AutoConfig.for_model(c.pop("model_type"), **c)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    known = {id(p.untyped_storage()) for p in [*model.parameters(), *model.buffers()]}
    with torch.no_grad():
        mode = Allocations(known)
        with mode:
            ids = torch.randint(0, hf.vocab_size, (1, seq))
            out = model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1)
            cache = out.cache
            del out
            mode.peak = mode.total
            out = model(input_ids=ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
            last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
            probs = last.softmax(-1)
            del out, last, probs
    return mode.peak


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma3_text", "mixtral"])
def test_decode_step_peak_matches_a_real_cpu_forward(model_type):
    """DynamicLayer.update's torch.cat keeps the old keys while it writes the new ones; Gemma 3's sliding layers
    still hold the prompt's whole storage at the first step (DynamicSlidingWindowLayer keeps a view)."""
    cfg, seq = tiny(model_type), 4096
    spec = build_spec(cfg, f"tiny-{model_type}", "test")
    s = Setup.create(method="inference", precision="bf16-true", seq=seq, new_tokens=1)
    est = inference_bytes(spec, model_states(spec, s).structure, 1, seq, 1, "bf16", s).decode
    real = measured_decode(cfg, seq)
    assert abs(est - real) <= 0.01 * real, f"{model_type} decode: estimate {est:,} B, real {real:,} B"


@pytest.mark.parametrize(("model_type", "batch", "prompt"), [("llama", 2, 2048), ("mistral", 4, 1024)])
def test_left_padded_batch_prefill_matches_a_real_cpu_forward(model_type, batch, prompt):
    """Left padding (one pad token in every row but the first) as generate passes it: attention_mask and
    position_ids (batch, prompt) int64; sdpa_mask materializes (batch, 1, P, P) bool, SDPA converts it to an
    additive bf16 mask and gets repeat_kv'ed K/V (no enable_gqa with a mask)."""
    cfg = tiny(model_type)
    c = dict(cfg)
    hf = transformers.AutoConfig.for_model(c.pop("model_type"), **c)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    known = {id(p.untyped_storage()) for p in [*model.parameters(), *model.buffers()]}
    with torch.no_grad():
        mode = Allocations(known)
        with mode:
            ids = torch.randint(0, hf.vocab_size, (batch, prompt))
            mask = torch.ones(batch, prompt, dtype=torch.long)
            mask[1:, :1] = 0
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
            probs = last.softmax(-1)
            del out, last, probs
    spec = build_spec(cfg, f"tiny-{model_type}", "test")
    s = Setup.create(method="inference", precision="bf16-true", batch=batch, seq=prompt)
    est = inference_bytes(spec, model_states(spec, s).structure, batch, prompt, 0, "bf16", s).prefill
    assert abs(est - mode.peak) <= 0.01 * mode.peak, f"estimate {est:,} B, real {mode.peak:,} B"


def test_eager_prefill_matches_a_real_cpu_forward():
    """eager_attention_forward: the masked scores (bf16), softmax's fp32 input copy and output alive at once, with
    the float causal mask eager_mask builds for the whole forward."""
    cfg, prompt = tiny("llama"), 1024
    real = measured_prefill(cfg, prompt, attn="eager")
    est = analytic_prefill(cfg, prompt, attn="eager")
    assert abs(est - real) <= 0.01 * real, f"eager: estimate {est:,} B, real {real:,} B"


def test_full_logits_prefill_matches_a_real_cpu_forward():
    """A plain forward (logits_to_keep=0): lm_head over every position, the final norm's output its input."""
    cfg, prompt = tiny("llama"), 2048
    c = dict(cfg)
    hf = transformers.AutoConfig.for_model(c.pop("model_type"), **c)
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    known = {id(p.untyped_storage()) for p in [*model.parameters(), *model.buffers()]}
    with torch.no_grad():
        mode = Allocations(known)
        with mode:
            out = model(input_ids=torch.randint(0, hf.vocab_size, (1, prompt)), use_cache=True, logits_to_keep=0)
            del out
    spec = build_spec(cfg, "tiny-llama", "test")
    s = Setup.create(method="inference", precision="bf16-true", seq=prompt)
    r = inference_bytes(spec, model_states(spec, s).structure, 1, prompt, 0, "bf16", s, full_logits=True)
    assert r.logits == prompt * 1000 * 2 and r.prefill == mode.peak


#: ``benchmarks/versions/transformers_logits.py`` under transformers 4.44.2 and 4.45.0 (torch 2.13.0, CPU,
#: 2026-12-03): the same tiny Llama's generate-style prefill of 2048 tokens. 4.44.2 has no num_logits_to_keep:
#: every position's logits, upcast to fp32 in the forward; 4.45.0 keeps the last one (in fp32)
MEASURED_PREFILL = {"4.44.2": 13_074_432, "4.45.0": 3_883_008}


@pytest.mark.parametrize("release", sorted(MEASURED_PREFILL))
def test_older_releases_prefill_matches_their_measured_peak(release):
    est = analytic_prefill(tiny("llama"), 2048, versions=f"transformers={release}")
    real = MEASURED_PREFILL[release]
    assert abs(est - real) <= 0.01 * real, f"transformers {release}: estimate {est:,} B, measured {real:,} B"
    if release == "4.44.2":         # the head: 2048 x 1000 bf16 logits and their fp32 upcast
        spec = build_spec(tiny("llama"), "tiny-llama", "test")
        s = Setup.create(method="inference", precision="bf16-true", seq=2048, versions="transformers=4.44.2")
        assert inference_bytes(spec, model_states(spec, s).structure, 1, 2048, 0, "bf16", s).logits == \
            2048 * 1000 * (2 + 4)
