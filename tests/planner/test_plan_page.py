"""``plan_page_data`` (``plan --html``): the GPU ladder and the batch × seq grid, equal to ``estimate``."""

from __future__ import annotations

from vramplan.estimate import estimate
from vramplan.planner import plan_page_data
from vramplan.profiles import gpu_catalogue, resolve_gpu, resolve_model
from vramplan.setup import Setup


def test_ladder_and_grid():
    spec = resolve_model("llama-3.2-1b").spec
    setup = Setup.create(method="qlora", batch=3, seq=1000)
    g = resolve_gpu("rtx-4090")
    plan_json = estimate(spec, setup, g, 0.1).to_dict()
    d = plan_page_data(spec, setup, plan_json, g)
    assert {k: d[k] for k in plan_json} == plan_json
    assert [r["gpu"] for r in d["ladder"]] == [c.name for c in gpu_catalogue()]
    for r, c in zip(d["ladder"], gpu_catalogue(), strict=True):
        f = estimate(spec, setup, c, 0.1).fit
        assert r == {"gpu": c.name, "capacity_bytes": c.memory_bytes, "device_used_bytes":
                     estimate(spec, setup, c).device_used_bytes, "headroom_bytes": f.headroom_bytes, "fits": f.fits}
    grid = d["grid"]
    assert 3 in grid["batch"] and 1000 in grid["seq"]
    assert grid["batch"] == sorted(grid["batch"]) and grid["seq"] == sorted(grid["seq"])
    assert min(grid["seq"]) >= 128 and max(grid["batch"]) >= 16
    assert len(grid["device_used_bytes"]) == len(grid["batch"])
    for i, b in enumerate(grid["batch"]):
        assert len(grid["device_used_bytes"][i]) == len(grid["seq"])
        for j, s in enumerate(grid["seq"]):
            assert grid["device_used_bytes"][i][j] == estimate(spec, setup.with_(batch=b, seq=s), g).device_used_bytes
    mid = grid["device_used_bytes"][grid["batch"].index(3)][grid["seq"].index(1000)]
    assert mid == plan_json["device_used_bytes"]


def test_commands_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom vramplan.cli.main import cli\n"
            "r = CliRunner()\n"
            "for a in (['fit','qwen3-0.6b','--gpu','t4'], ['sweep','--model','qwen3-0.6b','--rank','8,16'],"
            " ['gpus','--fits','qwen3-0.6b']):\n"
            "    res = r.invoke(cli, a)\n    assert res.exit_code in (0, 1), res.output\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
