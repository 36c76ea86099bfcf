"""List the model ids that the example configs of LLaMA-Factory, axolotl, ms-swift, TRL and torchtune name.

Reads each framework's example tree at a pinned commit from a bare git mirror (``git show``/``git ls-tree``, no work
tree) and torchtune's recipe configs from its wheel, and writes ``framework_ids.tsv`` beside this script: one row per
Hub id, the number of example files that name it per framework, and the first file that names it. Local output paths
(``output/...``, ``saves/...``, ``megatron_output/...``, ``models/...``, checkpoints) are not Hub ids and are left out.

    python profiles/tools/framework_ids.py --mirror DIR --torchtune-wheel torchtune-0.6.1-py3-none-any.whl
    python profiles/tools/framework_ids.py --coverage      # how many resolve offline; rewrites framework_unresolved.tsv

``DIR`` holds ``<owner>+<name>/repo`` bare mirrors (``git clone --bare``) of the four repositories below.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TSV = HERE / "framework_ids.tsv"
UNRESOLVED = HERE / "framework_unresolved.tsv"   # rewritten by --coverage: the ids that do not resolve, and why

#: framework -> (repository, commit, folders whose files are examples, file suffixes read)
SOURCES = {
    "llamafactory": ("hiyouga/LLaMA-Factory", "ff6d4d12e", ("examples/",), (".yaml", ".yml", ".sh", ".md", ".json")),
    "axolotl": ("axolotl-ai-cloud/axolotl", "067b021c8", ("examples/",), (".yaml", ".yml", ".md")),
    "msswift": ("modelscope/ms-swift", "3602360a5", ("examples/",), (".sh", ".yaml", ".yml", ".py", ".md", ".json")),
    "trl": ("huggingface/trl", "f2cd57710", ("docs/source/", "examples/"), (".md", ".py", ".sh", ".yaml", ".yml")),
}
TORCHTUNE = "torchtune 0.6.1 wheel, recipes/configs/"

HUB_ID = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
#: the keys and flags through which an example names the model it trains or serves
NAMED = re.compile(
    r"(?:model_name_or_path|base_model|base_model_config|--model(?:_id|_type)?|--model_name|\bmodel|\bmodel_id"
    r"|pretrained_model_name_or_path|reward_model_path|tune download)"
    r"""(?:\s*[:=]\s*|\s+)["']?(""" + HUB_ID + r""")(?![\w.{-])"""
    r"""|from_pretrained\(\s*["'](""" + HUB_ID + r""")["']""")
LOCAL = re.compile(r"^(?:output|outputs|saves|megatron_output|models|checkpoints?|data|datasets?|path|your|my)/"
                   r"|checkpoint-|/v\d+-|^[^/]*-(?:output|checkpoint)s?/|\.(?:ya?ml|json|py|sh|jsonl|txt|safetensors)$",
                   re.IGNORECASE)


#: strings the pattern catches that are not a model: trl docs/source/vllm_integration.md:273 prints ``--model Qwen/Qwen``
NOT_IDS = {"Qwen/Qwen"}


def ids_in(text: str) -> set[str]:
    out = set()
    for m in NAMED.finditer(text):
        mid = (m.group(1) or m.group(2)).rstrip(".,;:")
        if mid not in NOT_IDS and not LOCAL.search(mid) and not mid.lower().startswith(("swift/", "trl/", "examples/", "tests/")):
            out.add(mid)
    return out


def _git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def collect(mirror: Path, wheel: Path) -> dict[str, dict]:
    rows: dict[str, dict] = collections.defaultdict(lambda: {"counts": collections.Counter(), "first": ""})
    for fw, (repo, commit, folders, suffixes) in SOURCES.items():
        git_dir = mirror / repo.replace("/", "+") / "repo"
        for path in sorted(_git(git_dir, "ls-tree", "-r", "--name-only", commit).splitlines()):
            if not path.startswith(folders) or not path.endswith(suffixes):
                continue
            for mid in ids_in(_git(git_dir, "show", f"{commit}:{path}")):
                rows[mid]["counts"][fw] += 1
                rows[mid]["first"] = rows[mid]["first"] or f"{repo}@{commit} {path}"
    with zipfile.ZipFile(wheel) as zf:
        for path in sorted(n for n in zf.namelist() if n.startswith("recipes/configs/") and n.endswith(".yaml")):
            for mid in ids_in(zf.read(path).decode("utf-8", "replace")):
                rows[mid]["counts"]["torchtune"] += 1
                rows[mid]["first"] = rows[mid]["first"] or f"torchtune-0.6.1 wheel {path}"
    return rows


