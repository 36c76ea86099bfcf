"""Files: bounded reads of every input, atomic writes that keep permissions, and outputs that never replace an
input.

Reading (:func:`read_text`, :func:`read_json`, :func:`read_yaml`): the path is ``stat``-ed first and anything
but a regular file (a FIFO, a device such as ``/dev/zero``, a folder, a socket) is refused before it is opened,
so a read never blocks in ``open()``; at most ``max_bytes`` are read (:data:`CONFIG_MAX_BYTES` for configs, plan
and price files, :data:`RECORD_MAX_BYTES` for run records); the bytes must be UTF-8 (a UTF-8 byte-order mark is
skipped; UTF-16 and binary files are named as such; otherwise the offset of the first bad byte is given).
JSON and YAML are parsed with a nesting limit (:data:`MAX_DEPTH`) and YAML aliases are expanded only up to
:data:`YAML_MAX_NODES` nodes (a "billion laughs" document is refused without being built or printed). Every
failure is one :class:`~vramplan.errors.VramplanError` line naming the file (the caller chooses the subclass).

Writing (:func:`atomic_write_bytes`, :func:`atomic_write_text`): a reader sees the old file or the new one,
never half of one. On Linux the data goes to an unnamed ``O_TMPFILE`` that is linked beside the target and
renamed over it, so a process killed while writing leaves nothing; elsewhere (or where the file system has no
``O_TMPFILE``) a named temporary file ``.<name>.<pid>.<random>.vramplan.tmp`` is used and any such file left by
a process that no longer runs is removed on the next write to that target. A replaced file keeps its mode; a new
file gets ``0666`` minus the umask, as ``open()`` gives it.

Outputs (:func:`refuse_overwriting_input`, :func:`check_output_path`): an output that is one of the command's
inputs (the same file by device and inode: symlinks and hard links included) is refused before anything is
computed, and so is an output location that cannot be written.
"""

from __future__ import annotations

import errno
import json
import os
import re
import reprlib
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import VramplanError

#: Largest config.json, plan file, price file or validation matrix read (bytes). The largest real config.json
#: files are a few hundred KiB (multimodal wrappers with their vision/audio configs).
CONFIG_MAX_BYTES = 16 * 2**20
#: Largest run record (``vramplan profile`` JSON with its timeline samples) or report input read (bytes).
RECORD_MAX_BYTES = 256 * 2**20
#: Deepest nesting of lists and mappings accepted in a JSON or YAML input.
MAX_DEPTH = 100
#: Most nodes a YAML document may hold once its aliases are expanded (a billion-laughs guard).
YAML_MAX_NODES = 1_000_000
#: A named temporary file of ours older than this (seconds) is stale even when its writer's pid is running.
STALE_TEMP_SECONDS = 3600


class InputFileError(VramplanError):
    """An input file that cannot be read: not a regular file, too large, not UTF-8, not JSON/YAML, too deep."""


class OutputPathError(VramplanError, OSError):
    """An output path that would replace an input, or that cannot be written (an ``OSError`` too, so that
    callers catching write failures keep catching them)."""


# ------------------------------------------------------------------------------------------------ brief
_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


