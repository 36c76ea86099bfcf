"""``vramplan serve``: a serving engine's own KV-cache budget, blocks and concurrency (vLLM, SGLang)."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import SetupError
from ..setup import MAX_BATCH, MAX_GPUS, MAX_SEQ
from .render import echo_json, table, warn
from .serve_sweep import parse_sweep, sweep_rows


class _Count(click.ParamType):
    """An integer option with an upper bound (issue 18: a 400-digit ``--max-num-batched-tokens`` overflowed a
    float when printed), quoted briefly when too long; lower bounds stay with the engine's own checks."""

    name = "integer"

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from ..options import read_int

        try:
            n = read_int(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if n > self.maximum:
            text = str(n)
            got = text if len(text) <= 24 else f"{text[:8]}...{text[-4:]} ({len(text):,} digits)"
            self.fail(f"must be at most {self.maximum:,}, got {got}", param, ctx)
        return n


#: the options only one engine reads: given with the other, they are named in a warning, never dropped silently
ENGINE_OPTIONS = {
    "vllm": ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "block_size", "non_torch_memory",
             "activation_memory", "cudagraph_memory", "enforce_eager"),
    "sglang": ("mem_fraction_static", "page_size", "cuda_context"),
}
_ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}


def ignored_warnings(ctx: click.Context, engine: str, target_concurrency: int | None) -> list[str]:
    """One warning per kind of option given on the command line that this run does not read."""
    from click.core import ParameterSource

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)

    out = []
    for other, names in ENGINE_OPTIONS.items():
        unused = ["--" + n.replace("_", "-") for n in names if other != engine and given(n)]
        if unused:
            out.append(f"{', '.join(unused)} ignored: {'it is' if len(unused) == 1 else 'they are'} "
                       f"{_ENGINE_NAMES[other]}'s, and --engine is {engine}")
    if target_concurrency is None and given("prices_path"):
        out.append("--prices ignored: it ranks the setups found for --target-concurrency C; pass that too")
    return out


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from ..units import parse_size

    return parse_size(value)


def _plan(engine: str, spec, gpu, tp: int, o: dict[str, Any]):
    """The engine's plan for one card and TP size (the one place options become plan arguments)."""
    if engine == "vllm":
        from ..serve.vllm import DEFAULT_GPU_MEMORY_UTILIZATION, NON_TORCH_BYTES, plan_vllm

        u = o["gpu_memory_utilization"]
        return plan_vllm(
            spec, gpu, tp=tp, max_model_len=o["max_model_len"],
            gpu_memory_utilization=DEFAULT_GPU_MEMORY_UTILIZATION if u is None else u,
            max_num_seqs=o["max_num_seqs"], max_num_batched_tokens=o["max_num_batched_tokens"],
            kv_cache_dtype=o["kv_cache_dtype"], quant=o["quant"], dtype=o["dtype"], block_size=o["block_size"],
            non_torch_bytes=NON_TORCH_BYTES if o["non_torch_memory"] is None else o["non_torch_memory"],
            cudagraph_bytes=o["cudagraph_memory"], enforce_eager=o["enforce_eager"],
            activation_bytes=o["activation_memory"])
    from ..serve.sglang import CUDA_CONTEXT_BYTES, plan_sglang

    if o["mem_fraction_static"] is None:
        raise SetupError("--engine sglang needs --mem-fraction-static: SGLang chooses it from the card's "
                         "memory and TP size (sglang/srt/arg_groups/memory_hook.py); pass the value it logs "
                         "or the one you launch with, e.g. 0.88")
    return plan_sglang(spec, gpu, mem_fraction_static=o["mem_fraction_static"], tp=tp,
                       max_model_len=o["max_model_len"], kv_cache_dtype=o["kv_cache_dtype"], quant=o["quant"],
                       dtype=o["dtype"], page_size=o["page_size"],
                       cuda_context_bytes=CUDA_CONTEXT_BYTES if o["cuda_context"] is None else o["cuda_context"])


