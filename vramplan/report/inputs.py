"""Collect the JSON files a report is made from: files, directories (every ``*.json``) and summaries.

A summary (``reports/validation/summary.json``: ``{"runs": [<record paths>], ...}``) stands for the records
it lists, paths relative to the summary's folder (or else to the working directory). A file that cannot be
read or is not JSON is kept as a :class:`Source` with its problem, so that the page can say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VramplanError
from .views import RUN_SCHEMA


class ReportInputError(VramplanError):
    """No input file to make a report from."""


@dataclass(frozen=True)
class Source:
    """One input: where it came from, and its parsed JSON or why there is none."""

    label: str
    data: Any = None
    problem: str | None = None


def read_json(path: Path, label: str) -> Source:
    """Parse one file; a missing file, anything but a regular file (a FIFO would block, ``/dev/zero`` never
    ends), more than :data:`vramplan.io.RECORD_MAX_BYTES`, non-UTF-8 bytes, invalid or too deeply nested JSON
    become the Source's ``problem``."""
    from ..io import RECORD_MAX_BYTES, read_bytes, short_path, too_deep

    try:
        os.stat(path)
    except (OSError, ValueError) as exc:
        return Source(label, problem=f"cannot read: {getattr(exc, 'strerror', None) or exc}")
    try:
        raw = read_bytes(path, RECORD_MAX_BYTES, error=ReportInputError, what="run record")
    except ReportInputError as exc:
        msg = str(exc)
        prefix = f"{short_path(path)}: "
        return Source(label, problem=msg[len(prefix):] if msg.startswith(prefix) else msg)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Source(label, problem=f"not JSON: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                     f"{exc.start:,})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Source(label, problem=f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        return Source(label, problem="not usable JSON: nested too deeply")
    except ValueError as exc:          # an integer beyond sys.get_int_max_str_digits()
        return Source(label, problem=f"not usable JSON: {str(exc).split(':')[0]}")
    if too_deep(data):
        return Source(label, problem="not usable JSON: nested too deeply")
    return Source(label, data=data)


def _is_summary(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("runs"), list)
            and data.get("schema") != RUN_SCHEMA)


def collect(paths: list[str]) -> list[Source]:
    """Expand directories and summaries into run sources, in argument order, each file once.

    Raises:
        ReportInputError: nothing to report on (an empty directory, no paths).
    """
    out: list[Source] = []
    seen: set[str] = set()

    def add_file(path: Path, label: str) -> None:
        key = os.path.realpath(path)
        if key in seen:
            return
        seen.add(key)
        src = read_json(path, label)
        if src.problem is None and _is_summary(src.data):
            for i, entry in enumerate(src.data["runs"]):
                if isinstance(entry, str):
                    beside = path.parent / entry
                    if beside.exists() or not Path(entry).exists():
                        add_file(beside, os.path.normpath(os.path.join(os.path.dirname(label), entry)))
                    else:  # a path relative to the working directory, as the campaign may write it
                        add_file(Path(entry), entry)
                elif isinstance(entry, dict):
                    out.append(Source(f"{label} runs[{i}]", data=entry))
                else:
                    out.append(Source(f"{label} runs[{i}]",
                                      problem="neither a path nor a record"))
            return
        out.append(src)

    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.json") if p.is_file())
            if not files:
                raise ReportInputError(f"no *.json files in directory {arg!r}: pass run records "
                                       "(vramplan profile --out RUN.json) or a folder holding them")
            # a summary in the folder lists the runs to show first, in its order
            files.sort(key=lambda p: (p.name != "summary.json", p.name))
            for f in files:
                add_file(f, os.path.join(arg, f.name))
        else:
            add_file(path, arg)
    if not out:
        raise ReportInputError("no run records to report on: pass RUN.json files or a folder of them")
    return out
