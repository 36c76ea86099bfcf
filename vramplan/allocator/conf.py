"""``PYTORCH_CUDA_ALLOC_CONF`` strings, read as the caching allocator reads them.

Source: ``c10/core/AllocatorConfig.cpp`` (``AllocatorConfig::lexArgs``, ``parseArgs``, ``parseMaxSplitSize``,
``parseMaxNonSplitRoundingSize``, ``parseGarbageCollectionThreshold``, ``parseRoundUpPower2Divisions``,
``parseExpandableSegments``, ``roundup_power2_divisions``) and ``c10/cuda/CUDAAllocatorConfig.cpp`` (the CUDA
keys: ``backend``, ``release_lock_on_cudamalloc``, ``pinned_*``). The lexer splits on ``,`` ``:`` ``[`` ``]``
and drops spaces; keys are case-sensitive; ``True``/``False`` are the only booleans it accepts.

Where torch raises (``TORCH_CHECK``), :func:`parse_alloc_conf` raises :class:`AllocConfError` with one line
that quotes the value, states the rule and says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import VramplanError

MiB = 1 << 20
#: ``kLargeBuffer`` (CUDACachingAllocator.cpp): the smallest ``max_split_size_mb`` / ``max_non_split_rounding_mb``
K_LARGE_BUFFER = 20 * MiB
#: ``kRoundUpPowerOfTwoIntervals`` (AllocatorConfig.cpp): one divisions entry per power of two from 1 MiB to 64 GiB
ROUNDUP_INTERVALS = 16
#: keys torch accepts that do not change how much memory is reserved (pinned host memory, locking)
_NO_EFFECT = ("release_lock_on_cudamalloc", "pinned_use_cuda_host_register", "pinned_num_register_threads",
              "pinned_use_background_threads", "pinned_reserve_segment_size_mb", "graph_capture_record_stream_reuse")
KEYS = ("expandable_segments", "max_split_size_mb", "max_non_split_rounding_mb", "roundup_power2_divisions",
        "garbage_collection_threshold", "per_process_memory_fraction", "backend") + _NO_EFFECT


class AllocConfError(VramplanError):
    """A ``PYTORCH_CUDA_ALLOC_CONF`` string that torch would refuse (or that vramplan does not model)."""


@dataclass(frozen=True)
class AllocConf:
    """The settings of the caching allocator that change reserved memory (torch's defaults when empty).

    Attributes:
        expandable_segments: one growing segment per pool and stream, mapped page by page.
        max_split_size: blocks at least this large are never split (``None``: unlimited, torch's
            ``std::numeric_limits<size_t>::max()``).
        max_non_split_rounding: an oversize cached block serves a request at most this much smaller.
        roundup_power2_divisions: divisions per power-of-two interval, index 0 = sizes below 2 MiB, ... 15 =
            32 GiB and above (0 or 1: no power-of-two rounding, only 512 B).
        garbage_collection_threshold: fraction of the allowed memory above which cached blocks are
            reclaimed; 0 = off. Acts only under a memory fraction (``garbage_collect_cached_blocks`` runs
            only when ``set_fraction``; see ``replay.py``).
        memory_fraction: ``torch.cuda.set_per_process_memory_fraction`` (or the ``per_process_memory_fraction``
            key of recent releases): the allocator refuses to reserve beyond this share of the card.
        text: the string it was read from.
    """

    expandable_segments: bool = False
    max_split_size: int | None = None
    max_non_split_rounding: int = K_LARGE_BUFFER
    roundup_power2_divisions: tuple[int, ...] = (0,) * ROUNDUP_INTERVALS
    garbage_collection_threshold: float = 0.0
    memory_fraction: float | None = None
    text: str = field(default="", compare=False)

    def divisions_for(self, size: int) -> int:
        """``AllocatorConfig::roundup_power2_divisions(size)``: the interval is log2(size) - 20, clamped."""
        index = max(size.bit_length() - 1 - 20, 0)
        return self.roundup_power2_divisions[min(index, ROUNDUP_INTERVALS - 1)]

    def with_(self, **changes) -> AllocConf:
        from dataclasses import replace

        return replace(self, **changes)

    def describe(self) -> str:
        """The string torch would be given for these settings (``""`` for the defaults)."""
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size // MiB}")
        if self.max_non_split_rounding != K_LARGE_BUFFER:
            parts.append(f"max_non_split_rounding_mb:{self.max_non_split_rounding // MiB}")
        if any(self.roundup_power2_divisions):
            d = self.roundup_power2_divisions
            parts.append(f"roundup_power2_divisions:{d[0]}" if len(set(d)) == 1 else
                         "roundup_power2_divisions:[" + ",".join(f"{1 << i}:{v}" for i, v in enumerate(d)) + "]")
        if self.garbage_collection_threshold:
            parts.append(f"garbage_collection_threshold:{self.garbage_collection_threshold}")
        if self.memory_fraction is not None:
            parts.append(f"per_process_memory_fraction:{self.memory_fraction}")
        return ",".join(parts)


DEFAULT = AllocConf()


def _lex(text: str) -> list[str]:
    """``AllocatorConfig::lexArgs``: separators are tokens of their own, spaces are dropped."""
    out: list[str] = []
    buf: list[str] = []
    for ch in text:
        if ch in ",:[]":
            if buf:
                out.append("".join(buf))
                buf = []
            out.append(ch)
        elif ch != " ":
            buf.append(ch)
    if buf:
        out.append("".join(buf))
    return out


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _int(text: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise AllocConfError(f"alloc conf {text!r}: {key} takes an integer, got {value!r}") from None


def parse_alloc_conf(text: str | None) -> AllocConf:
    """Read a ``PYTORCH_CUDA_ALLOC_CONF`` string.

    Args:
        text: e.g. ``"expandable_segments:True,max_split_size_mb:128"``; ``None`` or ``""``: torch's defaults.

    Returns:
        The settings; keys that do not change reserved memory (``pinned_*``, ``release_lock_on_cudamalloc``)
        are accepted and ignored.

    Raises:
        AllocConfError: an unknown key, a missing ``:`` or value, a value torch refuses (``max_split_size_mb``
            below 20, a threshold outside (0, 1), divisions that are not powers of two, a boolean other than
            ``True``/``False``), or ``backend:cudaMallocAsync`` (a different allocator, not modelled).
    """
    if not text:
        return DEFAULT
    tok = _lex(text)
    vals: dict[str, object] = {}
    div = [0] * ROUNDUP_INTERVALS
    i = 0

    def expect(j: int, c: str, key: str) -> None:
        if j >= len(tok) or tok[j] != c:
            got = tok[j] if j < len(tok) else "the end"
            raise AllocConfError(f"alloc conf {text!r}: expected {c!r} after {key}, got {got!r} "
                                 f"(write key:value pairs separated by commas)")

    def value(j: int, key: str) -> str:
        if j >= len(tok) or tok[j] in ",:[]":
            raise AllocConfError(f"alloc conf {text!r}: {key} has no value (write {key}:VALUE)")
        return tok[j]

    while i < len(tok):
        key = tok[i]
        if key not in KEYS:
            from ..errors import close_matches

            raise AllocConfError(f"alloc conf {text!r}: unrecognized option {key!r}{close_matches(key, KEYS)}; "
                                 f"known: {', '.join(KEYS[:6])}")
        expect(i + 1, ":", key)
        i += 2
        if key == "roundup_power2_divisions" and i < len(tok) and tok[i] == "[":
            first, last = True, 0
            i += 1
            while i < len(tok) and tok[i] != "]":
                interval = tok[i]
                expect(i + 1, ":", f"roundup_power2_divisions interval {interval!r}")
                n = _int(text, key, value(i + 2, key))
                if n != 0 and not _is_pow2(n):
                    raise AllocConfError(f"alloc conf {text!r}: roundup_power2_divisions {n} is not a power of 2 "
                                         f"(use 1, 2, 4, 8, ... or 0 to disable)")
                if interval == ">":
                    for k in range(last + 1, ROUNDUP_INTERVALS):
                        div[k] = n
                else:
                    mb = _int(text, key, interval)
                    if not _is_pow2(mb):
                        raise AllocConfError(f"alloc conf {text!r}: roundup_power2_divisions interval {mb} MiB is "
                                             f"not a power of 2 (use 1, 2, 4, ..., 256, 512, ...)")
                    index = min(mb.bit_length() - 1, ROUNDUP_INTERVALS - 1)
                    if first:
                        for k in range(index):
                            div[k] = n
                        first = False
                    div[index] = n
                    last = index
                i += 3
                if i < len(tok) and tok[i] == ",":
                    i += 1
            if i >= len(tok):
                raise AllocConfError(f"alloc conf {text!r}: roundup_power2_divisions list has no closing ']'")
            i += 1
            vals[key] = tuple(div)
        else:
            v = value(i, key)
            if key == "expandable_segments":
                if v not in ("True", "False"):
                    raise AllocConfError(f"alloc conf {text!r}: expandable_segments takes True or False, got {v!r}")
                vals[key] = v == "True"
            elif key in ("max_split_size_mb", "max_non_split_rounding_mb"):
                mb = _int(text, key, v)
                if mb < K_LARGE_BUFFER // MiB:
                    raise AllocConfError(f"alloc conf {text!r}: {key} must be >= {K_LARGE_BUFFER // MiB}, got {mb}")
                vals[key] = mb * MiB
            elif key in ("garbage_collection_threshold", "per_process_memory_fraction"):
                try:
                    t = float(v)
                except ValueError:
                    raise AllocConfError(f"alloc conf {text!r}: {key} takes a number in (0, 1), got {v!r}") from None
                lo_ok = t > 0.0 if key == "garbage_collection_threshold" else t >= 0.0
                hi_ok = t < 1.0 if key == "garbage_collection_threshold" else t <= 1.0
                if not (lo_ok and hi_ok):
                    rng = "(0, 1)" if key == "garbage_collection_threshold" else "[0, 1]"
                    raise AllocConfError(f"alloc conf {text!r}: {key} must be in {rng}, got {v}")
                vals[key] = t
            elif key == "roundup_power2_divisions":
                n = _int(text, key, v)
                if not _is_pow2(n):
                    raise AllocConfError(f"alloc conf {text!r}: roundup_power2_divisions must be a power of 2, "
                                         f"got {n}")
                vals[key] = (n,) * ROUNDUP_INTERVALS
            elif key == "backend":
                if v != "native":
                    raise AllocConfError(f"alloc conf {text!r}: backend {v!r} is not modelled (only the native "
                                         f"caching allocator is; drop backend:{v})")
            i += 1
        if i < len(tok):
            expect(i, ",", key)
            i += 1
    return AllocConf(
        expandable_segments=bool(vals.get("expandable_segments", False)),
        max_split_size=vals.get("max_split_size_mb"),            # type: ignore[arg-type]
        max_non_split_rounding=vals.get("max_non_split_rounding_mb", K_LARGE_BUFFER),  # type: ignore[arg-type]
        roundup_power2_divisions=vals.get("roundup_power2_divisions", (0,) * ROUNDUP_INTERVALS),  # type: ignore
        garbage_collection_threshold=float(vals.get("garbage_collection_threshold", 0.0)),  # type: ignore
        memory_fraction=vals.get("per_process_memory_fraction"),  # type: ignore[arg-type]
        text=text,
    )