def write(rows: dict[str, dict]) -> None:
    frameworks = [*SOURCES, "torchtune"]
    with TSV.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["model_id", "files", *frameworks, "first_named_in"])
        for mid, r in sorted(rows.items(), key=lambda kv: (-sum(kv[1]["counts"].values()), kv[0].lower())):
            w.writerow([mid, sum(r["counts"].values()), *(r["counts"][f] for f in frameworks), r["first"]])


def read() -> list[dict]:
    with TSV.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


#: why an id is not bundled, first matching rule wins (checked 2026-12-04 against litgpt 0.5.13 config.py, torchtune
#: 0.6.1 builders and transformers 5.24.0's configuration defaults; a class's defaults were taken only where they equal
#: the checkpoint: gpt_oss's are 36 layers x 128 experts (gpt-oss-120b, not the 20b its docstring names), deepseek_v2's
#: 4096 wide x 32 layers (not DeepSeek-V2-Lite), mpt's 2048 wide (not mpt-7b), mamba's 768 wide (not mamba-2.8b))
REASONS = [
    (re.compile(r"AWQ|GPTQ|FP8|NVFP4|bnb-|BNB-|AQLM|prequantized|2of4|-Int[48]\b", re.I),
     "pre-quantized checkpoint: planned from its own quantization_config, not a bundled 16-bit profile"),
    (re.compile(r"LoRA$", re.I), "a PEFT adapter, not a base model"),
    (re.compile(r"reward|-rm$|RM-|PRM|Reranker|reranker|Embedding|embed|bge-|gte-|bert|jina", re.I),
     "reward / classifier / embedding / reranker head: not a causal LM profile (or no offline config naming its head)"),
    (re.compile(r"VL|Vision|Omni|llava|pixtral|SmolVLM|OCR|Audio|Voxtral|gemma-3n|gemma-4|Emu3|MiniCPM-V|Ovis|Keye"
                r"|multimodal|Llama-4|GLM-4\.6V|GLM-5|Qwen3\.5|TTS|snac|orpheus|diffusion", re.I),
     "multimodal / audio checkpoint: no offline config.json copy with its vision or audio tower"),
    (re.compile(r"mamba|Jamba|Falcon-H1|LFM2|Qwen3-Next|Nemotron-3|granite-4\.0|Kimi-Linear|Falcon-E", re.I),
     "hybrid or state-space model: no offline config copy equal to the checkpoint"),
    (re.compile(r"btlm|replit|MiMo|Moonlight|MiniMax|dbrx|internlm2-1_8b|Hunyuan", re.I),
     "remote-code or converted architecture without an offline config copy"),
]
NO_SOURCE = "no offline source of its shapes: no litgpt 0.5.13 row, torchtune 0.6.1 builder or config.json copy found"


def reason(model_id: str) -> str:
    return next((why for rx, why in REASONS if rx.search(model_id)), NO_SOURCE)


def coverage(verbose: bool = False) -> tuple[int, int]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(HERE.parents[1]))
    from vramplan.errors import VramplanError
    from vramplan.profiles import resolve_model

    ok = 0
    rows = read()
    missed = []
    for r in rows:
        try:
            hit = resolve_model(r["model_id"]).origin in ("profile", "quantized")
        except VramplanError:
            hit = False
        ok += hit
        if not hit:
            missed.append((r["model_id"], r["files"], reason(r["model_id"])))
        if verbose and not hit:
            print(f"unresolved\t{r['files']}\t{r['model_id']}\t{reason(r['model_id'])}")
    with UNRESOLVED.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["model_id", "files", "why_not_bundled"])
        w.writerows(missed)
    return ok, len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path)
    ap.add_argument("--torchtune-wheel", type=Path)
    ap.add_argument("--coverage", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    if a.coverage:
        ok, n = coverage(a.verbose)
        print(f"{ok} of {n} framework example ids resolve offline")
        return
    if not (a.mirror and a.torchtune_wheel):
        ap.error("--mirror and --torchtune-wheel are needed to build the list (or pass --coverage)")
    write(collect(a.mirror, a.torchtune_wheel))
    print(f"wrote {TSV}")


if __name__ == "__main__":
    main()
