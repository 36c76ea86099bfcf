"""Machine facts recorded with every benchmark result (pytest-benchmark style: data first, views later)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine_info(watch: str = "vramplan") -> dict:
    """CPU model and count, Python, platform, load average, and the git commit with whether ``watch`` (a path
    under the repository) has uncommitted changes, so a result names the code it measured."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=HERE).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", watch], capture_output=True,
                                    text=True, check=False, cwd=HERE.parent).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "commit": commit, "worktree_dirty": dirty}
