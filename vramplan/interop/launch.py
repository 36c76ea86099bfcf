"""Launch command lines (a ``.sh`` file or a string) -> the training configs they run, read by the framework's
reader with what the launcher decides (GPU count, accelerate config).

Read: ``llamafactory-cli train X.yaml | --key value ...``, ``axolotl train X.yaml``, ``tune run [--nproc_per_node
N] RECIPE --config X [key=value ...]``, ``swift sft|pt|rlhf ...`` (``NPROC_PER_NODE=N``), ``accelerate launch
[--num_processes N] [--config_file F] SCRIPT ...`` and ``torchrun --nproc_per_node N SCRIPT ...`` around
LLaMA-Factory's ``src/train.py``, ms-swift's ``swift/cli/sft.py``, axolotl's ``-m axolotl.cli.train`` and TRL's
``sft.py --config``. Shell variables set in the file (``nproc_per_node=2``) are expanded; ``$(...)`` is not run.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CannotCheckError
from ..io import brief
from .reading import Reading, from_accelerate, read_reference, set_dotted

#: the first words of the commands this module reads
LAUNCHERS = ("llamafactory-cli", "lmf", "axolotl", "tune", "swift", "accelerate", "torchrun", "deepspeed", "python",
             "python3")

_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_SUBST = re.compile(r"\$\((?:[^()]|\([^()]*\))*\)|`[^`]*`")


@dataclass
class Command:
    """One command of a script: its environment assignments and its words."""

    env: dict[str, str] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not cur and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            out.append(cur)
        cur = ""
    if cur.strip():
        out.append(cur)
    return out


def parse_script(text: str) -> list[Command]:
    """The commands of a shell script: comment lines dropped, continuations joined, ``NAME=value`` lines kept
    as variables and expanded (``$NAME``, ``${NAME}``, also from the environment prefix of a command), ``$(...)``
    replaced by a placeholder word."""
    variables: dict[str, str] = {}
    out = []
    for line in _logical_lines(text):
        line = _SUBST.sub(" __subst__ ", line)

        def expand(m: re.Match[str]) -> str:
            return variables.get(m.group(1) or m.group(2), m.group(0))

        line = _VAR.sub(expand, line)
        for part in re.split(r"\s(?:&&|\|\||;)\s", line):
            try:
                words = shlex.split(part, comments=False)
            except ValueError:
                continue
            while words and words[-1].startswith("#"):
                words.pop()
            env: dict[str, str] = {}
            while words and _ASSIGN.match(words[0]):
                k, _, v = words.pop(0).partition("=")
                env[k] = v
            if not words:
                variables.update(env)
                continue
            out.append(Command(env, words))
    return out


def parse_args(words: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``--key value``, ``--key=value``, ``--flag`` and ``--key v1 v2`` (a list) -> (positionals, options)."""
    pos: list[str] = []
    opts: dict[str, Any] = {}
    key: str | None = None
    for w in words:
        if w.startswith("--") and len(w) > 2:
            k, eq, v = w[2:].partition("=")
            k = k.replace("-", "_")
            if eq:
                opts[k] = v
                key = None
            else:
                opts[k] = True
                key = k
        elif key is not None:
            cur = opts[key]
            opts[key] = w if cur is True else (cur + [w] if isinstance(cur, list) else [cur, w])
        else:
            pos.append(w)
    return pos, opts


#: accelerate / torchrun options that take no value
_FLAGS = {"multi_gpu", "use_fsdp", "use_deepspeed", "cpu", "m", "module", "no_python", "debug", "quiet", "q",
          "standalone", "tpu", "use_xpu", "use_mps_device", "fsdp_offload_params", "offload_param",
          "dynamo_use_fullgraph"}


