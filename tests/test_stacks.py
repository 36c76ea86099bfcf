"""``--stack``: each framework's defaults for the options it decides, a flag still winning, and what it does that
is not modelled as warnings (issue 14). Expected values are the frameworks' own defaults, cited from their source
as docs/stacks.md reads them, not vramplan's output."""

from __future__ import annotations

import json
import re

import pytest
from cli_entry import vp
from click.testing import CliRunner

from vramplan.cli.main import cli
from vramplan.estimate import estimate
from vramplan.profiles import resolve_model
from vramplan.setup import setup_from_options
from vramplan.stacks import STACKS

#: stack -> (QLoRA defaults the framework uses), from its source (docs/stacks.md sections 1, 2, 5-7)
QLORA_DEFAULTS = {
    "hf": dict(kbit_prep=True, grad_ckpt=True, optim="adamw", loss="standard", precision="bf16-mixed"),
    # trl >= 0.26 no longer calls prepare_model_for_kbit_training; SFTConfig GC on since 0.22; fused LM head 1.15
    # ... and SFTTrainer(model=<name>) loads in float32 (trl 1.16.0 trainer/utils.py:1332 dtype default "float32")
    "trl": dict(kbit_prep=False, grad_ckpt=True, loss="trl-fused", adapter_dtype="compute", frozen_dtype="fp32"),
    "ms-swift": dict(kbit_prep=False, grad_ckpt=True),          # no call in ms-swift 4.6.0; GC on by default
    "llama-factory": dict(kbit_prep=False, grad_ckpt=True),     # own prepare_model_for_training; GC unless disabled
    "axolotl": dict(kbit_prep=False, grad_ckpt=False),          # cast back to bf16 after the upcast; GC off
    # CEWithChunkedOutputLoss in every SFT config; K/V expanded before SDPA (modules/attention.py)
    "torchtune": dict(kbit_prep=False, precision="bf16-true", grad_ckpt=True, loss="torchtune-chunked",
                      kv_expand=True, optim_in_bwd=False),
    # BitsandbytesPrecision quantizes the head, from fp16; 128-token chunked CE; repeat_interleave of K/V
    # ... and --quantize bnb.nf4 (the README's QLoRA config) is lightning's _NF4Linear, compress_statistics=False
    "litgpt": dict(kbit_prep=False, grad_ckpt=False, optim="paged-adamw", precision="bf16-true", quant_head=True,
                   quant_state_dtype="fp16", loss="litgpt-chunked", kv_expand=True, frozen_dtype="compute",
                   double_quant=False),
    # use_gradient_checkpointing="unsloth" offloads the checkpointed inputs
    "unsloth": dict(kbit_prep=False, grad_ckpt=True, optim="adamw-8bit", loss="chunked", act_offload=True),
}


def test_every_stack_is_tabulated_here():
    assert set(STACKS) == set(QLORA_DEFAULTS)


@pytest.mark.parametrize("stack", sorted(QLORA_DEFAULTS))
def test_stack_defaults_apply_when_not_given(stack):
    s = setup_from_options({"method": "qlora", "stack": stack})
    for option, value in QLORA_DEFAULTS[stack].items():
        assert getattr(s, option) == value, (stack, option)


def test_a_given_flag_wins_over_the_stack():
    s = setup_from_options({"method": "qlora", "stack": "litgpt", "optim": "adamw", "kbit_prep": True,
                            "grad_ckpt": True, "precision": "fp16-true"})
    assert (s.optim, s.kbit_prep, s.grad_ckpt, s.precision) == ("adamw", True, True, "fp16-true")


def test_quantized_only_defaults_leave_lora_alone():
    s = setup_from_options({"method": "lora", "stack": "litgpt"})
    # PagedAdamW and bf16-true come with --quantize; otherwise torch.optim.AdamW with no fused flag (foreach on
    # CUDA: litgpt 0.5.13 finetune/lora.py:231, utils.py:636-653)
    assert (s.optim, s.precision) == ("adamw-foreach", "bf16-mixed")
    # LitGPT LoRA's bf16-mixed keeps the frozen base fp32 (Lightning autocasts over an fp32 module)
    assert (s.frozen_dtype, s.base_dtype, s.quant_head) == ("fp32", "fp32", False)
    assert setup_from_options({"method": "qlora", "stack": "litgpt"}).base_dtype == "bf16"


