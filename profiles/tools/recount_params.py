"""Recount ``params_total`` in ``profiles/models/*.yaml`` from each file's own ``config``.

Maintainer tool, not part of the package (nothing in ``vramplan`` imports it). The YAML files are the only
copy of the model profiles (one model per file, with its ``source`` line, as litgpt keeps one table with a
source per entry); this tool never writes anything else. ``params_total`` is counted with the project's own
builder, the one :func:`vramplan.profiles.build_spec` uses for bundled profiles (pure Python for the
families in :data:`vramplan.shapes.from_config.FAMILIES`), and, where torch and transformers are installed and
know the ``model_type``, cross-checked against the meta-device builder
(:func:`vramplan.shapes.from_meta.spec_from_meta`, ``parameters()`` semantics: tied weights once). Remote-code
families (``baichuan``) are counted by the pure-Python builder only; their totals are pinned to published
figures in ``tests/test_profiles_data.py``.

Rewriting touches only the digits of the top-level ``params_total:`` line, so every other byte of the file
(comments, key order, line wrapping, line endings) stays as it was; the new file replaces the old one
atomically (written beside it, then ``os.replace``).

Run from anywhere (it uses the checkout it sits in)::

    python profiles/tools/recount_params.py              # rewrite params_total where it differs
    python profiles/tools/recount_params.py --check      # exit 1 and list every file whose total differs
    python profiles/tools/recount_params.py --no-meta    # skip the meta-device cross-check (no torch)

Exit status: 0 all totals agree (or were rewritten), 1 ``--check`` found differing totals, 2 a profile cannot
be counted (the builders fail or disagree, or its ``params_total`` line cannot be rewritten in place).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "profiles" / "models"
if str(REPO) not in sys.path:  # count with this checkout's builders, not whichever vramplan is installed
    sys.path.insert(0, str(REPO))

# The one line this tool rewrites: top level (no indentation), a plain decimal integer, maybe a comment.
_TOTAL_LINE = re.compile(rb"^params_total:[ \t]*(?P<digits>[0-9]+)(?=[ \t]*(?:#[^\r\n]*)?\r?$)", re.MULTILINE)


class ProfileError(Exception):
    """A profile whose params_total cannot be counted or rewritten; the message names the file."""


@dataclass(frozen=True)
class Recount:
    path: Path
    stored: int
    counted: int
    meta: int | None          # the meta-device builder's count, None where it was not run

    @property
    def stale(self) -> bool:
        return self.stored != self.counted


def _meta_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def count_config(config: dict[str, Any], name: str, source: str) -> int:
    """Unique parameters of ``config`` as vramplan builds bundled profiles (no torch for known families)."""
    from vramplan.profiles import build_spec

    return build_spec(copy.deepcopy(config), name, source).params_total


def count_meta(config: dict[str, Any], name: str, source: str) -> int | None:
    """The meta-device builder's count, or None where transformers does not know the ``model_type``."""
    import transformers

    from vramplan.shapes.from_meta import spec_from_meta

    if config.get("model_type") not in transformers.CONFIG_MAPPING:
        return None  # remote code (auto_map): transformers cannot build it without the repo's own files
    # deepcopy: transformers standardizes nested dicts (rope_scaling) in place while building its config.
    return spec_from_meta(copy.deepcopy(config), name=name, source=source).params_total


def _total_match(path: Path, raw: bytes, stored: Any) -> re.Match[bytes]:
    matches = list(_TOTAL_LINE.finditer(raw))
    if len(matches) != 1:
        raise ProfileError(f"{path}: expected exactly one top-level 'params_total: <digits>' line, "
                           f"found {len(matches)}; fix the file by hand")
    if type(stored) is not int or int(matches[0]["digits"]) != stored:
        raise ProfileError(f"{path}: the params_total line reads {matches[0]['digits'].decode()!r} but YAML "
                           f"parses {stored!r}; write it as a plain integer")
    return matches[0]


def recount(path: Path, *, meta: bool) -> Recount:
    """Count one profile; raises :class:`ProfileError` if the builders fail or disagree."""
    import yaml

    from vramplan.errors import VramplanError

    raw = path.read_bytes()
    doc = yaml.safe_load(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ProfileError(f"{path}: not a model profile (a mapping with a 'config' mapping)")
    _total_match(path, raw, doc.get("params_total"))
    name = str(doc.get("name") or path.stem)
    try:
        counted = count_config(doc["config"], name, str(path))
        meta_count = count_meta(doc["config"], name, str(path)) if meta else None
    except VramplanError as exc:
        raise ProfileError(f"{path}: cannot count: {exc}") from None
    if meta_count is not None and meta_count != counted:
        raise ProfileError(f"{path}: builders disagree: pure-Python {counted:,}, meta device {meta_count:,}; "
                           "fix the builder before trusting either")
    return Recount(path, doc["params_total"], counted, meta_count)


def rewrite_total(path: Path, total: int) -> None:
    """Replace the digits of the ``params_total`` line, atomically, leaving every other byte unchanged."""
    import yaml

    raw = path.read_bytes()
    m = _total_match(path, raw, yaml.safe_load(raw).get("params_total"))
    new = raw[:m.start("digits")] + str(total).encode() + raw[m.end("digits"):]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="Write nothing; exit 1 listing every file whose params_total differs.")
    parser.add_argument("--no-meta", action="store_true",
                        help="Skip the meta-device cross-check (it runs by default where torch is installed).")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR,
                        help="Folder of <name>.yaml profiles (default: this checkout's profiles/models).")
    parser.add_argument("names", nargs="*", help="Only these profiles, by file stem (default: all).")
    args = parser.parse_args(argv)

    paths = sorted(args.models_dir.glob("*.yaml"))
    if args.names:
        missing = sorted(set(args.names) - {p.stem for p in paths})
        if missing:
            print(f"no profile named {', '.join(missing)} in {args.models_dir}", file=sys.stderr)
            return 2
        paths = [p for p in paths if p.stem in args.names]
    meta = not args.no_meta and _meta_available()
    if not args.no_meta and not meta:
        print("torch/transformers not installed: counting with the pure-Python builder only", file=sys.stderr)

    stale: list[Recount] = []
    errors: list[str] = []
    for path in paths:
        try:
            r = recount(path, meta=meta)
        except ProfileError as exc:
            errors.append(str(exc))
            continue
        cross = "" if r.meta is None else "  (meta agrees)"
        print(f"{path.stem:32s} {r.counted:>18,}{cross}", file=sys.stderr)
        if r.stale:
            stale.append(r)
            if not args.check:
                rewrite_total(path, r.counted)
    for r in stale:
        verb = "differs" if args.check else "rewritten"
        print(f"{r.path.name}: params_total {verb}: {r.stored:,} in the file, {r.counted:,} counted", file=sys.stderr)
    for msg in errors:
        print(f"error: {msg}", file=sys.stderr)
    if errors:
        return 2
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
