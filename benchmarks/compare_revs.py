"""Side-by-side speed of two revisions: cold ``plan``, ``fit`` and a 10,000-row ``sweep``, as HEAD/BASE ratios.

BASE (and HEAD, when given) is checked out into a temporary ``git worktree`` (detached; the repository's
working tree is never touched) and removed afterwards. Without HEAD the repository's working tree is measured
as it is, uncommitted changes included. Each command runs in a fresh interpreter (``python -m vramplan ...``)
with the tree first on ``PYTHONPATH`` and as the working directory, so each tree imports its own ``vramplan``
and its own ``profiles/`` (checked before timing). Runs are interleaved, the order alternating every repeat
(A B, B A, ...) so that drift in machine load falls on both trees alike; one untimed warm-up run per tree and
command first writes the bytecode caches, so "cold" means a fresh process, not a fresh disk. Wall time and
the child's CPU time (``RUSAGE_CHILDREN``, less sensitive to other work on a shared machine) are recorded;
the table shows medians and HEAD/BASE ratios. Outputs of the two trees are compared too (byte-identical, or
the same JSON data with keys in another order, or different), a free check that a redesign kept behaviour.

Results are saved first, with machine info, to ``benchmarks/results/compare_revs-<time>.json``; the table
is rendered from that data.

    python benchmarks/compare_revs.py 3d804d4            # 3d804d4 vs the working tree
    python benchmarks/compare_revs.py 3d804d4 HEAD -n 7  # two commits
    python benchmarks/compare_revs.py --show benchmarks/results/compare_revs-<time>.json   # the table again
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _machine import machine_info  # noqa: E402  (benchmarks/_machine.py)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The sweep of bench_sweep.py: 5 models x 2 methods x 5 ranks x 5 batches x 5 seqs x 2 x 2 x 2 = 10,000 rows.
SWEEP_AXES = {
    "--model": "llama-3.2-1b,qwen3-0.6b,llama-3.1-8b,qwen2.5-7b,mistral-7b-v0.3",
    "--method": "lora,qlora",
    "--rank": "8,16,32,64,128",
    "--batch": "1,2,4,8,16",
    "--seq": "512,1024,2048,4096,8192",
    "--grad-ckpt": "true,false",
    "--optim": "adamw,adamw-8bit",
    "--attn": "sdpa,flash",
    "--gpu": "rtx-4090,a100-80gb,h100-80gb",
}
SWEEP_ROWS = 10_000


def commands(model: str, gpu: str) -> dict[str, list[str]]:
    """name -> argv after ``python -m vramplan``."""
    sweep = ["sweep", *(x for flag, value in SWEEP_AXES.items() for x in (flag, value)), "--format", "jsonl"]
    return {
        "plan": ["plan", model, "--method", "qlora", "--json"],
        "fit": ["fit", model, "--method", "qlora", "--gpu", gpu, "--json"],
        "sweep": sweep,   # 10,000 rows of JSONL to /dev/null
    }


# ------------------------------------------------------------------------------------------------- trees
def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev`` in a temporary detached worktree, removed on exit (the repository's working tree is untouched)."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix=f"vramplan-{sha[:7]}-"))
    tree = tmp / "tree"
    git("worktree", "add", "--detach", "--quiet", str(tree), sha)
    try:
        yield tree
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, capture_output=True)
        with contextlib.suppress(OSError):
            tmp.rmdir()


def describe(rev: str | None) -> dict:
    if rev is None:
        dirty = bool(git("status", "--porcelain", "--", "vramplan", "profiles"))
        return {"rev": "working tree", "commit": git("rev-parse", "HEAD"), "uncommitted_changes": dirty}
    return {"rev": rev, "commit": git("rev-parse", "--verify", f"{rev}^{{commit}}"),
            "subject": git("log", "-1", "--format=%s", rev)[:120]}


def env_for(tree: Path, cache: Path) -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE (set on CI machines and on this one) would make every "cold" run compile the sources
    # anew, which an installed package never does (pip writes the bytecode): the warm-up run writes it here
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE")}
    env.update(PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", VRAMPLAN_CACHE=str(cache), PYTHONHASHSEED="0")
    return env


def check_imports_own_tree(tree: Path, env: dict[str, str]) -> str:
    code = "import vramplan.profiles as p; print(p.__file__); print(p.profiles_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    for path in out:
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{tree}: the child imported {path}, not this tree's copy; is vramplan installed "
                             "non-editable in site-packages?")
    return out[0]


# ----------------------------------------------------------------------------------------------- timing
def run_once(argv: list[str], tree: Path, env: dict[str, str], sink: Path | None = None) -> dict:
    """One fresh interpreter; wall seconds, child CPU seconds, exit code, and the output's digest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(sink or os.devnull, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "vramplan", *argv], cwd=tree, env=env, stdout=out,
                              stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # 1 = "does not fit", a valid answer; an uncaught exception exits 1 too, but with a traceback.
    if proc.returncode not in (0, 1) or b"Traceback (most recent call last)" in proc.stderr:
        raise SystemExit(f"{tree}: vramplan {' '.join(argv[:2])} ... exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rc": proc.returncode}


