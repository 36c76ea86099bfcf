"""Rebuild the example reports in this folder from synthetic records, and screenshot them with headless Chromium.

    python reports/examples/make_examples.py            # from the repository root

The run records are made up (``tests/report/report_synthetic.py``: no GPU was available to measure) and the
report page says so in its title; the plan and sweep pages are real estimates. Replace
``runs/*.json`` and ``plan.json`` with real ones (``vramplan profile --out``, ``vramplan plan --json --html``)
and run ``vramplan report`` on them instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "report"))

from report_synthetic import cpu_record, run_record  # noqa: E402

from vramplan.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from vramplan.report import (  # noqa: E402
    bench_rows,
    collect,
    plan_page,
    run_views,
    runs_page,
    table_page,
    to_csv,
    to_markdown,
)

LABEL = "example (synthetic records)"


def dump(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def main() -> None:
    os.chdir(HERE)                      # labels on the page: runs/<name>.json
    runs = {"runs/llama3.1-8b-qlora-rtx4090.json": run_record(),
            "runs/llama3.1-8b-qlora-rtx4090-b8-s4096-oom.json": run_record(status="oom"),
            "runs/smollm2-135m-lora-cpu.json": cpu_record()}
    for name, record in runs.items():
        dump(HERE / name, record)
    # the plan is real: the estimator's answer for Qwen3-14B QLoRA at 2k tokens on an RTX 4090
    from vramplan.estimate import estimate
    from vramplan.planner import plan_page_data
    from vramplan.profiles import resolve_gpu, resolve_model
    from vramplan.setup import Setup

    resolved, gpu = resolve_model("Qwen/Qwen3-14B"), resolve_gpu("rtx-4090")
    setup = Setup.create(method="qlora")
    est = estimate(resolved.spec, setup, gpu).to_dict()
    est["model"] = resolved.name
    plan = plan_page_data(resolved.spec, setup, est, gpu)
    dump(HERE / "plan.json", plan)

    sources = collect(list(runs))
    rows = bench_rows(run_views(sources))
    atomic_write_text(HERE / "index.html", runs_page(sources, title=f"vramplan report: {LABEL}"))
    atomic_write_text(HERE / "benchmark.md", to_markdown(rows))
    atomic_write_text(HERE / "benchmark.csv", to_csv(rows))
    atomic_write_text(HERE / "plan.html", plan_page(plan, title=f"plan: {plan['model']} (vramplan estimate)"))
    grid = plan["grid"]
    sweep = [{"batch": b, "seq": s, "device_used_bytes": grid["device_used_bytes"][i][j],
              "fits": grid["device_used_bytes"][i][j] <= plan["fits"]["capacity_bytes"]}
             for i, b in enumerate(grid["batch"]) for j, s in enumerate(grid["seq"])]
    atomic_write_text(HERE / "sweep.html", table_page(sweep, f"sweep: {plan['model']} on {plan['fits']['gpu']} "
                                                             "(vramplan estimate)"))

    from vramplan.report.browser import Browser

    with Browser(width=1280, height=1000) as browser:
        for page, png, selector in (("index.html", "report.png", None), ("plan.html", "plan.png", None),
                                    ("index.html", "timeline.png", "#run-1-timeline")):
            result = browser.open(HERE / page)
            if result.errors or result.requests:
                raise SystemExit(f"{page}: {result.errors or result.requests}")
            shot = browser.screenshot(selector, full_page=page == "plan.html" and selector is None)
            atomic_write_bytes(HERE / png, shot)
    print(f"wrote {HERE}")


if __name__ == "__main__":
    main()