def _split_launcher(words: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """accelerate/torchrun options, then the script and its arguments."""
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if not w.startswith("-"):
            break
        k, eq, v = w.lstrip("-").partition("=")
        k = k.replace("-", "_")
        if eq:
            opts[k] = v
            i += 1
        elif k in _FLAGS:
            opts[k] = True
            i += 1
            if k in ("m", "module"):
                break
        else:
            opts[k] = words[i + 1] if i + 1 < len(words) else True
            i += 2
    return opts, words[i:]


def read_script(text: str, file: str | os.PathLike[str] | None = None) -> list[Reading]:
    """Every training command of a launch script, read. A command vramplan cannot check is a
    :class:`Reading` with ``cannot_check`` set, so that the other commands are still read.

    Raises:
        CannotCheckError: no training command at all.
    """
    out = []
    for cmd in parse_script(text):
        if os.path.basename(cmd.words[0]) not in LAUNCHERS:
            continue
        try:
            r = read_command(cmd, file)
        except CannotCheckError as exc:
            r = Reading("launch-script", None, cannot_check=exc.reason)
        if r is not None:
            out.append(r)
    if not out:
        raise CannotCheckError("no training command found (llamafactory-cli train, axolotl train, tune run, "
                               "swift sft, accelerate launch, torchrun)")
    return out


def read_command(cmd: Command, file: str | os.PathLike[str] | None = None,
                 launcher: Mapping[str, Any] | None = None) -> Reading | None:
    """One command -> a :class:`Reading` (``None`` for a command that is not training, such as ``tune download``)."""
    w = cmd.words
    head = os.path.basename(w[0])
    env = cmd.env
    if head in ("accelerate", "torchrun", "deepspeed"):
        if head == "accelerate":
            if len(w) < 2 or w[1] != "launch":
                return None
            opts, rest = _split_launcher(w[2:])
        else:
            opts, rest = _split_launcher(w[1:])
        lo: dict[str, Any] = {"ignored": [], "references": []}
        if opts.get("config_file"):
            cfg, path = read_reference(str(opts["config_file"]), file, "--config_file")
            lo = from_accelerate(cfg, path)
            lo["references"] = [str(path), *lo.get("references", [])]
        for k in ("num_processes", "nproc_per_node", "num_gpus"):
            v = opts.get(k)
            if isinstance(v, str) and v.isdigit():
                lo["gpus"] = int(v)
        if opts.get("multi_gpu") and lo.get("strategy") is None:
            lo["strategy"], lo["offload"] = "ddp", "none"
        if opts.get("use_fsdp"):
            lo["strategy"] = "fsdp"
            lo["offload"] = "params" if opts.get("fsdp_offload_params") else lo.get("offload") or "none"
        if lo.get("gpus") is None and head == "accelerate" and env.get("CUDA_VISIBLE_DEVICES") and \
                lo.get("strategy") is not None:
            lo["gpus"] = len([x for x in env["CUDA_VISIBLE_DEVICES"].split(",") if x.strip()])
        if opts.get("m") or opts.get("module"):
            rest = ["-m", *rest]
        return _script(rest, env, file, lo)
    if head in ("python", "python3"):
        return _script(w[1:], env, file, launcher or {})
    return _cli(w, env, file, launcher or {})


def _script(rest: list[str], env: Mapping[str, str], file: Any, lo: Mapping[str, Any]) -> Reading | None:
    """``SCRIPT ARGS`` under a launcher: which framework's entry point it is."""
    if not rest:
        return None
    if rest[0] == "-m":
        mod = rest[1] if len(rest) > 1 else ""
        if mod.startswith("axolotl"):
            return _cli(["axolotl", "train", *rest[2:]], env, file, lo)
        if mod.startswith("llamafactory"):
            return _cli(["llamafactory-cli", "train", *rest[2:]], env, file, lo)
        if mod.startswith("trl"):
            return _cli(["trl", *rest[2:]], env, file, lo)
        raise CannotCheckError(f"python -m {brief(mod)} is not a training entry point vramplan reads")
    script = rest[0].replace("\\", "/")
    args = rest[1:]
    if script.endswith("swift/cli/sft.py"):
        return _cli(["swift", "sft", *args], env, file, lo)
    if script.endswith("swift/cli/rlhf.py"):
        return _cli(["swift", "rlhf", *args], env, file, lo)
    if script.endswith("swift/cli/pt.py"):
        return _cli(["swift", "pt", *args], env, file, lo)
    if script.endswith(("src/train.py", "llamafactory/launcher.py")):
        return _cli(["llamafactory-cli", "train", *args], env, file, lo)
    if "axolotl" in script:
        return _cli(["axolotl", "train", *args], env, file, lo)
    if script.endswith("sft.py") and "--config" in args:
        return _cli(["trl", "sft", *args], env, file, lo)
    raise CannotCheckError(f"script {brief(script)}: not a training entry point vramplan reads (LLaMA-Factory "
                           "src/train.py, ms-swift swift/cli/sft.py, axolotl, TRL sft.py --config)")


def _apply_launcher(r: Reading, lo: Mapping[str, Any]) -> Reading:
    for k in ("gpus", "strategy", "offload"):
        if lo.get(k) is not None:
            r.options[k] = lo[k]
    if lo.get("grad_ckpt"):
        r.options["grad_ckpt"] = True
    r.ignored += list(lo.get("ignored", []))
    r.references += [x for x in lo.get("references", []) if x not in r.references]
    return r


def _config(ref: str, file: Any, key: str) -> tuple[Mapping[str, Any], str, str]:
    from ..errors import PlanFileError
    from ..io import CONFIG_MAX_BYTES, read_text

    data, path = read_reference(ref, file, key)
    text = read_text(path, CONFIG_MAX_BYTES, error=PlanFileError, what="config")
    return data, str(path), text


def _cli(w: list[str], env: Mapping[str, str], file: Any, lo: Mapping[str, Any]) -> Reading | None:
    from .axolotl import read_axolotl
    from .llama_factory import is_v1, read_llama_factory, read_llama_factory_v1
    from .msswift import read_msswift
    from .torchtune import read_torchtune
    from .trl import read_trl

    head = os.path.basename(w[0])
    sub = w[1] if len(w) > 1 else ""
    pos, opts = parse_args(w[2:])
    gpus_env = env.get("NPROC_PER_NODE")
    env_lo = dict(lo)
    if env_lo.get("gpus") is None and gpus_env and gpus_env.isdigit():
        env_lo["gpus"] = int(gpus_env)
    if head in ("llamafactory-cli", "lmf"):
        if sub not in ("train", "sft", "pt", "dpo", "rm", "kto", "ppo"):
            return None
        if pos and pos[0].endswith((".yaml", ".yml", ".json")):
            data, path, _ = _config(pos[0], file, "config")
            # `llamafactory-cli train x.yaml key=value` overrides the file (hparams/parser.py read_args)
            d = {**data, **dict(p.split("=", 1) for p in pos[1:] if "=" in p), **opts}
            if is_v1(d):
                r = read_llama_factory_v1(d, path, stage=None if sub == "train" else sub)
            else:
                r = read_llama_factory(d, path)
            r.references.insert(0, path)
        else:
            r = read_llama_factory(opts, file, fmt="llamafactory")
        return _apply_launcher(r, env_lo)
    if head == "axolotl":
        if sub not in ("train", "cli.train"):
            return None
        if not pos:
            raise CannotCheckError("axolotl train without a config file")
        data, path, _ = _config(pos[0], file, "config")
        r = read_axolotl({**data, **opts}, path)
        r.references.insert(0, path)
        return _apply_launcher(r, env_lo)
    if head == "tune":
        if sub != "run":
            return None
        topts, rest = _split_launcher(w[2:])
        recipe = rest[0] if rest else None
        ref = None
        p2: list[str] = []             # key=value overrides (OmegaConf dotlist)
        i = 1
        while i < len(rest):
            word = rest[i]
            if word in ("--config", "-c") and i + 1 < len(rest):
                ref = rest[i + 1]
                i += 2
                continue
            if word.startswith("--config="):
                ref = word.split("=", 1)[1]
            elif "=" in word and not word.startswith("-"):
                p2.append(word)
            i += 1
        if not ref:
            raise CannotCheckError("tune run without --config")
        if not ref.endswith((".yaml", ".yml")):
            ref = f"recipes/configs/{ref}.yaml"          # a built-in config name: llama3_1/8B_lora
        data, path, text = _config(ref, file, "--config")
        d = dict(data)
        for kv in p2:
            if "=" in kv:
                k, _, v = kv.partition("=")
                set_dotted(d, k, v)
        n = topts.get("nproc_per_node")
        r = read_torchtune(d, path, text, recipe=recipe,
                           nproc=int(n) if isinstance(n, str) and n.isdigit() else None)
        r.references.insert(0, path)
        return _apply_launcher(r, env_lo)
    if head == "swift":
        if pos and pos[0].endswith((".yaml", ".yml", ".json")):
            data, path, _ = _config(pos[0], file, "config")
            args: dict[str, Any] = {**data, **opts}
            refs = [path]
            where: Any = path
        else:
            args, refs, where = dict(opts), [], file
        r = read_msswift(args, where, command=sub, env=env, launcher=lo, fmt="msswift")
        r.references[:0] = refs
        return r
    if head == "trl":
        if sub != "sft":
            raise CannotCheckError(f"trl {sub} is not modelled; only sft is")
        cfg = opts.get("config")
        d: dict[str, Any] = {}
        refs = []
        if isinstance(cfg, str):
            data, path, _ = _config(cfg, file, "--config")
            d.update(data)
            refs.append(path)
        d.update({k: v for k, v in opts.items() if k != "config"})
        r = read_trl(d, file)
        r.references[:0] = refs
        return _apply_launcher(r, env_lo)
    return None