def plan_data(p) -> dict[str, Any]:
    """The JSON of one engine plan: every number the text view prints, in bytes."""
    from ..serve.budget import budget_segments

    common = {
        "engine": "vllm" if hasattr(p, "num_blocks") else "sglang", "release": p.release, "model": p.model,
        "gpu": p.gpu, "tp": p.tp, "max_model_len": p.max_model_len, "dtype": p.dtype,
        "kv_cache_dtype": p.kv_cache_dtype, "quant": p.quant, "total_bytes": p.total_bytes,
        "components": [{"name": c.name, "bytes": c.bytes, "formula": c.formula} for c in p.components],
        "weights_bytes": p.weights_bytes, "available_kv_bytes": p.available_kv_bytes,
        "max_concurrency": p.max_concurrency, "fits": p.fits,
        "budget_bytes": budget_segments(p),      # the whole card, segment by segment (the --html page's chart)
    }
    if common["engine"] == "vllm":
        common.update({
            "gpu_memory_utilization": p.gpu_memory_utilization, "requested_bytes": p.requested_bytes,
            "max_num_seqs": p.max_num_seqs, "max_num_batched_tokens": p.max_num_batched_tokens,
            "block_size": p.block_size, "non_kv_bytes": p.non_kv_bytes,
            "kv_groups": [{"kind": g.kind, "layers": len(g.layers), "padded_to": g.size,
                           "page_bytes": g.page_bytes, "sliding_window": g.sliding_window} for g in p.groups],
            "bytes_per_block": p.bytes_per_block, "num_gpu_blocks": p.num_blocks,
            "kv_cache_bytes": p.kv_cache_bytes, "blocks_per_request": p.blocks_per_request,
            "kv_cache_tokens": p.kv_cache_tokens,
        })
    else:
        common.update({
            "mem_fraction_static": p.mem_fraction_static, "pre_model_load_bytes": p.pre_model_load_bytes,
            "page_size": p.page_size, "cell_bytes": p.cell_bytes,
            "max_total_num_tokens": p.max_total_num_tokens, "k_size_bytes": p.k_size_bytes,
        })
    return common


def _write_page(path: str, data: dict[str, Any]) -> None:
    """``--html``: the page of ``data`` (what --json prints), written atomically."""
    from ..extras import require

    require("report", "--html")
    from ..io import atomic_write_text
    from ..report import serve_page

    atomic_write_text(path, serve_page(data))


def _option(o) -> dict[str, Any]:
    return {"gpu": o.gpu.name, "tp": o.tp, "total_memory_bytes": o.total_memory_bytes,
            "usd_per_hour": o.usd_per_hour, "max_concurrency": o.plan.max_concurrency}


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f}"


