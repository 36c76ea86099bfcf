"""Well-known rules of thumb, each with an exact setup, checked by the estimator.

``python -m vramplan.claims`` prints the Markdown table that README.md shows under "Claims vs reality";
a test keeps the README in sync with this module's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import VramplanError
from .units import GB, GiB


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    claimed_bytes: tuple[int, int] | None = None      # a range in bytes (GB = 10**9 as the article writes)
    gpu: str | None = None
    params: int | None = None                          # a claimed trainable-parameter count
    error_note: str = ""                               # what the failure means, for setups that cannot run


CLAIMS: tuple[Claim, ...] = (
    Claim("7B LoRA needs 14 GB", "seed 004 (LoRA industry overview)", "llama-2-7b",
          dict(method="lora", rank=8, targets="q_proj,v_proj", batch=1, seq=512), (14 * GB, 14 * GB)),
    Claim("7B full fine-tune needs 30 GB", "seed 001 (LoRA beginner guide)", "llama-2-7b",
          dict(method="full", batch=1, seq=512), (30 * GB, 30 * GB)),
    Claim("7B LoRA needs only 4 GB (a 3060 will do)", "seed 001 (LoRA beginner guide)", "llama-2-7b",
          dict(method="lora", rank=8, targets="q_proj,v_proj", batch=1, seq=512), (4 * GB, 4 * GB),
          gpu="rtx-3060-12gb"),
    Claim("70B QLoRA fits a 24 GB card", "seed 000 (QLoRA hands-on, its TrainingArguments)", "llama-3-70b",
          dict(method="qlora", rank=16, targets="q_proj,v_proj,k_proj,o_proj", batch=4, seq=512,
               precision="fp16-mixed", grad_ckpt=True), (0, 24 * GB), gpu="rtx-4090"),
    Claim("Qwen3-14B QLoRA at 2k tokens needs 13.6–16.1 GB", "seed 002 (ms-swift QLoRA memory analysis)",
          "qwen3-14b", dict(method="qlora", rank=8, targets="all-linear", batch=1, seq=2048, grad_ckpt=True),
          (int(13.58 * GB), int(16.08 * GB))),
    Claim("Qwen3-14B LoRA r=8 all-linear trains ≈14M parameters", "seed 002", "qwen3-14b",
          dict(method="qlora", rank=8, targets="all-linear"), params=14_000_000),
    Claim("Baichuan-7B 8-bit LoRA with target_modules q_proj,v_proj", "seed 001 (its LoraConfig)", "baichuan-7b",
          dict(method="qlora", quant="int8", rank=8, targets="q_proj,v_proj", batch=2, seq=512),
          error_note="cannot run: Baichuan fuses q/k/v into one W_pack Linear, so PEFT finds no q_proj/v_proj"),
)


def _setup_text(c: Claim) -> str:
    o = dict(c.options)
    parts = [c.model, o.pop("method")]
    for k, v in o.items():
        parts.append(f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else
                     (f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}"))
    return " ".join(parts)


def evaluate(c: Claim) -> dict[str, Any]:
    from .estimate import estimate
    from .profiles import resolve_gpu, resolve_model
    from .setup import setup_from_options

    try:
        setup = setup_from_options(dict(c.options))
        est = estimate(resolve_model(c.model).spec, setup, resolve_gpu(c.gpu) if c.gpu is not None else None)
    except VramplanError as exc:
        return {"answer": f"exit 2: {type(exc).__name__}", "verdict": c.error_note or "cannot run"}
    if c.params is not None:
        return {"answer": f"{est.params_trainable:,} trainable parameters",
                "verdict": f"off by {est.params_trainable / c.params:.1f}×"}
    used = est.device_used_bytes
    answer = f"{used / GB:.1f} GB ({used / GiB:.1f} GiB) on the device, peak phase {est.peak_phase}"
    if c.gpu is not None and est.fit is not None:
        verdict = f"{'fits' if est.fit.fits else 'does not fit'} {c.gpu} ({est.fit.capacity_bytes / GB:.1f} GB)"
    else:
        lo, hi = c.claimed_bytes or (0, 0)
        if lo <= used <= hi:
            verdict = "within the claim"
        else:
            ref = hi if used > hi else lo
            verdict = f"{'above' if used > hi else 'below'} the claim by {abs(used - ref) / GB:.1f} GB"
    return {"answer": answer, "verdict": verdict}


def markdown() -> str:
    rows = ["| claim | source | exact setup (`vramplan plan ...`) | vramplan | verdict |",
            "|---|---|---|---|---|"]
    for c in CLAIMS:
        r = evaluate(c)
        rows.append(f"| {c.text} | {c.source} | `{_setup_text(c)}` | {r['answer']} | {r['verdict']} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown())