def data_digest(data: bytes) -> str:
    """Digest of the JSON (one document, or JSON Lines) with key order ignored: the same numbers in a
    different column order count as the same data."""
    try:
        docs = [json.loads(data)]
    except ValueError:
        docs = [json.loads(line) for line in data.splitlines() if line.strip()]
    canon = "\n".join(json.dumps(d, sort_keys=True) for d in docs)
    return hashlib.sha256(canon.encode()).hexdigest()


def warm_up(name: str, argv: list[str], tree: Path, env: dict[str, str], scratch: Path) -> dict:
    """Untimed first run: writes bytecode caches and records the output (digest, rows) for the comparison."""
    sink = scratch / f"{name.replace(' ', '_')}-{hashlib.sha1(str(tree).encode()).hexdigest()[:8]}.out"
    r = run_once(argv, tree, env, sink)
    data = sink.read_bytes()
    sink.unlink()
    info = {"rc": r["rc"], "stdout_sha256": hashlib.sha256(data).hexdigest(), "stdout_bytes": len(data),
            "data_sha256": data_digest(data)}
    if name == "sweep":
        info["rows"] = data.count(b"\n")
        if info["rows"] != SWEEP_ROWS:
            raise SystemExit(f"{tree}: the sweep wrote {info['rows']:,} rows, expected {SWEEP_ROWS:,}")
    return info