def test_full_only_defaults():
    """torchtune's optimizer_in_bwd is in its full-finetune configs only (8B_full_single_device.yaml:66)."""
    assert setup_from_options({"method": "full", "stack": "torchtune"}).optim_in_bwd is True
    assert setup_from_options({"method": "lora", "stack": "torchtune"}).optim_in_bwd is False


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_default_and_gap_cites_a_release(stack):
    st = STACKS[stack]
    for item in (*st.defaults, *st.unmodelled):
        assert re.search(r"\d+\.\d+", item.source), (stack, item)


def test_kbit_prep_off_removes_exactly_the_fp32_copies():
    """Llama-3.1-8B (vocab 128,256, hidden 4,096, 32 layers, untied head): without kbit preparation the embedding,
    the head and the 2*32+1 RMSNorm weights stay bf16, 2 B less per element than fp32."""
    spec = resolve_model("llama-3.1-8b").spec
    weights = {}
    for name, options in (("hf", {}), ("trl", {"frozen_dtype": "compute"}), ("trl-fp32-load", {})):
        est = estimate(spec, setup_from_options({"method": "qlora", "stack": name[:3], **options}))
        weights[name] = sum(c.bytes for c in est.components if c.name.startswith("weights/"))
    v, h, layers = 128_256, 4_096, 32
    # TRL with model_init_kwargs dtype=bfloat16: nothing upcast
    assert weights["hf"] - weights["trl"] == 2 * (2 * v * h + (2 * layers + 1) * h) == 2_101_878_784
    # TRL's own default, SFTTrainer(model=<name>) loading in float32 (trl 1.16.0 trainer/utils.py:1332): the parts
    # left unquantized are fp32, as kbit preparation makes them
    assert weights["trl-fp32-load"] == weights["hf"]


@pytest.mark.parametrize("stack", sorted(s for s in STACKS if s != "hf"))
def test_unmodelled_behaviours_are_warnings_and_the_stack_is_stated(stack):
    r = CliRunner().invoke(cli, ["plan", "llama-3.1-8b", "--method", "qlora", "--stack", stack, "--json"],
                           catch_exceptions=False)
    d = json.loads(r.stdout)
    assert d["setup"]["stack"] == stack
    expected = [u.what for u in STACKS[stack].unmodelled if u.when in ("always", "training", "quantized")
                and u.gpus in ("any", "single")]     # a plan on one GPU
    for what in expected:
        assert any(what in w for w in d["warnings"]), (stack, what)
    said = ("not cross-checked", "cross-checked for the setups its real code was run in")
    assert any(a.startswith(f"--stack {stack}: {w}") for a in d["assumptions"] for w in said)
    assert any(f"--stack {stack} default --kbit-prep False" in a for a in d["assumptions"])


def test_hf_stack_adds_nothing():
    r = CliRunner().invoke(cli, ["plan", "llama-3.1-8b", "--method", "qlora", "--json"], catch_exceptions=False)
    d = json.loads(r.stdout)
    assert d["setup"]["stack"] == "hf" and d["warnings"] == []
    assert not any(a.startswith("--stack") for a in d["assumptions"])


def test_stack_in_plan_files_and_sweeps(tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text("model: llama-3.2-1b\nmethod: qlora\nstack: unsloth\ngpu: rtx-4090\n")
    r = CliRunner().invoke(cli, ["check", str(f), "--json"], catch_exceptions=False)
    assert json.loads(r.stdout)[0]["setup"]["optim"] == "adamw-8bit"
    r = CliRunner().invoke(cli, ["sweep", "--model", "llama-3.2-1b", "--method", "qlora", "--stack", "hf,trl",
                                 "--format", "jsonl"], catch_exceptions=False)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["stack"], row["kbit_prep"]) for row in rows] == [("hf", True), ("trl", False)]


