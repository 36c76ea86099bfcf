"""Model specs: exact shapes of a model, from a config dict (pure Python) or a meta-device model."""

from .from_config import spec_from_config, supported_families
from .spec import ModelSpec, Module, Tensor

__all__ = ["ModelSpec", "Module", "Tensor", "spec_from_config", "supported_families"]
