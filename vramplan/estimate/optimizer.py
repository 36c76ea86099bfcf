"""Optimizer states and the temporaries of ``optimizer.step()``, per trainable tensor, in allocator bytes; and the
step inside backward (``--optim-in-bwd``: torchtune ``optimizer_in_bwd``)."""

from __future__ import annotations

from ..dtypes import BYTES, PAGED_MIN_NUMEL, adam8bit_state_parts, alloc
from ..setup import Setup
from .timeline import StateTerms, optimizer_in_backward
from .weights import TrainableTensor, stepped


def optimizer_states(trainables: tuple[TrainableTensor, ...], setup: Setup) -> tuple[int, int, str]:
    """(bytes in the torch allocator, bytes in paged/unified memory, formula) of the optimizer states of the tensors
    it holds (``TrainableTensor.in_optimizer``)."""
    trainables = stepped(trainables)
    o = setup.optim
    gpu, paged = 0, 0
    n_tensors = len(trainables)
    numel = sum(t.numel for t in trainables)
    if o == "adamw":
        # torch.optim.AdamW(fused=True) (HF Trainer default adamw_torch_fused): exp_avg, exp_avg_sq in the
        # param dtype, and a 0-dim fp32 'step' tensor per param on the device (torch/optim/adamw.py _init_group)
        for t in trainables:
            gpu += 2 * alloc(t.numel * BYTES[t.dtype]) + alloc(4)
        formula = (f"AdamW (fused): 2 states × param dtype per trainable element ({numel:,} elements in "
                   f"{n_tensors} tensors) + one fp32 step tensor each; torch/optim/adamw.py")
    elif o == "adamw-foreach":
        # torch.optim.AdamW's CUDA default (foreach=True): the same two states, but 'step' lives on the CPU when
        # neither fused nor capturable (torch 2.13 optim/adam.py:164-175 "special device hosting for step")
        for t in trainables:
            gpu += 2 * alloc(t.numel * BYTES[t.dtype])
        formula = (f"AdamW (foreach): 2 states × param dtype per trainable element ({numel:,} elements in "
                   f"{n_tensors} tensors), step counters on the CPU; torch/optim/adam.py _multi_tensor_adam")
    elif o in ("adamw-8bit", "paged-adamw-8bit"):
        for t in trainables:
            parts = adam8bit_state_parts(t.numel)
            big = [b for k, b in parts.items() if k.startswith("state")]
            small = [b for k, b in parts.items() if k.startswith("absmax")]
            if o == "paged-adamw-8bit" and t.numel >= PAGED_MIN_NUMEL:
                paged += sum(big)
            else:
                gpu += sum(alloc(b) for b in big)
            gpu += sum(alloc(b) for b in small)
        # the shared dynamic/udynamic quantization maps, moved to the GPU with the first 8-bit state only
        # (Optimizer2State.init_state: tensors below min_8bit_size never touch them); in backward, one optimizer
        # per parameter (torchtune recipes/full_finetune_single_device.py:468-473) moves its own pair: the maps are
        # per optimizer instance (bitsandbytes 0.50.2 optim/optimizer.py:134 self.name2qmap, :513-516 .to(p.device))
        eight_bit = sum(1 for t in trainables if "absmax1" in adam8bit_state_parts(t.numel))
        if eight_bit:
            gpu += 2 * alloc(256 * 4) * (eight_bit if setup.optim_in_bwd else 1)
        formula = ("bitsandbytes AdamW8bit: uint8 exp_avg/exp_avg_sq + fp32 absmax per 256 for tensors >= 4096 "
                   "elements, fp32 states below (bitsandbytes/optim/optimizer.py Optimizer2State.init_state)"
                   + ("; paged (cudaMallocManaged) for tensors >= 1e5 elements (get_state_buffer)"
                      if o.startswith("paged") else ""))
    elif o == "paged-adamw":
        for t in trainables:
            b = 2 * t.numel * 4
            if t.numel >= PAGED_MIN_NUMEL:
                paged += b
            else:
                gpu += 2 * alloc(t.numel * 4)
        formula = ("bitsandbytes PagedAdamW (32-bit): two fp32 states; tensors >= 1e5 elements in paged unified "
                   "memory (bitsandbytes/optim/optimizer.py get_state_buffer)")
    elif o == "lion":
        for t in trainables:
            gpu += alloc(t.numel * 4)
        formula = "bitsandbytes Lion (32-bit): one fp32 exp_avg per element (Optimizer1State)"
    elif o == "adafactor":
        for t in trainables:
            if len(t.shape) >= 2:
                rows = 1
                for d in t.shape[:-1]:
                    rows *= d
                cols = t.shape[-1]
                gpu += alloc(rows * BYTES[t.dtype]) + alloc(cols * BYTES[t.dtype] * (rows // max(t.shape[-2], 1)))
            else:
                gpu += alloc(t.numel * BYTES[t.dtype])
            gpu += alloc(4)      # state["RMS"]: a 0-dim tensor on the device per parameter
        formula = ("transformers Adafactor (beta1=None): factored row/column second moments for matrices, a "
                   "full one for vectors, and a 0-dim RMS tensor per parameter (transformers/optimization.py "
                   "Adafactor.step)")
    else:  # sgd
        formula = "SGD without momentum (HF Trainer 'sgd'): no state"
    return gpu, paged, formula


def optimizer_step_transient(trainables: tuple[TrainableTensor, ...], setup: Setup) -> int:
    """Temporaries of ``optimizer.step()``: fused AdamW and bitsandbytes kernels update in place; Adafactor
    builds ``grad**2 + eps`` and the update per tensor (one tensor at a time); foreach AdamW builds
    ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`` for a whole (device, dtype) group at once, and the
    next group's list is made before the previous one is rebound (torch 2.13 optim/adam.py _multi_tensor_adam:
    no ``del``), so two consecutive groups can coexist."""
    trainables = stepped(trainables)
    if setup.optim == "adafactor" and trainables:
        biggest = max(trainables, key=lambda t: t.numel)
        return 2 * alloc(biggest.numel * BYTES[biggest.dtype])
    if setup.optim == "adamw-foreach" and trainables:
        groups: dict[str, int] = {}          # Optimizer._group_tensors_by_device_and_dtype: first-seen order
        for t in trainables:
            groups[t.dtype] = groups.get(t.dtype, 0) + alloc(t.numel * BYTES[t.dtype])
        sizes = list(groups.values())
        return max(a + b for a, b in zip([0, *sizes], sizes, strict=False))
    return 0


def largest_gradient(trainables: tuple[TrainableTensor, ...]) -> int:
    """Allocator bytes of the largest single gradient (in its parameter's dtype)."""
    trainables = stepped(trainables)
    return max((alloc(t.numel * BYTES[t.dtype]) for t in trainables), default=0)


def step_timeline(timeline: StateTerms, trainables: tuple[TrainableTensor, ...], setup: Setup,
                  distributed: bool = False) -> StateTerms:
    """The timeline's fixed terms for ``setup``'s optimizer: as built, or with the step in backward
    (:func:`~.timeline.optimizer_in_backward`: the largest gradient and one tensor's step temporaries). Several
    GPUs keep the timeline as built (a warning says so)."""
    trainables = stepped(trainables)
    if not setup.optim_in_bwd or distributed or not setup.training:
        return timeline
    # one optimizer per parameter: the step's temporaries are one tensor's, the largest
    largest = max(trainables, key=lambda t: alloc(t.numel * BYTES[t.dtype]), default=None)
    return optimizer_in_backward(timeline, largest_gradient(trainables),
                                 optimizer_step_transient((largest,) if largest is not None else (), setup))