def test_unknown_stack_is_one_line():
    r = CliRunner().invoke(cli, ["plan", "llama-3.2-1b", "--stack", "megatron"])
    assert r.exit_code == 2 and "megatron" in r.output


def test_partly_checked_stacks_say_which_parts_and_use_their_own_loop():
    """LitGPT and torchtune run their own loops; what of their code ran against the rules is named."""
    for stack, part in (("litgpt", "chunked_cross_entropy"), ("torchtune", "OffloadActivations"), ("trl", "fused LM head")):
        r = CliRunner().invoke(cli, ["plan", "llama-3.1-8b", "--method", "qlora", "--stack", stack, "--json"],
                               catch_exceptions=False)
        a = json.loads(r.stdout)["assumptions"]
        assert any("cross-checked for the setups its real code was run in on CPU, not for every setup" in x
                   and part in x for x in a), (stack, a)
        assert any(x.startswith("HF Trainer loop") for x in a) == (stack == "trl")


#: LitGPT's launchers on more than one device (litgpt 0.5.13): finetune/lora.py:152-162 builds a
#: ModelParallelStrategy whose parallelize_fn (lines 522-541) checkpoint-wraps every Block and fully_shard()s it
#: (FSDP2); finetune/full.py:107-114 builds FSDPStrategy(auto_wrap_policy={Block},
#: activation_checkpointing_policy={Block}) (FSDP1, FULL_SHARD by lightning 2.6.6's default); on one device both
#: use strategy="auto" with no checkpointing.
@pytest.mark.parametrize(("method", "gpus", "strategy", "grad_ckpt"), [
    ("lora", 8, "fsdp", True), ("lora", 2, "fsdp", True), ("full", 8, "fsdp1", True), ("full", 4, "fsdp1", True),
    ("lora", 1, "ddp", False), ("full", 1, "ddp", False)])
def test_litgpt_multi_gpu_launchers(method, gpus, strategy, grad_ckpt):
    s = setup_from_options({"method": method, "stack": "litgpt", "gpus": gpus})
    assert (s.strategy, s.grad_ckpt) == (strategy, grad_ckpt)


def test_litgpt_multi_gpu_defaults_yield_to_flags_and_leave_other_stacks_alone():
    s = setup_from_options({"method": "full", "stack": "litgpt", "gpus": 8, "strategy": "zero3", "grad_ckpt": False})
    assert (s.strategy, s.grad_ckpt) == ("zero3", False)
    assert setup_from_options({"method": "full", "gpus": 8}).strategy == "ddp"      # the HF Trainer: DDP
    # inference on N GPUs is replicas or --device-map, not a training launcher's FSDP
    assert setup_from_options({"method": "inference", "stack": "litgpt", "gpus": 2}).strategy == "ddp"


def test_litgpt_refuses_quantized_multi_gpu_training_in_one_line():
    # finetune/lora.py:152-156: `if devices * num_nodes > 1: if quantize: raise NotImplementedError(...)`
    r = vp("plan", "llama-3-8b", "--stack", "litgpt", "--method", "qlora", "--gpus", "2")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "--stack litgpt cannot train a quantized base on more than one GPU" in r.stderr
    assert "finetune/lora.py:152-156" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert vp("plan", "llama-3-8b", "--stack", "litgpt", "--method", "qlora").exit_code in (0, 1)


@pytest.mark.parametrize("stack", ["litgpt", "torchtune"])
def test_litgpt_and_torchtune_shard_with_a_root_unit(stack):
    # litgpt 0.5.13 finetune/lora.py:522-541 and torchtune 0.6.1 training/_distributed.py:519-568: fully_shard on
    # every block, then on the root (embedding, final norm, head); measured on 2 gloo ranks in test_fsdp_units.py
    spec = resolve_model("llama-3-8b").spec
    many = setup_from_options({"method": "lora", "stack": stack, "gpus": 8})
    assert (many.strategy, many.fsdp_units) == ("fsdp", "root")
    assert not any("FSDP2 units" in w for w in estimate(spec, many).warnings)
    assert setup_from_options({"method": "lora", "stack": stack}).fsdp_units == "accelerate"       # one GPU
    assert setup_from_options({"method": "lora", "stack": "hf", "gpus": 8, "strategy": "fsdp"}).fsdp_units == \
        "accelerate"
    # the root holds the bf16 embedding gathered through forward and backward: 128,256 x 4,096 x 2 B more
    acc = estimate(spec, setup_from_options({"method": "lora", "stack": stack, "gpus": 8, "fsdp_units": "accelerate"}))
    assert estimate(spec, many).peak_allocated_bytes - acc.peak_allocated_bytes >= 128_256 * 4096 * 2 * 7 // 8


