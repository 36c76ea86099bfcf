"""Serving capacity: each engine's own memory accounting (vLLM, SGLang), pure Python.

``plan_vllm`` / ``plan_sglang`` return the budget, the KV blocks or tokens and the maximum concurrency;
``smallest_setup`` finds the smallest TP size and card for a target concurrency. docs/serving.md explains
every rule and its source.
"""

from .capacity import smallest_setup
from .sglang import SglangPlan, plan_sglang
from .vllm import VllmPlan, plan_vllm

__all__ = ["SglangPlan", "VllmPlan", "plan_sglang", "plan_vllm", "smallest_setup"]
