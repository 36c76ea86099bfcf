"""Other tools' configs -> vramplan setup options: the one home of every translator.

Each reader takes another tool's objects or files, read by attribute or key (no torch, no import of that
tool), and returns the option values of :data:`vramplan.setup.SETUP_OPTIONS` by name (``method``, ``rank``,
``batch``...), the form :func:`vramplan.setup.setup_from_options` and plan files take. A key the reader
cannot read or that vramplan does not model raises :class:`~vramplan.errors.ForeignConfigError` naming it.

The readers of training configs return a :class:`~.reading.Reading`: the options with the framework's own
defaults, the memory-relevant keys not modelled (``ignored``), the values the file leaves open (``undecided``);
a stage or method vramplan cannot model raises :class:`~vramplan.errors.CannotCheckError`.

- :mod:`.hf`: peft ``LoraConfig``, transformers ``BitsAndBytesConfig`` and ``TrainingArguments``
- :mod:`.llama_factory`: LLaMA-Factory flat YAML (``llamafactory-cli train``) and the v1 nested YAML
- :mod:`.axolotl`: axolotl training YAML (``axolotl train``)
- :mod:`.msswift`: ms-swift ``swift sft`` arguments and its YAML/JSON configs
- :mod:`.torchtune`: torchtune recipe configs (``tune run``)
- :mod:`.trl`: TRL ``SFTConfig`` + ``ModelConfig`` YAML (HEAD and the alignment-handbook's v0.19.1 recipes)
- :mod:`.launch`: launch scripts (llamafactory-cli, axolotl, tune run, swift, accelerate launch, torchrun)
- :mod:`.reading`: the :class:`~.reading.Reading`, DeepSpeed and accelerate configs, referenced files
- :mod:`.detect`: which format a file is, and reading it
"""

from __future__ import annotations

from .axolotl import from_axolotl
from .hf import (
                 TRAINER_OPTIMS,
                 TRAINING_ARGS_KEYS,
                 lora_from_peft,
                 optim_from_trainer,
                 options_from_bnb,
                 options_from_training_args,
)
from .llama_factory import from_llama_factory

__all__ = ["TRAINER_OPTIMS", "TRAINING_ARGS_KEYS", "from_axolotl", "from_llama_factory", "lora_from_peft",
           "optim_from_trainer", "options_from_bnb", "options_from_training_args"]