def test_a_stack_condition_outside_the_vocabulary_is_an_error():
    from vramplan.stacks import Default
    with pytest.raises(ValueError, match="unknown condition"):
        Default("strategy", "fsdp", "x", gpus="many").applies(quantized=False, full=False, gpus=2)


#: torchtune 0.6.1: the *_distributed recipes shard with FSDP2 (training/_distributed.py:519-568 shard_model ->
#: fully_shard); optimizer_in_bwd: True appears only in single-device / low-memory configs (15 of them).
@pytest.mark.parametrize(("method", "gpus", "strategy", "optim_in_bwd"), [
    ("full", 1, "ddp", True), ("full", 8, "fsdp", False), ("lora", 8, "fsdp", False), ("lora", 1, "ddp", False)])
def test_torchtune_distributed_recipes(method, gpus, strategy, optim_in_bwd):
    s = setup_from_options({"method": method, "stack": "torchtune", "gpus": gpus})
    assert (s.strategy, s.optim_in_bwd, s.grad_ckpt) == (strategy, optim_in_bwd, True)


@pytest.mark.parametrize(("stack", "method", "precision", "dtype"), [
    # PEFT's get_peft_model(autocast_adapter_dtype=True) upcasts bf16 adapters whatever the precision (peft 0.21.2
    # mapping_func.py:110, tuners_utils.py:628-641; tests/estimate/test_layout.py builds them)
    ("hf", "lora", "bf16-true", "fp32"), ("ms-swift", "lora", "bf16-true", "fp32"), ("hf", "lora", "bf16-mixed", "fp32"),
    # torchtune builds LoRALinear under set_default_dtype(bf16); LitGPT converts the module to bf16 under bf16-true
    ("torchtune", "lora", None, "bf16"), ("litgpt", "qlora", None, "bf16"), ("litgpt", "lora", "bf16-true", "bf16"),
    ("litgpt", "lora", None, "fp32"),                   # bf16-mixed: an fp32 module under autocast
    ("trl", "qlora", None, "bf16"),                     # sft_trainer.py:902-911 casts QLoRA adapters to bf16
])
def test_adapter_dtype_follows_who_builds_the_adapters(stack, method, precision, dtype):
    opts = {"method": method, "stack": stack} | ({"precision": precision} if precision else {})
    assert setup_from_options(opts).adapter_weight_dtype == dtype


@pytest.mark.parametrize(("versions", "stack", "optim"), [
    # TrainingArguments' default optim: adamw_torch (torch.optim.AdamW, foreach on CUDA) before transformers
    # 4.54.0, adamw_torch_fused from it (4.54.0 training_args.py:806-811)
    ("transformers=4.53.3", "hf", "adamw-foreach"), ("transformers=4.54.0", "hf", "adamw"), (None, "hf", "adamw"),
    ("transformers=4.51.3", "trl", "adamw-foreach"),
    # not the HF Trainer: the stack's own optimizer whatever the transformers release
    ("transformers=4.51.3", "torchtune", "adamw"), ("transformers=4.51.3", "unsloth", "adamw-8bit"),
])
def test_the_trainer_default_optimizer_follows_the_transformers_release(versions, stack, optim):
    opts = {"method": "lora", "stack": stack} | ({"versions": versions} if versions else {})
    assert setup_from_options(opts).optim == optim
    assert setup_from_options({**opts, "optim": "sgd"}).optim == "sgd"          # a given flag still wins