def brief(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters (``...`` where cut), for error messages that quote input."""
    return _REPR.repr(value)


def short_path(path: str | os.PathLike[str], limit: int = 160) -> str:
    """A path for an error line: as given, or its first and last characters around ``...`` when longer than
    ``limit`` (a 5,000-character name stays one readable line)."""
    p = os.fspath(path)
    return p if len(p) <= limit else f"{p[:limit // 2]}...{p[-limit // 2:]}"


# ------------------------------------------------------------------------------------------------ reading
def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def read_bytes(path: str | os.PathLike[str], max_bytes: int = CONFIG_MAX_BYTES, *,
               error: type[VramplanError] = InputFileError, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``.

    Raises:
        error: the path is missing or unreadable, is not a regular file (checked before opening: a FIFO
            would block), or holds more than ``max_bytes``; one line naming the path.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except (OSError, ValueError) as exc:
        raise error(f"{short_path(p)}: cannot read the {what}: {_os_reason(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{short_path(p)}: cannot read the {what}: it is {_kind(st.st_mode)}; pass a regular file")
    if st.st_size > max_bytes:
        raise error(f"{short_path(p)}: the {what} is {_size(st.st_size)}, more than the {_size(max_bytes)} vramplan reads")
    try:
        # O_NONBLOCK: should the path have become a FIFO since the stat, open() still returns at once
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{short_path(p)}: cannot read the {what}: {_os_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{short_path(p)}: cannot read the {what}: it is {_kind(os.fstat(fd).st_mode)}; pass a regular file")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{short_path(p)}: cannot read the {what}: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise error(f"{short_path(p)}: the {what} is more than the {_size(max_bytes)} vramplan reads")
    return data


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() and exc.strerror[1:2].islower() else exc.strerror
    return str(exc) or type(exc).__name__


def decode_utf8(data: bytes, path: str | os.PathLike[str], *, error: type[VramplanError] = InputFileError,
                what: str = "file") -> str:
    """``data`` as UTF-8 text (a leading UTF-8 byte-order mark dropped).

    Raises:
        error: UTF-16 (by its byte-order mark or its zero bytes), binary (a NUL byte), or the offset and value
            of the first byte that is not UTF-8.
    """
    p = os.fspath(path)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{short_path(p)}: the {what} is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if b"\x00" in data[:4096]:
            raise error(f"{short_path(p)}: the {what} is not text (it holds zero bytes: UTF-16 or binary); "
                        "pass a UTF-8 text file") from None
        raise error(f"{short_path(p)}: the {what} is not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start:,}; "
                    "save it as UTF-8") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise error(f"{short_path(p)}: the {what} is not text (a zero byte at offset {len(text[:nul].encode()):,}: UTF-16 or "
                    "binary); pass a UTF-8 text file")
    return text


def read_text(path: str | os.PathLike[str], max_bytes: int = CONFIG_MAX_BYTES, *,
              error: type[VramplanError] = InputFileError, what: str = "file") -> str:
    """A regular UTF-8 text file of at most ``max_bytes`` (:func:`read_bytes`, :func:`decode_utf8`)."""
    return decode_utf8(read_bytes(path, max_bytes, error=error, what=what), path, error=error, what=what)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists/dicts nest deeper than ``limit`` (iterative: no recursion of our own)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Iterable[Any] = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(text: str, path: str | os.PathLike[str], *, error: type[VramplanError] = InputFileError,
               what: str = "file", not_json: str = "not JSON") -> Any:
    """JSON ``text`` of file ``path``, nested at most :data:`MAX_DEPTH` deep.

    Raises:
        error: ``<path>: not JSON: <message> at line L, column C`` (``not_json`` is the phrase), nested too deep,
            or an integer of more than 4,300 digits.
    """
    p = os.fspath(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{short_path(p)}: {not_json}: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise error(f"{short_path(p)}: the {what} nests lists or objects deeper than vramplan reads ({MAX_DEPTH} levels)") \
            from None
    except ValueError as exc:      # an integer beyond sys.get_int_max_str_digits()
        raise error(f"{short_path(p)}: the {what} is not valid JSON for vramplan: {str(exc).split(':')[0]}") from None
    if too_deep(data):
        raise error(f"{short_path(p)}: the {what} nests lists or objects deeper than vramplan reads ({MAX_DEPTH} levels)")
    return data


def read_json(path: str | os.PathLike[str], max_bytes: int = CONFIG_MAX_BYTES, *,
              error: type[VramplanError] = InputFileError, what: str = "file", not_json: str = "not JSON") -> Any:
    """A JSON file, bounded in size and depth (:func:`read_text`, :func:`parse_json`)."""
    return parse_json(read_text(path, max_bytes, error=error, what=what), path, error=error, what=what,
                      not_json=not_json)


def yaml_problem(exc: Exception) -> str:
    """A PyYAML error as one line: ``problem at line L, column C``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    problem = " ".join(str(problem).split())[:200]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _yaml_expanded_size(root: Any, limit: int) -> tuple[int, int]:
    """``(nodes, depth)`` of a composed YAML node graph with every alias expanded, both saturating just past
    their limits (``limit`` nodes, :data:`MAX_DEPTH` levels); ``(-1, 0)`` for a recursive alias."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:
            kids = []
        if done:
            on_path.discard(key)
            size[key] = min(limit + 1, 1 + sum(size[id(k)] for k in kids))
            collection = isinstance(node, (yaml.SequenceNode, yaml.MappingNode))
            depth[key] = min(MAX_DEPTH + 1, 1 + max((depth[id(k)] for k in kids), default=0)) if collection else 0
            continue
        if key in size:
            continue
        if key in on_path:
            return -1, 0
        on_path.add(key)
        stack.append((node, True))
        for k in kids:
            if id(k) in on_path:
                return -1, 0
            if id(k) not in size:
                stack.append((k, False))
    return size.get(id(root), 0), depth.get(id(root), 0)


def parse_yaml(text: str, path: str | os.PathLike[str], *, error: type[VramplanError] = InputFileError,
               what: str = "file", not_yaml: str = "not YAML", trusted: bool = False) -> Any:
    """One YAML document with PyYAML's safe loader, refusing documents whose aliases expand past
    :data:`YAML_MAX_NODES` nodes, recursive aliases, and nesting deeper than :data:`MAX_DEPTH`.

    ``trusted`` (vramplan's own bundled profiles, read on every command) skips the alias and depth walk, the
    one costly check (about 5 ms over the 53 profiles); the size cap and the error lines stay.

    Raises:
        error: not YAML (problem, line, column), an alias bomb, or too deep; one line, never the document.
    """
    import yaml

    p = os.fspath(path)
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        nodes, depth = (0, 0) if trusted else _yaml_expanded_size(node, YAML_MAX_NODES)
        if nodes < 0:
            raise error(f"{short_path(p)}: the {what} has a recursive YAML alias (an anchor used inside itself); remove it")
        if nodes > YAML_MAX_NODES:
            raise error(f"{short_path(p)}: the {what} expands its YAML aliases to more than {YAML_MAX_NODES:,} nodes "
                        "(an alias bomb?); write the values out or use fewer aliases")
        if depth > MAX_DEPTH:
            raise error(f"{short_path(p)}: the {what} nests lists or mappings deeper than vramplan reads ({MAX_DEPTH} levels)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):     # libyaml's own limit (1,000 levels)
            raise error(f"{short_path(p)}: the {what} nests lists or mappings deeper than vramplan reads "
                        f"({MAX_DEPTH} levels)") from None
        raise error(f"{short_path(p)}: {not_yaml}: {yaml_problem(exc)}") from None
    except RecursionError:
        raise error(f"{short_path(p)}: the {what} nests lists or mappings deeper than vramplan reads ({MAX_DEPTH} levels)") \
            from None
    except ValueError as exc:      # e.g. an integer beyond sys.get_int_max_str_digits()
        raise error(f"{short_path(p)}: the {what} holds a value vramplan cannot read: {str(exc).split(':')[0]}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], max_bytes: int = CONFIG_MAX_BYTES, *,
              error: type[VramplanError] = InputFileError, what: str = "file", not_yaml: str = "not YAML",
              trusted: bool = False) -> Any:
    """A YAML file, bounded in size, depth and alias expansion (:func:`read_text`, :func:`parse_yaml`)."""
    return parse_yaml(read_text(path, max_bytes, error=error, what=what), path, error=error, what=what,
                      not_yaml=not_yaml, trusted=trusted)


# ------------------------------------------------------------------------------------------------ outputs
def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def refuse_overwriting_input(out: str | os.PathLike[str] | None, inputs: Iterable[str | os.PathLike[str] | None],
                             flag: str = "--out") -> None:
    """Refuse an output path that is one of ``inputs`` (the same file by device and inode, so through symlinks
    and hard links; or the same resolved path).

    Raises:
        OutputPathError: quoting the flag, the output and the input it would replace.
    """
    if out is None:
        return
    o = os.fspath(out)
    real_o = os.path.realpath(o)
    for inp in inputs:
        if inp is None:
            continue
        i = os.fspath(inp)
        if _same_file(o, i) or os.path.realpath(i) == real_o:
            same = "" if os.path.abspath(i) == os.path.abspath(o) else f" ({i})"
            raise OutputPathError(f"{flag} {o} is an input of this command{same}: writing it would replace that "
                                  "input; choose another output path")


def check_output_path(out: str | os.PathLike[str], flag: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under a file, or a
    folder (or the nearest existing one above it) without write permission.

    Raises:
        OutputPathError: quoting the flag and the path, saying why.
    """
    o = Path(os.fspath(out))
    try:
        if o.is_dir():
            raise OutputPathError(f"{flag} {o} is a folder; name a file")
        parent = o.parent if str(o.parent) else Path(".")
        while not parent.exists():
            if parent.is_symlink():
                raise OutputPathError(f"{flag} {o}: {parent} is a broken symbolic link")
            parent = parent.parent
        if not parent.is_dir():
            raise OutputPathError(f"{flag} {o}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"{flag} {o}: the folder {parent} is not writable")
        if o.exists() and not os.access(o, os.W_OK) and not os.access(parent, os.W_OK):
            raise OutputPathError(f"{flag} {o} is not writable")
    except OutputPathError:
        raise
    except OSError as exc:
        raise OutputPathError(f"{flag} {short_path(o)}: {_os_reason(exc)}") from None


# ------------------------------------------------------------------------------------------------ writing
_TEMP_SUFFIX = ".vramplan.tmp"


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Our named temporary files beside ``name``: ``.<name>.<pid>.<hex>.vramplan.tmp`` (and the older
    ``.<name>.<8 chars>.tmp`` of mkstemp)."""
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.[0-9a-f]+{re.escape(_TEMP_SUFFIX)}|[A-Za-z0-9_]{{8}}\.tmp)$")


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files of ours beside ``target`` left by a writer that was killed: its pid no longer runs,
    or the file is older than :data:`STALE_TEMP_SECONDS`. Returns the paths removed."""
    t = Path(target)
    pattern = _temp_pattern(t.name)
    removed = []
    try:
        entries = list(os.scandir(t.parent if str(t.parent) else "."))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = pattern.match(e.name)
        if m is None:
            continue
        try:
            old = now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
            pid = int(m.group(1)) if m.group(1) else None
            if old or pid is None or not _pid_running(pid):
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


def _is_stream(target: Path) -> bool:
    """A character device (``/dev/stdout``, a terminal) or a FIFO: written in place, not replaced."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _mode_for(target: Path) -> int | None:
    """The permission bits of the file ``target`` replaces, or ``None`` for a new file."""
    try:
        st = os.stat(target)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _write_tmpfile(target: Path, data: bytes, mode: int | None) -> bool:
    """Linux ``O_TMPFILE``: write an unnamed file in the target's folder, link it under a temporary name and
    rename it over the target. ``False`` when the file system has no ``O_TMPFILE`` (nothing was written)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return False
    folder = target.parent
    try:
        fd = os.open(folder, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)   # the umask applies
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return False
        raise
    tmp: Path | None = None
    dfd = -1
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        _write_all(fd, data)
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        name = f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}{_TEMP_SUFFIX}"
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N: the documented way to give an O_TMPFILE file a name;
        # the name is known before the link, so a Ctrl-C arriving just after it still removes the file
        tmp = folder / name
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
        except OSError:
            tmp = None            # not linked: nothing to remove
            raise
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        if tmp is None and exc.errno in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EOPNOTSUPP):
            return False          # /proc not usable for linkat here: the named fallback writes instead
        raise
    finally:
        os.close(fd)
        if dfd >= 0:
            os.close(dfd)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return True


def _write_named(target: Path, data: bytes, mode: int | None) -> None:
    """A named temporary file beside the target, renamed over it; removed if anything fails or is interrupted."""
    tmp: str | None = None
    try:
        tmp = str(target.parent / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}{_TEMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0), 0o666)
        try:
            if mode is not None:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:                        # Windows before Python 3.13
                    os.chmod(tmp, mode)
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring): a replaced file keeps its mode, a new
    one gets the umask's; a symbolic link is followed (the file it names is replaced, the link kept); a
    character device or FIFO (``/dev/stdout``) is written in place, as a stream.

    Raises:
        OutputPathError: the path cannot be written (a folder, under a file, no permission), one line.
    """
    target = Path(os.path.realpath(os.fspath(path)))
    try:
        if _is_stream(Path(path)):    # --out /dev/stdout, a FIFO: a stream cannot be replaced, only written
            with open(path, "wb") as fh:
                fh.write(data)
            return Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise OutputPathError(f"{path}: is a folder; name a file")
        clean_stale_temps(target)
        mode = _mode_for(target)
        if not _write_tmpfile(target, data, mode):
            _write_named(target, data, mode)
    except OutputPathError:
        raise
    except OSError as exc:
        raise OutputPathError(f"{short_path(path)}: cannot write it: {_os_reason(exc)}") from None
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
