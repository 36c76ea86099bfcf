"""The golden set of ``vramplan plan --json`` answers that the one-source redesign (issue 13) must keep.

Each entry is a ``plan`` command line and its JSON output captured at commit ee6f56b, before the redesign.
``versions`` is left out of the comparison: it reports the installed libraries, not the estimate.

Regenerate an entry only where a listed defect is fixed, and say so in the commit:
``python tests/golden_plans.py --write [--only INDEX,...]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN_FILE = Path(__file__).parent / "data" / "golden_plans.json"

#: (family coverage, methods, precisions, attention, optimizers, loss, checkpointing, strategies, offload, LoRA forms)
ARGS: list[str] = [
    "llama-3-8b",
    "llama-3-8b --method qlora",
    "llama-3-8b --method qlora --no-double-quant --quant fp4",
    "llama-3-8b --method qlora --quant int8",
    "llama-3-8b --method full --optim adamw-8bit",
    "llama-3-8b --method full --precision bf16-true --optim adafactor",
    "llama-3-8b --method inference --seq 4096 --new-tokens 512",
    "llama-3-8b --method inference --quant nf4 --batch 4 --seq 1024",
    "llama-3-8b --rank 64 --targets all-linear --batch 4 --seq 4096 --grad-ckpt",
    "llama-3-8b --rank 16 --targets q_proj,v_proj --attn eager --seq 1024",
    "llama-3-8b --rank 16 --targets all-linear --loss chunked --attn flash",
    "llama-3-8b --precision fp16-mixed --optim paged-adamw-8bit --gpu rtx-4090",
    "llama-3-8b --precision 32-true --optim sgd --seq 512",
    "llama-3-8b --optim lion --dora --lora-dropout 0.1",
    "llama-3-8b --modules-to-save embed_tokens,lm_head --layers-to-transform 0,1,4-7",
    "llama-3-8b --target-regex '.*layers\\.[0-3]\\..*(q_proj|v_proj)'",
    "llama-3-8b --method full --gpus 8 --strategy zero3 --offload optimizer",
    "llama-3-8b --method full --gpus 4 --strategy zero2",
    "llama-3-8b --method full --gpus 4 --strategy zero1",
    "llama-3-8b --method full --gpus 8 --strategy fsdp",
    "llama-3-8b --method full --gpus 8 --strategy fsdp --offload params",
    "llama-3-8b --method full --gpus 8 --strategy fsdp-grad-op",
    "llama-3-8b --method lora --gpus 2 --strategy ddp --gpu a100-80gb",
    "llama-3-70b --method qlora --gpus 2 --strategy fsdp --rank 16 --targets all-linear",
    "llama-3-70b --method qlora --rank 16 --targets q_proj,v_proj,k_proj,o_proj --batch 4 --seq 512 "
    "--precision fp16-mixed --grad-ckpt --gpu rtx-4090",
    "qwen3-14b --method qlora --rank 8 --targets all-linear --gpu rtx-4090 --margin 10%",
    "qwen3-14b --method qlora --rank 8 --targets all-linear --batch 2 --seq 4096 --no-grad-ckpt",
    "qwen2.5-7b --method lora --targets all-linear --gpu 24GB",
    "qwen2.5-0.5b --method inference --seq 32768 --attn flash --precision bf16-true",
    "qwen2.5-0.5b --method full --batch 8 --seq 1024",
    "qwen3-30b-a3b --method lora --targets all-linear",
    "qwen3-30b-a3b --method inference --seq 2048",
    "mixtral-8x7b --method qlora --targets q_proj,v_proj",
    "mixtral-8x7b --method lora --targets all-linear --modules-to-save lm_head",
    "gemma-2-9b --method lora --attn eager",
    "gemma-2-2b --method qlora --targets all-linear",
    "gemma-3-4b --method lora --targets all-linear",
    "gemma-3-1b --method full --precision bf16-true",
    "phi-3-mini-4k --method qlora --targets qkv_proj,o_proj",
    "phi-2 --method lora --targets all-linear",
    "gpt2 --method full --attn eager --seq 1024",
    "opt-125m --method lora --rank 8 --targets q_proj,v_proj",
    "opt-1.3b --method inference --seq 2048 --new-tokens 256",
    "bloom-560m --method lora",
    "pythia-1.4b --method qlora --targets all-linear",
    "falcon-7b --method lora",
    "baichuan-7b --method qlora --quant int8 --targets W_pack",
    "mistral-7b-v0.3 --method qlora --batch 4 --seq 4096 --gpu 24GiB",
    "deepseek-r1-distill-qwen-7b --method lora --optim adamw-8bit --gpus 2 --strategy zero2",
]


def run(args: str) -> tuple[int, dict]:
    """``vramplan plan ARGS --json`` through click's runner: exit code and parsed JSON (``versions`` removed)."""
    import shlex

    from click.testing import CliRunner

    from vramplan.cli.main import cli

    res = CliRunner().invoke(cli, ["plan", *shlex.split(args), "--json"], catch_exceptions=False)
    out = json.loads(res.stdout)
    out.pop("versions", None)
    return res.exit_code, out


def main(argv: list[str]) -> int:
    if "--write" not in argv:
        print(__doc__)
        return 2
    only = None
    if "--only" in argv:
        only = {int(i) for i in argv[argv.index("--only") + 1].split(",")}
    old = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.exists() else []
    entries = []
    for i, args in enumerate(ARGS):
        if only is not None and i not in only and i < len(old) and old[i]["args"] == args:
            entries.append(old[i])
            continue
        code, out = run(args)
        entries.append({"args": args, "exit_code": code, "json": out})
    GOLDEN_FILE.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(entries)} entries to {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
