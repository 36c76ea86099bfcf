"""The option names vramplan promises (README, docs/ci.md, plan files in users' repositories): the contract the
derived command-line options, sweep axes, plan-file keys and sweep columns are checked against."""

#: every setup option, in command-line order (``vramplan plan --help``)
SETUP_OPTION_NAMES = ("method", "quant", "double_quant", "quant_blocksize", "quant_bits", "quant_group", "quant_skip",
                      "quant_state_dtype", "quant_head", "precision", "adapter_dtype", "frozen_dtype", "fp32_norms_embeddings", "batch", "seq", "target_seq", "image_tokens", "prompt_tokens", "train_vision", "grad_ckpt",
                      "act_offload", "attn", "kv_expand", "optim", "optim_in_bwd", "loss", "logits_to_keep", "kbit_prep", "gpus",
                      "strategy", "offload", "fsdp_units", "new_tokens", "logits", "cache", "cache_len", "device_map", "max_memory", "stack", "versions",
                      "lengths", "alloc_conf",
                      "rank", "alpha", "targets", "target_regex", "modules_to_save", "layers_to_transform",
                      "layers_pattern", "dora", "lora_dropout", "target_parameters", "exclude_modules", "exclude_regex",
                      "rank_pattern", "alpha_pattern", "bias", "lora_bias", "trainable_tokens")