@pytest.mark.parametrize(("stack", "value"), [
    # llamafactory 0.9.5 hparams/finetuning_args.py:527-534 freeze_vision_tower / freeze_multi_modal_projector=True;
    # ms-swift 4.6.0 swift/arguments/tuner_args.py:123-124 freeze_vit / freeze_aligner=True; PEFT alone freezes nothing
    ("llama-factory", "none"), ("ms-swift", "none"), ("hf", "all"), ("trl", "all")])
def test_multimodal_frameworks_freeze_the_vision_side(stack, value):
    assert setup_from_options({"method": "lora", "stack": stack}).train_vision == value
    assert setup_from_options({"method": "lora", "stack": stack, "train_vision": "all"}).train_vision == "all"


@pytest.mark.parametrize(("stack", "uses_bnb"), [("torchtune", False), ("hf", True)])
def test_torchtune_qlora_is_torchao_nf4(stack, uses_bnb):
    from vramplan.estimate import overhead
    from vramplan.estimate.weights import nf4_kernel

    s = setup_from_options({"method": "qlora", "stack": stack})
    assert nf4_kernel(s) == ("torchao" if stack == "torchtune" else "bnb")
    assert overhead.uses_bitsandbytes(s) is uses_bnb


#: what the stacks' code cannot run, each refused in one line (from their source):
#: torchtune 0.6.1 builds QLoRA Linears as LoRALinear(quantize_base=True) / FrozenNF4Linear, which call torchao's
#: to_nf4(weight) with its defaults block_size=64, scaler_block_size=256 (torchao 0.10.0 nf4tensor.py:988; measured
#: in a torchtune 0.6.1 + torchao 0.10.0 venv: FrozenNF4Linear(256, 128).weight is an NF4Tensor with block_size 64 and
#: scaler_block_size 256); its builders pass no quantization_kwargs.
#: litgpt 0.5.13 finetune/lora.py:53 --quantize Literal['bnb.nf4', 'bnb.nf4-dq', 'bnb.fp4', 'bnb.fp4-dq',
#: 'bnb.int8-training'] (read with inspect.signature in that venv); :141-143 raises on mixed precision; lightning
#: 2.6.6 fabric/plugins/precision/bitsandbytes.py:86-88 raises for int8 outside float16.
REFUSED = [
    ("torchtune", ["--quant", "fp4"], "--quant fp4"),
    ("torchtune", ["--quant", "int8"], "--quant int8"),
    ("torchtune", ["--no-double-quant"], "--double-quant false"),
    ("torchtune", ["--quant-blocksize", "128"], "--quant-blocksize 128"),
    ("litgpt", ["--quant", "gptq"], "--quant gptq"),
    ("litgpt", ["--quant", "awq"], "--quant awq"),
    ("litgpt", ["--precision", "bf16-mixed"], "--precision bf16-mixed"),
    ("litgpt", ["--quant", "int8"], "--precision bf16-true"),
    ("litgpt", ["--quant-blocksize", "256"], "--quant-blocksize 256"),
]


@pytest.mark.parametrize(("stack", "args", "quoted"), REFUSED)
def test_what_a_stack_cannot_run_is_a_one_line_refusal(stack, args, quoted):
    r = vp("plan", "llama-3-8b", "--stack", stack, "--method", "qlora", *args)
    assert r.exit_code == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"--stack {stack} " in r.stderr and f"got {quoted};" in r.stderr and "or another --stack" in r.stderr
    assert len(r.stderr.strip()) <= 480


@pytest.mark.parametrize(("stack", "options"), [
    ("torchtune", {}),                                      # NF4, double-quantized, 64-value blocks
    ("torchtune", {"method": "lora"}),                      # no quantized base: nothing to check
    ("litgpt", {}), ("litgpt", {"double_quant": True}),     # bnb.nf4 and bnb.nf4-dq
    ("litgpt", {"quant": "fp4"}),                           # bnb.fp4
    ("litgpt", {"quant": "int8", "precision": "fp16-true"}),  # bnb.int8-training, as it must run
    ("hf", {"quant": "gptq"}), ("hf", {"quant": "fp4", "quant_blocksize": 128, "double_quant": False}),
])
def test_what_a_stack_can_run_is_accepted(stack, options):
    s = setup_from_options({"method": "qlora", "stack": stack, **options})
    assert s.stack == stack