def plan_text(d: dict[str, Any], explain: bool) -> str:
    """The budget table and the engine's own log lines, from :func:`plan_data`."""
    tp = f", TP {d['tp']}" if d["tp"] > 1 else ""
    lines = [f"{d['model']} on {d['gpu']}{tp} — {d['release']} accounting, weights {d['dtype']}"
             + (f" ({d['quant']})" if d["quant"] != "none" else "")
             + f", KV cache {d['kv_cache_dtype']}, max_model_len {d['max_model_len']:,}", ""]
    if d["engine"] == "vllm":
        rows = [["requested (total × gpu_memory_utilization)", _gib(d["requested_bytes"])]]
        rows += [[f"− {c['name']}", _gib(c["bytes"])] for c in d["components"]]
        rows.append(["= available for the KV cache", _gib(d["available_kv_bytes"])])
    else:
        rows = [["free before the weights load", _gib(d["pre_model_load_bytes"])]]
        rows += [[f"− {c['name']}", _gib(c["bytes"])] for c in d["components"]]
        rows.append(["= available for the KV pool", _gib(d["available_kv_bytes"])])
    lines.append(table(["per GPU", "GiB"], rows, "lr"))
    if explain:
        lines.append("")
        lines += [f"  {c['name']}: {c['formula']}" for c in d["components"]]
    lines.append("")
    if d["engine"] == "vllm":
        kinds: dict[str, int] = {}
        for g in d["kv_groups"]:
            label = f"{g['kind']} ×{g['layers']}" + (f" (window {g['sliding_window']:,})" if g["sliding_window"]
                                                      else "")
            kinds[label] = kinds.get(label, 0) + 1
        groups = ", ".join(f"{n} groups of {label}" if n > 1 else label for label, n in kinds.items())
        lines += [f"KV groups: {groups}; {d['bytes_per_block']:,} B per block of {d['block_size']} tokens",
                  f"# GPU blocks: {d['num_gpu_blocks']:,}",
                  f"Available KV cache memory: {_gib(d['available_kv_bytes'])} GiB",
                  f"GPU KV cache size: {d['kv_cache_tokens']:,} tokens",
                  f"Maximum concurrency for {d['max_model_len']:,} tokens per request: {d['max_concurrency']:.2f}x"]
        if explain:
            lines.append(f"  {d['blocks_per_request']:,} blocks per request at max_model_len "
                         "(get_max_concurrency_for_kv_cache_config)")
    else:
        lines += [f"KV Cache is allocated. #tokens: {d['max_total_num_tokens']}, K size: "
                  f"{_gib(d['k_size_bytes'])} GB, V size: {_gib(d['k_size_bytes'])} GB   (SGLang's GB are GiB)",
                  f"{d['cell_bytes']:,} B per token; concurrency at {d['max_model_len']:,} tokens: "
                  f"{d['max_concurrency']:.2f}x"]
    if not d["fits"]:
        lines.append(f"does not fit: one request of {d['max_model_len']:,} tokens needs more KV cache than is "
                     "left (the engine refuses to start); lower --max-model-len or raise the memory fraction")
    return "\n".join(lines)


@click.command(short_help="KV-cache budget, blocks and max concurrency as vLLM or SGLang compute them.")
@click.argument("model")
@click.option("--engine", type=click.Choice(["vllm", "sglang"]), default="vllm", show_default=True,
              help="Serving engine whose memory accounting to reproduce.")
@click.option("--gpu", "gpu_name", required=True, metavar="CARD",
              help="A card from `vramplan gpus` or a size such as 80GB / 80GiB.")
@click.option("--tp", type=_Count(MAX_GPUS), default=1, show_default=True, help="Tensor-parallel size (GPUs per replica).")
@click.option("--max-model-len", type=_Count(MAX_SEQ), default=None,
              help="Tokens per request (default: the longest the engine accepts: max_position_embeddings, "
                   "rope-scaled where vLLM scales it).")
@click.option("--gpu-memory-utilization", type=float, default=None,
              help="vLLM: fraction of the card the engine may use [default: 0.92, vLLM 0.33].")
@click.option("--mem-fraction-static", type=float, default=None,
              help="SGLang: fraction for weights + KV pool (required with --engine sglang).")
@click.option("--max-num-seqs", type=_Count(MAX_BATCH), default=None,
              help="vLLM: sequences per step; the profile run samples min(this, batched tokens) rows "
                   "[default: vllm serve's for the card: 1024 on >= 70 GiB cards but A100, else 256].")
@click.option("--max-num-batched-tokens", type=_Count(MAX_SEQ), default=None,
              help="vLLM: tokens per step, the size of the profiling forward pass [default: vllm serve's for "
                   "the card: 16384 on >= 160 GiB, 8192 on >= 70 GiB but A100, else 2048].")
@click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16", "fp16"]),
              default="auto", show_default=True, help="KV-cache element type; auto = the model dtype.")
@click.option("--quant", type=click.Choice(["none", "fp8"]), default="none", show_default=True,
              help="Weight format: the model dtype, or online FP8 (vLLM --quantization fp8).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16"]), default="auto", show_default=True,
              help="Model dtype (auto: the config's torch_dtype; float32 checkpoints load in bf16).")
