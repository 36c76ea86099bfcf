"""One rank of a multi-process profile: ``python -m vramplan.profiler.worker SPEC.json``.

Started by :mod:`vramplan.profiler.launch` under ``torchrun`` or ``accelerate launch``, which set ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` (and, for accelerate, the engine's ``ACCELERATE_*``/``FSDP_*`` variables).
SPEC is the JSON the parent wrote: the model, the setup, the run options, the launcher and the folder for
``rank<R>.json``. The rank runs :func:`vramplan.profiler.runner.profile_run` for itself and writes its
record there; the parent merges.

Output: rank 0's progress and every rank's warnings as ``vramplan: ...`` lines on stderr (the parent turns
them into its own progress and warnings); libraries' stdout goes to stderr too. SIGTERM — what the launcher
sends the other ranks when one fails — is handled as Ctrl-C, so the rank still writes its record (status
``interrupted``). Exit code: 0 ok, 1 OOM, 2 bad input, 3 error, 130 interrupted — a non-zero code makes the
launcher stop the other ranks instead of leaving them waiting in a collective.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

EXIT = {"ok": 0, "oom": 1, "error": 3, "interrupted": 130}
#: the keys of the spec ``vramplan.profiler.launch`` writes for the ranks
SPEC_KEYS = ("launcher", "setup", "options", "ranks_dir", "model")


def _term_as_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM does what SIGINT does at this moment (raise once, or nothing while the record is written)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        sys.stderr.write("usage: python -m vramplan.profiler.worker SPEC.json (started by vramplan profile)\n")
        return 2
    from ..errors import VramplanError
    from ..io import CONFIG_MAX_BYTES, read_json
    from ..setup import Setup
    from .options import Rank, RunOptions
    from .runner import profile_run

    try:
        # the bounded reader: a FIFO, a device or a damaged file is one line (exit 2), never a hang or a traceback
        spec = read_json(argv[0], CONFIG_MAX_BYTES, what="worker spec")
        missing = [k for k in SPEC_KEYS if not isinstance(spec, dict) or k not in spec]
        if missing:
            raise VramplanError(f"{argv[0]}: the worker spec lacks {', '.join(missing)} (it is written by "
                                "vramplan profile; do not start the worker by hand)")
        rank = Rank.from_env(spec["launcher"])
    except VramplanError as exc:
        sys.stderr.write(f"vramplan: error: {exc}\n")
        return 2
    setup = Setup.from_dict(spec["setup"])
    options = RunOptions(**spec["options"], out=str(Path(spec["ranks_dir"]) / f"rank{rank.rank}.json"), write=True)

    def warn(message: str) -> None:
        sys.stderr.write(f"vramplan: warning: {message}\n")
        sys.stderr.flush()

    def progress(message: str) -> None:
        if rank.rank == 0:
            sys.stderr.write(f"vramplan: rank 0: {message}\n")
            sys.stderr.flush()

    signal.signal(signal.SIGTERM, _term_as_interrupt)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = profile_run(spec["model"], setup, options, warn=warn, progress=progress, rank=rank)
    except VramplanError as exc:
        sys.stderr.write(f"vramplan: error: rank {rank.rank}: {exc}\n")
        return 2
    finally:
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return EXIT[result.status]


if __name__ == "__main__":
    sys.exit(main())
