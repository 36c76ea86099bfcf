"""Real FSDP1 (``torch.distributed.fsdp.FullyShardedDataParallel``) on CPU ranks (gloo), for tests/estimate/test_fsdp1.py.

``python fsdp1_worker.py CASES.json OUT.json WORLD_SIZE PORT``: for each case (a list of parameters: dotted name,
shape, dtype, requires_grad, decoder layer or null, adapter or not), every rank builds a module tree with exactly
those parameters, wraps it as the stacks do (``ModuleWrapPolicy`` on the decoder-layer class, each leaf module
whose weight requires grad its own unit: peft 0.21.2 ``fsdp_auto_wrap_policy``'s lambda, copied below), with
``MixedPrecision(param_dtype, reduce_dtype)`` and ``use_orig_params`` as given, runs one forward, backward and
AdamW step, and reports per FSDP unit what torch allocated: the sharded FlatParameter, its padding, the
all-gather destination ``_full_param_padded``, the sharded gradient; and the optimizer's state sizes per rank.
Rank 0 also records the CPU allocations of its second forward and backward (``torch.profiler`` memory events)
and when each post-backward hook ran. Only torch is imported (the children would otherwise spend most of their time
importing).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Node(nn.Module):
    """A module holding some of the parameters directly and the rest in children, called in insertion order.

    Forward multiplies a one-element activation by (1 + mean) of each direct parameter, so every parameter
    gets a gradient and backward visits the modules in reverse forward order, as a transformer's does."""

    def forward(self, x):
        for p in self._parameters.values():
            x = x * (1 + p.float().mean()).to(x.dtype)
        for child in self._modules.values():
            x = child(x)
        return x


class Layer(Node):
    """The decoder layer class the wrap policy names."""


def build(params: list[dict]) -> nn.Module:
    root = Node()
    for p in params:
        *path, leaf = p["name"].split(".")
        mod = root
        for i, part in enumerate(path):
            if part not in mod._modules:
                is_layer = p["layer"] is not None and ".".join(path[: i + 1]).endswith(f"layers.{p['layer']}")
                mod.add_module(part, Layer() if is_layer else Node())
            mod = mod._modules[part]
        t = torch.randn(p["shape"]).to(DTYPES[p["dtype"]]) * 0.01
        mod.register_parameter(leaf, nn.Parameter(t, requires_grad=p["requires_grad"]))
    for p in params:                           # tied weights: the same Parameter under a second name
        if p.get("tied_to"):
            *path, leaf = p["name"].split(".")
            src = root.get_parameter(p["tied_to"])
            mod = root
            for part in path:
                if part not in mod._modules:
                    mod.add_module(part, Node())
                mod = mod._modules[part]
            mod.register_parameter(leaf, src)
    return root


def peft_lambda(module: nn.Module) -> bool:
    """peft 0.21.2 utils/other.py:1294-1299 ``lambda_policy_fn``."""
    return (len(list(module.named_children())) == 0 and getattr(module, "weight", None) is not None
            and module.weight.requires_grad)


def allocations(prof) -> dict:
    """The CPU allocations of the profiled window, from the profiler's memory events: ``[bytes, t_alloc,
    t_free or None]`` each, and the (start, end) of every ``FullyShardedDataParallel._post_backward_hook``."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as g:
            events = json.load(g)["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
                 key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    open_: dict[int, list] = {}
    out = []
    for e in mem:
        a, b = e["args"]["Addr"], e["args"]["Bytes"]
        if b > 0:
            open_[a] = [b, e["ts"], None]
            out.append(open_[a])
        elif a in open_:
            open_.pop(a)[2] = e["ts"]
    hooks = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                   if e.get("ph") == "X" and e.get("name") == "FullyShardedDataParallel._post_backward_hook")
    return {"allocs": out, "hooks": hooks}


def _flat_params(fsdp: nn.Module, fsdp_cls: type):
    """(full name of the unit's first parameter, FlatParameter) per FSDP instance that holds parameters."""
    for name, m in fsdp.named_modules():
        if isinstance(m, fsdp_cls) and m._handle is not None:
            prefix = name.replace("_fsdp_wrapped_module.", "").replace("_fsdp_wrapped_module", "")
            fp = m._handle.flat_param
            first = fp._fqns[0].replace("_fsdp_wrapped_module.", "")
            yield (f"{prefix}.{first}" if prefix else first), fp


def run(rank: int, world: int, port: int, cases: list[dict], out_path: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _or_policy, lambda_auto_wrap_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    for case in cases:
        torch.manual_seed(0)
        model = build(case["params"])
        policy = ModuleWrapPolicy({Layer})
        if case["peft_policy"]:
            policy = functools.partial(_or_policy, policies=[
                functools.partial(lambda_auto_wrap_policy, lambda_fn=peft_lambda), policy])
        mp_dtype = DTYPES[case["param_dtype"]] if case["param_dtype"] else None
        fsdp = FSDP(model, auto_wrap_policy=policy, device_id=torch.device("cpu"),
                    use_orig_params=case["use_orig_params"],
                    mixed_precision=MixedPrecision(param_dtype=mp_dtype, reduce_dtype=mp_dtype)
                    if mp_dtype else None)
        units = {}
        for key, fp in _flat_params(fsdp, FSDP):
            units[key] = {"shard_numel": fp.numel(), "dtype": str(fp.dtype),
                                         "unpadded_unsharded": int(fp._unpadded_unsharded_size.numel()),
                                         "requires_grad": fp.requires_grad}
        opt = torch.optim.AdamW([p for p in fsdp.parameters() if p.requires_grad], lr=1e-3)
        x = torch.ones(1)
        fsdp(x).float().sum().backward()          # lazy init (allocates _full_param_padded) in this forward
        fsdp.zero_grad(set_to_none=True)
        trace = None
        if rank == 0 and case.get("trace"):
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fsdp(x).float().sum().backward()
            trace = allocations(prof)
        else:
            fsdp(x).float().sum().backward()
        for key, fp in _flat_params(fsdp, FSDP):
            u = units[key]
            u["full_param_padded"] = [fp._full_param_padded.numel(), str(fp._full_param_padded.dtype)]
            u["grad"] = None if fp.grad is None else [fp.grad.numel(), str(fp.grad.dtype)]
        opt.step()
        names = {id(p): n.replace("_fsdp_wrapped_module.", "") for n, p in fsdp.named_parameters()}
        states = [(names[id(p)], k, int(v.numel()), str(v.dtype)) for p, s in opt.state.items() for k, v in s.items()]
        results.append({"units": units, "opt_states": states,
                        "trace": trace})
        del fsdp, model, opt
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    cases_path, out_path, world, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(cases_path) as f:
        cases = json.load(f)
    mp.spawn(run, args=(world, port, cases, out_path), nprocs=world)