def measure(trees: dict[str, Path], cmds: dict[str, list[str]], repeats: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="vramplan-compare-"))
    envs = {side: env_for(tree, scratch / f"cache-{side}") for side, tree in trees.items()}
    imported = {side: check_imports_own_tree(tree, envs[side]) for side, tree in trees.items()}
    results: dict = {}
    for name, argv in cmds.items():
        outputs = {side: warm_up(name, argv, trees[side], envs[side], scratch) for side in trees}
        samples: dict[str, list[dict]] = {side: [] for side in trees}
        for i in range(repeats):
            order = ["base", "head"] if i % 2 == 0 else ["head", "base"]
            for side in order:
                samples[side].append(run_once(argv, trees[side], envs[side]))
        results[name] = {"argv": argv, "outputs": outputs,
                         "identical_output": outputs["base"]["stdout_sha256"] == outputs["head"]["stdout_sha256"],
                         "same_data": outputs["base"]["data_sha256"] == outputs["head"]["data_sha256"],
                         "samples": samples,
                         "median": {side: {k: statistics.median(s[k] for s in samples[side])
                                           for k in ("wall_s", "cpu_s")} for side in trees}}
        m = results[name]["median"]
        results[name]["ratio_head_over_base"] = {k: m["head"][k] / m["base"][k] for k in ("wall_s", "cpu_s")}
        print(f"  {name}: done", file=sys.stderr)
    with contextlib.suppress(OSError):
        for p in sorted(scratch.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        scratch.rmdir()
    return {"imported_from": imported, "results": results}


# ------------------------------------------------------------------------------------------------ views
def render_table(doc: dict) -> str:
    """The text view of a saved result (computes nothing: ratios and medians are in the data)."""
    base, head = doc["base"], doc["head"]
    lines = [f"BASE {base['rev']} ({base['commit'][:10]})   HEAD {head['rev']} ({head['commit'][:10]}"
             + (", uncommitted changes" if head.get("uncommitted_changes") else "") + ")",
             f"{doc['repeats']} interleaved runs each, medians; {doc['machine']['cpu']} x{doc['machine']['cpu_count']},"
             f" load average at start {' '.join(f'{x:.2f}' for x in doc['machine']['loadavg_at_start'] or [])}",
             "",
             f"{'command':12s} {'BASE wall s':>11s} {'HEAD wall s':>11s} {'ratio':>6s}   "
             f"{'BASE cpu s':>10s} {'HEAD cpu s':>10s} {'ratio':>6s}   output"]
    for name, r in doc["results"].items():
        m, q = r["median"], r["ratio_head_over_base"]
        lines.append(f"{name:12s} {m['base']['wall_s']:11.3f} {m['head']['wall_s']:11.3f} {q['wall_s']:6.3f}   "
                     f"{m['base']['cpu_s']:10.3f} {m['head']['cpu_s']:10.3f} {q['cpu_s']:6.3f}   "
                     + ("identical" if r["identical_output"] else
                        "same data, key order differs" if r["same_data"] else "DIFFERENT DATA"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--show"]:  # render a saved result; measure nothing
        if len(argv) != 2:
            raise SystemExit("usage: compare_revs.py --show RESULT.json")
        print(render_table(json.loads(Path(argv[1]).read_text())))
        return 0
    ap.add_argument("base", help="the revision to compare against (e.g. the previous commit)")
    ap.add_argument("head", nargs="?", default=None, help="a revision (default: the working tree as it is)")
    ap.add_argument("-n", "--repeats", type=int, default=5, help="timed runs per tree and command (default 5)")
    ap.add_argument("--model", default="meta-llama/Meta-Llama-3-8B", help="model of the plan and fit commands")
    ap.add_argument("--gpu", default="rtx-4090", help="card of the fit command")
    ap.add_argument("--only", default=None, help="comma list of commands to time: plan, fit, sweep")
    ap.add_argument("--out", type=Path, default=None,
                    help="result JSON (default benchmarks/results/compare_revs-<time>.json)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    cmds = commands(args.model, args.gpu)
    if args.only:
        wanted = [c.strip() for c in args.only.split(",")]
        unknown = [c for c in wanted if c not in cmds]
        if unknown:
            ap.error(f"--only: unknown command {unknown}; choose from {', '.join(cmds)}")
        cmds = {k: v for k, v in cmds.items() if k in wanted}

    started = dt.datetime.now(dt.timezone.utc)
    doc = {"benchmark": "compare_revs", "time_utc": started.isoformat(timespec="seconds"),
           "machine": machine_info("vramplan"), "python_executable": sys.executable,
           "base": describe(args.base), "head": describe(args.head), "repeats": args.repeats}
    with contextlib.ExitStack() as stack:
        base_tree = stack.enter_context(checkout(args.base))
        head_tree = REPO if args.head is None else stack.enter_context(checkout(args.head))
        doc.update(measure({"base": base_tree, "head": head_tree}, cmds, args.repeats))
    doc["elapsed_s"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()

    stamp = doc["time_utc"].replace(":", "").replace("+0000", "Z")
    out = args.out or HERE / "results" / f"compare_revs-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    print(render_table(json.loads(out.read_text())))
    print(f"saved {out} ({doc['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