@click.option("--block-size", type=_Count(MAX_SEQ), default=16, show_default=True, help="vLLM: tokens per KV block.")
@click.option("--page-size", type=_Count(MAX_SEQ), default=1, show_default=True, help="SGLang: tokens per KV page.")
@click.option("--non-torch-memory", callback=_size, default=None, metavar="SIZE",
              help="vLLM: measured non-torch memory (its log's non_torch_memory) [default: 256MiB].")
@click.option("--activation-memory", callback=_size, default=None, metavar="SIZE",
              help="vLLM: measured activation peak of the profile run (default: estimated).")
@click.option("--cudagraph-memory", callback=_size, default=None, metavar="SIZE",
              help="vLLM: measured CUDA-graph memory (default: estimated; 0 with --enforce-eager).")
@click.option("--enforce-eager", is_flag=True, help="vLLM: no CUDA graphs.")
@click.option("--cuda-context", callback=_size, default=None, metavar="SIZE",
              help="SGLang: memory in use before the weights load [default: 512MiB].")
@click.option("--target-concurrency", type=_Count(MAX_BATCH), default=None, metavar="C",
              help="Find the smallest TP size per card, and the setup with the least GPU memory, serving C "
                   "sequences of --max-model-len tokens.")
@click.option("--prices", "prices_path", default=None, type=click.Path(dir_okay=False),
              help="With --target-concurrency: a YAML file {gpu-name: usd_per_hour} (as `vramplan gpus "
                   "--prices`); setups are then ranked by TP × price, unpriced cards last.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a Hub model's own config code.")
@click.option("--explain", is_flag=True, help="Show each component's formula and source.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the result as a self-contained HTML page (the budget chart, components, KV groups; "
                   "or the setups of --target-concurrency).")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2",
              help="Plan every combination, one row each, e.g. --sweep tp=1,2,4,8 --sweep max-model-len=4096,8192 "
                   "(keys: engine, gpu, tp, max-model-len, gpu-memory-utilization, mem-fraction-static, "
                   "max-num-seqs, max-num-batched-tokens, kv-cache-dtype, quant, dtype, block-size, page-size; "
                   "the other options hold for every row).")
