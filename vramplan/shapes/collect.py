"""The tensors of a model in module order, as a builder declares them: one collector for every family's builder
(``from_config.py``'s and the remote-code families' in ``remote.py``)."""

from __future__ import annotations

from .roles import classify, layer_index
from .spec import Tensor


class TensorCollector:
    """Collects tensors in module order, assigning roles with the shared classifier."""

    def __init__(self) -> None:
        self.items: list[Tensor] = []

    def add(self, module: str, param: str, shape: tuple[int, ...], module_type: str,
            tied_to: str | None = None, role: str | None = None) -> None:
        self.items.append(Tensor(
            name=f"{module}.{param}",
            shape=tuple(int(d) for d in shape),
            role=role or classify(module, param, module_type),
            module_type=module_type,
            layer=layer_index(module),
            tied_to=tied_to,
        ))

    def linear(self, module: str, in_f: int, out_f: int, bias: bool = False, role: str | None = None) -> None:
        """An ``nn.Linear``: weight (out, in) and an optional bias; ``role`` where the family's module name is
        ambiguous to the shared classifier."""
        self.add(module, "weight", (out_f, in_f), "linear", role=role)
        if bias:
            self.add(module, "bias", (out_f,), "linear")

    def conv1d(self, module: str, in_f: int, out_f: int) -> None:
        """transformers' ``Conv1D`` (gpt2): weight stored (in, out), always with a bias."""
        self.add(module, "weight", (in_f, out_f), "conv1d")
        self.add(module, "bias", (out_f,), "conv1d")

    def embedding(self, module: str, num: int, dim: int) -> None:
        self.add(module, "weight", (num, dim), "embedding")

    def norm(self, module: str, dim: int, bias: bool = False) -> None:
        self.add(module, "weight", (dim,), "norm")
        if bias:
            self.add(module, "bias", (dim,), "norm")

    def router(self, module: str, num_experts: int, hidden: int) -> None:
        """A transformers-5 ``*TopKRouter``: a bare ``weight`` [E, H], not an nn.Linear."""
        self.add(module, "weight", (num_experts, hidden), "other")

    def experts(self, module: str, num_experts: int, hidden: int, inter: int) -> None:
        """A transformers-5 ``*Experts`` module: fused 3-D ``gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I]."""
        self.add(module, "gate_up_proj", (num_experts, 2 * inter, hidden), "experts")
        self.add(module, "down_proj", (num_experts, hidden, inter), "experts")

    def gated_mlp(self, module: str, hidden: int, inter: int, bias: bool = False) -> None:
        self.linear(f"{module}.gate_proj", hidden, inter, bias)
        self.linear(f"{module}.up_proj", hidden, inter, bias)
        self.linear(f"{module}.down_proj", inter, hidden, bias)

    def head(self, module: str, hidden: int, vocab: int, tied_to: str | None, bias: bool = False,
             module_type: str = "linear") -> None:
        """The output head (``module_type``: ``linear``, or Baichuan 2's ``NormHead``, which is not an nn.Linear)."""
        self.add(module, "weight", (vocab, hidden), module_type, tied_to=tied_to, role="lm_head")
        if bias:
            self.add(module, "bias", (vocab,), "linear", role="bias")