def test_litgpt_nf4_is_single_quantized_unless_dq_is_asked_for():
    # bnb.nf4: one fp32 absmax per 64 values; bnb.nf4-dq: a uint8 absmax per 64 values plus an fp32 one per 256
    # blocks (bitsandbytes 0.50.2 functional.quantize_4bit, compress_statistics). Every Linear is quantized, the
    # head included (quant_head): Llama-3-8B's 8,030,261,248 parameters less the embedding and the 65 norms.
    spec = resolve_model("llama-3-8b").spec
    q = 8_030_261_248 - 128_256 * 4096 - 65 * 4096
    consts = {}
    for dq in (False, True):
        e = estimate(spec, setup_from_options({"method": "qlora", "stack": "litgpt", **({"double_quant": True} if dq
                                                                                         else {})}))
        assert e.setup.double_quant is dq
        consts[dq] = e.component("weights/quant_constants")
    per_linear = 2**20 // 8         # what QuantState keeps per Linear besides absmax (code, offsets): < 128 KiB
    assert 0 <= consts[False] - q // 64 * 4 < 225 * per_linear
    assert 0 <= consts[True] - (q // 64 + q // 64 // 256 * 4) < 225 * per_linear


@pytest.mark.parametrize("stack", ["ms-swift", "llama-factory"])
def test_a_stacks_vision_default_on_a_text_model_is_not_a_warning(stack):
    spec = resolve_model("llama-3-8b").spec
    assert not any("--train-vision" in w for w in estimate(spec, setup_from_options(
        {"method": "lora", "stack": stack})).warnings)
    # the same value given on the command line of a text model is the user's mistake, and said
    assert any("--train-vision none" in w for w in estimate(spec, setup_from_options(
        {"method": "lora", "train_vision": "none"})).warnings)


#: the LoRA options a stack decides (from its source): ms-swift 4.6.0 swift/arguments/tuner_args.py:126
#: target_modules=['all-linear'], :135 lora_dropout=0.05; llamafactory 0.9.5 hparams/finetuning_args.py:73-83
#: lora_dropout=0.0, lora_target="all" (every Linear's leaf name but lm_head, model/model_utils/misc.py:28-52)
@pytest.mark.parametrize(("stack", "targets", "dropout"), [
    ("ms-swift", ("all-linear",), 0.05), ("llama-factory", ("all-linear",), 0.0), ("hf", None, 0.0),
    ("axolotl", None, 0.0)])
def test_stack_lora_defaults(stack, targets, dropout):
    for method in ("lora", "qlora"):
        s = setup_from_options({"method": method, "stack": stack})
        assert (s.lora.targets, s.lora.dropout) == (targets, dropout)
    from vramplan.setup import Setup
    api = Setup.create(method="lora", stack=stack)          # the Python API without LoRA options: the same
    assert (api.lora.targets, api.lora.dropout) == (targets, dropout)
    # what is given wins; a target regex is a choice of targets; --rank alone keeps the stack's targets
    given = setup_from_options({"method": "lora", "stack": stack, "targets": "q_proj", "lora_dropout": 0.1})
    assert (given.lora.targets, given.lora.dropout) == (("q_proj",), 0.1)
    assert setup_from_options({"method": "lora", "stack": stack, "target_regex": ".*q_proj"}).lora.targets is None
    assert setup_from_options({"method": "lora", "stack": stack, "rank": 16}).lora.targets == targets


def test_ms_swift_all_linear_trains_peft_exact_adapters():
    # all-linear on Llama-3-8B at r=8: 32 layers x 8 x (4096+4096 + 4096+1024 + 4096+1024 + 4096+4096 +
    # 3 x (4096+14336)) = 20,971,520, what PEFT's get_nb_trainable_parameters() gives (first principles)
    e = estimate(resolve_model("llama-3-8b").spec, setup_from_options({"method": "lora", "stack": "ms-swift"}))
    assert e.params_trainable == 32 * 8 * (8192 + 5120 + 5120 + 8192 + 3 * 18432) == 20_971_520
