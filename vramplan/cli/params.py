"""``vramplan params``: total and LoRA-trainable parameters, as PEFT counts them."""

from __future__ import annotations

import click

from .options import json_option, lora_config_from, lora_options, trust_option
from .render import echo_json, warn


@click.command(short_help="Count total and LoRA-trainable parameters exactly as PEFT does.")
@click.argument("model")
@lora_options
@trust_option
@json_option
def params(model: str, *, as_json: bool, trust_remote_code: bool, **opts) -> None:
    """Count the parameters of MODEL; with LoRA options, print PEFT's trainable-parameters line.

    MODEL is a bundled name (vramplan models), a Hugging Face id, or a path to a config.json or model folder.
    """
    from ..lora import peft_line, plan_lora
    from ..profiles import resolve_model

    resolved = resolve_model(model, trust_remote_code=trust_remote_code)
    spec = resolved.spec
    lora = lora_config_from(opts)
    if lora is None:
        total, trainable = spec.params_total, spec.params_total
        data = {"model": resolved.name, "params": {"total": total, "trainable": trainable}}
    else:
        lp = plan_lora(spec, lora)
        total, trainable = lp.total, lp.trainable
        data = {"model": resolved.name, "params": {"total": total, "trainable": trainable},
                "lora": {"r": lora.r, "targets": lp.targets_used if isinstance(lp.targets_used, str)
                         else list(lp.targets_used),
                         "adapted_modules": len(lp.adapters), "adapter_params": lp.adapter_params,
                         "modules_to_save": [s.module for s in lp.saved], "saved_params": lp.saved_params}}
    data["architecture"] = spec.architecture or spec.model_type      # the class counted (a multimodal one, ...)
    if spec.notes:
        data["notes"] = list(spec.notes)
    for note in spec.notes:
        warn(note)
    if as_json:
        echo_json(data)
        return
    if lora is None:
        click.echo(f"{resolved.name}: {total:,} parameters ({spec.architecture or spec.model_type}, "
                   f"{spec.num_layers} layers)")
    else:
        click.echo(peft_line(trainable, total))