@click.option("--format", "fmt", type=click.Choice(["csv", "md", "jsonl", "html"]), default="csv",
              show_default=True, help="With --sweep: the table's format.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="With --sweep: write the table to this file (atomically) instead of stdout.")
def serve(*, model: str, engine: str, gpu_name: str, tp: int, target_concurrency: int | None,
          prices_path: str | None, trust_remote_code: bool, explain: bool, as_json: bool, html_path: str | None,
          sweeps: tuple[str, ...], fmt: str, out: str | None, **opts: Any) -> None:
    """The KV-cache budget of serving MODEL with vLLM or SGLang on --gpu: weights per TP rank, the profiled
    activation peak, CUDA graphs, the KV blocks and the maximum concurrency at --max-model-len, as the
    engine computes them (docs/serving.md cites each rule).

    Exit code 1 when one request of --max-model-len does not fit (the engine would refuse to start), or
    when no card serves --target-concurrency. With --sweep, one row per combination of the swept settings
    (the numbers of `vramplan serve ... --json` for them) and exit code 0; refused combinations are skipped
    with a warning.
    """
    from ..io import check_output_path, refuse_overwriting_input
    from ..profiles import resolve_gpu, resolve_model

    ctx = click.get_current_context()
    axes: dict[str, list[Any]] = {}
    if sweeps:
        for flag, given in (("--json", as_json), ("--explain", explain), ("--html", html_path),
                            ("--target-concurrency", target_concurrency)):
            if given:
                raise SetupError(f"{flag} does not go with --sweep: a sweep prints one row per combination "
                                 "(--format csv|md|jsonl|html, --out FILE)")
        axes = parse_sweep(ctx, sweeps)
    elif out is not None or ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE:
        raise SetupError("--format and --out are the table of --sweep; one plan is --json or --html PATH")
    # an option is ignored when no engine of the run reads it (--sweep engine=vllm,sglang reads both engines')
    unread = [ignored_warnings(ctx, e, target_concurrency) for e in axes.get("engine", [engine])]
    for w in unread[0]:
        if all(w in other for other in unread[1:]):
            warn(w)
    for path, flag in ((html_path, "--html"), (out, "--out")):
        if path:
            check_output_path(path, flag)
    resolved = resolve_model(model, trust_remote_code=trust_remote_code)
    refuse_overwriting_input(html_path, resolved.input_files, "--html")
    refuse_overwriting_input(out, resolved.input_files, "--out")
    spec = resolved.spec
    gpu = resolve_gpu(gpu_name)
    if sweeps:
        cards = {gpu_name: gpu, **{n: resolve_gpu(n) for n in axes.get("gpu_name", ())}}
        base = {**opts, "engine": engine, "gpu_name": gpu_name, "tp": tp}
        rows = sweep_rows(axes, base, lambda s: plan_data(_plan(s["engine"], spec, cards[s["gpu_name"]], s["tp"], s)))
        from ..serve.sweep import row_columns
        from .sweep import render

        text = render(rows, [], fmt, f"vramplan serve sweep: {spec.name}", row_columns(rows))
        if out:
            from ..io import atomic_write_text

            atomic_write_text(out, text)
            click.echo(f"vramplan: wrote {len(rows):,} row{'s' if len(rows) != 1 else ''} to {out}", err=True)
        else:
            click.echo(text, nl=False)
        return
    if target_concurrency is None:
        p = _plan(engine, spec, gpu, tp, opts)
        d = plan_data(p)
        if html_path:
            _write_page(html_path, d)
        if as_json:
            echo_json(d)
        else:
            click.echo(plan_text(d, explain))
        sys.exit(0 if p.fits else 1)

    from ..serve.capacity import smallest_setup

    length = _plan(engine, spec, gpu, tp, opts).max_model_len
    prices = None
    if prices_path is not None:
        from ..planner import load_prices

        prices = load_prices(prices_path)
    fn = lambda g, t: _plan(engine, spec, g, t, opts)  # noqa: E731
    best, options = smallest_setup(spec, target_concurrency, fn, prices=prices)
    mine = smallest_setup(spec, target_concurrency, fn, [gpu], require_bf16=False)[1]
    on_card = mine[0] if mine else None
    data = {"model": spec.name, "engine": engine, "target_concurrency": target_concurrency,
            "max_model_len": length, "gpu": gpu.name,
            "smallest_tp_on_gpu": None if on_card is None else on_card.tp,
            "best": None if best is None else _option(best),
            "options": [_option(o) for o in options]}
    if html_path:
        _write_page(html_path, data)
    if as_json:
        echo_json(data)
    else:
        head = f"{spec.name} with {engine}: {target_concurrency} sequences of {length:,} tokens"
        mine_line = (f"on {gpu.name}: TP {on_card.tp} (max concurrency {on_card.plan.max_concurrency:.2f}x)"
                     if on_card else f"on {gpu.name}: no TP size up to 8 serves it")
        rows = [[o.gpu.name, str(o.tp), _gib(o.total_memory_bytes),
                 "" if o.usd_per_hour is None else f"{o.usd_per_hour:,.2f}", f"{o.plan.max_concurrency:.2f}"]
                for o in options]
        if best is None:
            best_line = "no card of the catalogue serves it at TP <= 8"
        elif best.usd_per_hour is not None:
            best_line = f"cheapest: {best.tp} × {best.gpu.name} ({best.usd_per_hour:,.2f} USD/h)"
        else:
            best_line = (f"least GPU memory: {best.tp} × {best.gpu.name} ({_gib(best.total_memory_bytes)} GiB; "
                         "no prices given: --prices FILE ranks by cost)")
        click.echo("\n".join([head, mine_line, best_line, ""]
                             + ([table(["card", "TP", "total GiB", "USD/h", "max concurrency"], rows, "lrrrr")]
                                if rows else [])))
    sys.exit(0 if best is not None else 1)
