"""A replay of PyTorch's CUDA caching allocator over plain integers.

Source: ``c10/cuda/CUDACachingAllocator.cpp`` (class ``DeviceCachingAllocator``) and, for releases where the
device-generic parts moved, ``c10/core/CachingDeviceAllocator.h``; see ``docs/allocator.md`` for the exact
revisions read. Each rule below names the C++ function it follows.

Rules:

* ``round_size``: requests below ``kMinBlockSize`` (512 B) become 512 B; others round up to a multiple of
  512 B, or, when ``roundup_power2_divisions`` gives ``d > 1`` divisions for the size's power-of-two interval
  and ``size > 512·d``, to the next of ``d`` equal divisions of that interval
  (``roundup_power2_next_division``).
* ``get_pool``: rounded sizes up to ``kSmallSize`` (1 MiB) use the small pool, larger the large pool; each
  pool keeps the free blocks of every stream apart (``BlockComparatorSize`` orders by stream first: a block
  freed on one stream is never reused on another).
* ``get_allocation_size``: a new segment is ``kSmallBuffer`` (2 MiB) for small requests, ``kLargeBuffer``
  (20 MiB) for requests below ``kMinLargeAlloc`` (10 MiB), else the request rounded up to ``kRoundLarge``
  (2 MiB).
* ``get_free_block``: best fit — the smallest free block of the stream that is at least the request (ties:
  the lowest address); a request below ``max_split_size`` never takes a block of at least
  ``max_split_size`` (an *oversize* block), a request of at least ``max_split_size`` takes an oversize
  block only if the block is less than ``max_non_split_rounding`` (20 MiB) larger. With expandable segments
  a block followed by unmapped address space counts as its size plus that space.
* ``should_split`` / ``alloc_found_block``: a found block is split — the request at its start, the remainder
  back in the pool — when the remainder is at least 512 B in the small pool (or with expandable segments),
  and in the large pool when the request is below ``max_split_size`` and the remainder above 1 MiB.
* ``free_block`` / ``try_merge_blocks``: a freed block merges with free neighbours of its segment.
* ``malloc``: no fit → ``garbage_collect_cached_blocks`` (only with a memory fraction and a threshold) →
  ``alloc_block`` (cudaMalloc of the allocation size) → ``release_available_cached_blocks`` (free oversize
  blocks, only with ``max_split_size``) and retry → ``release_cached_blocks`` (free every unsplit cached
  block of both pools) and retry → ``OutOfMemoryError``.
* ``release_blocks`` / ``release_block``: only segments with no split (one free block covering the whole
  segment) go back to CUDA; ``emptyCache`` calls ``release_cached_blocks``.
* expandable segments (``find_expandable_block``, ``try_allocate_expandable_block``, ``map_block``,
  ``unmap_block``, ``release_expandable_segment``): one segment per pool and stream with the address space of
  9/8 of the card, mapped in pages of 2 MiB (small pool) or 20 MiB (large pool; ``kLargeBuffer``) at the
  lowest address where free and unmapped space together fit the request; only the pages the request needs
  are mapped (the request size, not the allocation size); ``release_blocks`` unmaps the whole free pages of
  free blocks and drops a segment that is entirely unmapped.
* ``garbage_collect_cached_blocks``: above ``threshold × allowed memory``, unsplit cached large blocks whose
  age (``get_free_block`` calls on their pool since they were cached) is at least the average are freed,
  repeatedly, until the excess is reclaimed. ``malloc`` calls it only when ``set_fraction`` (a
  ``set_per_process_memory_fraction`` was made): the threshold alone does nothing.

Simplified (and by how much it can matter, see ``docs/allocator.md``):

* Streams: events carry a stream id; ``recordStream`` and cross-stream frees (``insert_events``,
  ``process_events``) are not modelled — every free completes at once. Under-estimates reserved memory for
  programs that free tensors still in use on other streams (NCCL, prefetching), typically by one layer's
  worth of buffers.
* Addresses: each cudaMalloc gets a fresh address above every earlier one. Real addresses only break ties
  between free blocks of equal size (``BlockComparatorSize``); reuse order among equal sizes can differ,
  which changes which segment stays split, rarely the reserved total by more than one segment.
* CUDA graphs' private pools, IPC, ``FreeCudaMemoryCallbacksRegistry`` callbacks, and the free-memory check
  of the driver itself (other processes, the CUDA context): ``capacity_bytes`` is the memory the allocator
  may reserve; pass the card's memory less what the context and non-PyTorch allocations hold.
* ``cudaMalloc`` succeeds whenever the reserved total plus the new segment fits ``capacity_bytes``; a real
  device can also fail on its own fragmentation of physical memory (rare with 2 MiB pages).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass

from .conf import DEFAULT, AllocConf
from .trace import Alloc, EmptyCache, Event, Free, Mark, check_event

K_MIN_BLOCK_SIZE = 512                 # kMinBlockSize: all sizes are rounded to at least 512 bytes
K_SMALL_SIZE = 1 << 20                 # kSmallSize: largest "small" allocation is 1 MiB
K_SMALL_BUFFER = 2 << 20               # kSmallBuffer: "small" allocations are packed in 2 MiB blocks
K_MIN_LARGE_ALLOC = 10 << 20           # kMinLargeAlloc: allocations between 1 and 10 MiB may use kLargeBuffer
K_LARGE_BUFFER = 20 << 20              # kLargeBuffer: "large" allocations may be packed in 20 MiB blocks
K_ROUND_LARGE = 2 << 20                # kRoundLarge: round up large allocations to 2 MiB
_UNLIMITED = 1 << 62                   # std::numeric_limits<size_t>::max() for max_split_size
_SEGMENT_ALIGN = 2 << 20               # fresh cudaMalloc addresses (any alignment works: only order matters)


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """``roundup_power2_next_division``: ``size`` up to the next of ``divisions`` equal steps between the
    powers of two around it (1200 with 4 divisions → 1280)."""
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    low = size & ~(step - 1)
    return size if low == size else low + step


def round_size(size: int, conf: AllocConf = DEFAULT) -> int:
    """``round_size``: what the allocator hands out for a request of ``size`` bytes."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    d = conf.divisions_for(size)
    if d > 1 and size > K_MIN_BLOCK_SIZE * d:
        return roundup_power2_next_division(size, d)
    return K_MIN_BLOCK_SIZE * ((size + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE)


def allocation_size(size: int) -> int:
    """``get_allocation_size``: the cudaMalloc a rounded request of ``size`` triggers when nothing fits."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


class OutOfMemory(Exception):
    """Raised inside the replay where torch raises ``OutOfMemoryError`` (``malloc``, after every retry)."""

    def __init__(self, size: int, alloc_size: int) -> None:
        super().__init__(size)
        self.size = size
        self.alloc_size = alloc_size


class _Segment:
    """One cudaMalloc (``expandable=False``) or one expandable segment's address range."""

    __slots__ = ("base", "size", "page", "expandable", "small", "stream")

    def __init__(self, base: int, size: int, small: bool, stream: int, page: int = 0) -> None:
        self.base, self.size, self.small, self.stream = base, size, small, stream
        self.page = page
        self.expandable = page > 0


class _Block:
    __slots__ = ("size", "ptr", "stream", "small", "allocated", "prev", "next", "seg", "mapped", "gc_base",
                 "requested")

    def __init__(self, size: int, ptr: int, seg: _Segment, mapped: bool = True) -> None:
        self.size, self.ptr, self.seg, self.mapped = size, ptr, seg, mapped
        self.stream, self.small = seg.stream, seg.small
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.gc_base = 0
        self.requested = 0

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    def splice(self, before: _Block | None, after: _Block | None) -> None:
        if before is not None:
            before.next = self
        self.prev = before
        if after is not None:
            after.prev = self
        self.next = after


class _Pool:
    """``BlockPool``: the free (``blocks``) and unmapped blocks of one size class, kept per stream."""

    __slots__ = ("small", "keys", "by_key", "unmapped", "gc_calls")

    def __init__(self, small: bool) -> None:
        self.small = small
        self.keys: dict[int, list[tuple[int, int]]] = {}         # stream -> sorted (size, ptr)
        self.by_key: dict[tuple[int, int], _Block] = {}
        self.unmapped: dict[int, list[int]] = {}                  # stream -> sorted ptr
        self.gc_calls = 0                                         # get_free_blocks_call_count

    def insert(self, b: _Block) -> None:                          # insert_into_blocks
        b.gc_base = self.gc_calls
        key = (b.size, b.ptr)
        insort(self.keys.setdefault(b.stream, []), key)
        self.by_key[key] = b

    def erase(self, b: _Block) -> None:
        key = (b.size, b.ptr)
        lst = self.keys[b.stream]
        del lst[bisect_left(lst, key)]
        del self.by_key[key]

    def all_free(self) -> list[_Block]:
        return [self.by_key[k] for s in sorted(self.keys) for k in self.keys[s]]


class CachingAllocator:
    """The allocator state: segments, free blocks, counters. Sizes in bytes.

    Args:
        conf: the ``PYTORCH_CUDA_ALLOC_CONF`` settings.
        capacity_bytes: what the allocator may reserve before cudaMalloc fails (``None``: unlimited). Also
            the card size that expandable segments' address space and a memory fraction are taken from.
    """

    def __init__(self, conf: AllocConf = DEFAULT, capacity_bytes: int | None = None) -> None:
        self.conf = conf
        self.capacity = capacity_bytes
        self.max_split = conf.max_split_size if conf.max_split_size is not None else _UNLIMITED
        self.set_fraction = conf.memory_fraction is not None
        total = capacity_bytes if capacity_bytes is not None else 1 << 50
        self.allowed_max = int((conf.memory_fraction or 0.0) * total)
        self.address_space = total + total // 8       # ExpandableSegment: 1 1/8 of the card's memory
        self.pools = {True: _Pool(True), False: _Pool(False)}
        self.reserved = 0             # total_allocated_memory == reserved_bytes (all pools)
        self.allocated = 0            # allocated_bytes: block sizes in use
        self.requested = 0            # requested_bytes: the sizes asked for
        self.peak_reserved = self.peak_allocated = 0
        self.segments = 0             # cudaMalloc'd segments + live expandable segments
        self.num_alloc_retries = self.num_device_alloc = self.num_device_free = 0
        self._next_addr = 1 << 40
        self._unmapped_blocks: dict[tuple[int, int], _Block] = {}    # (stream, ptr) -> unmapped block
        self._live: dict[int, _Block] = {}                            # trace id -> allocated block

    # -- public operations ---------------------------------------------------------------------------------

    def malloc(self, orig_size: int, stream: int = 0) -> _Block:
        """``DeviceCachingAllocator::malloc``. Raises :class:`OutOfMemory` where torch raises."""
        size = round_size(orig_size, self.conf)
        pool = self.pools[size <= K_SMALL_SIZE]
        alloc_size = allocation_size(size)
        block = self._get_free_block(pool, stream, size)
        if block is None:
            if self.set_fraction and self.conf.garbage_collection_threshold > 0.0:
                self._garbage_collect()
            block = self._alloc_block(pool, stream, size, alloc_size)
            if block is None and self._release_available_cached_blocks(pool, stream, size):
                block = self._alloc_block(pool, stream, size, alloc_size)
            if block is None:
                self._release_cached_blocks()
                block = self._alloc_block(pool, stream, size, alloc_size, retry=True)
            if block is None:
                raise OutOfMemory(size, alloc_size)
        return self._alloc_found_block(pool, block, size, orig_size, self._should_split(block, size))

    def free(self, block: _Block) -> None:
        """``DeviceCachingAllocator::free`` → ``free_block`` (no stream uses: the free completes at once)."""
        block.allocated = False
        self.allocated -= block.size
        self.requested -= block.requested
        pool = self.pools[block.small]
        for cand in (block.prev, block.next):
            self._try_merge(block, cand, pool)
        pool.insert(block)

    def empty_cache(self) -> None:
        """``emptyCache`` → ``release_cached_blocks``."""
        self._release_cached_blocks()

    def segment_sizes(self) -> list[tuple[bool, bool, int, int]]:
        """Every segment as ``(is_small, is_expandable, mapped bytes, allocated bytes)``, by address: what
        ``torch.cuda.memory._snapshot()`` lists (one entry per contiguous mapped range of an expandable
        segment, as ``snapshot`` reports it)."""
        heads: dict[int, _Block] = {}
        for pool in self.pools.values():
            for b in pool.by_key.values():
                heads.setdefault(id(b), b)
        for b in self._live.values():
            heads.setdefault(id(b), b)
        out = []
        seen: set[int] = set()
        for b in sorted(heads.values(), key=lambda x: x.ptr):
            h = b
            while h.prev is not None and h.prev.mapped:
                h = h.prev
            if id(h) in seen:
                continue
            seen.add(id(h))
            total = used = 0
            c: _Block | None = h
            while c is not None and c.mapped:
                total += c.size
                used += c.size if c.allocated else 0
                c = c.next
            out.append((h.small, h.seg.expandable, total, used))
        return out

    # -- the C++ private functions -------------------------------------------------------------------------

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.conf.expandable_segments:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self.max_split and remaining > K_SMALL_SIZE

    def _get_free_block(self, pool: _Pool, stream: int, size: int) -> _Block | None:
        if self.set_fraction and self.conf.garbage_collection_threshold > 0.0:
            pool.gc_calls += 1
        keys = pool.keys.get(stream)
        if not keys:
            return None
        i = bisect_left(keys, (size, -1))
        if i == len(keys):
            return None
        b = pool.by_key[keys[i]]
        if b.seg.expandable:
            if self.conf.expandable_segments:
                def xsize(x: _Block) -> int:
                    n = x.next
                    return x.size + (n.size if n is not None and not n.mapped else 0)
                while (b.seg.expandable and i + 1 < len(keys)
                       and xsize(pool.by_key[keys[i + 1]]) < xsize(b)):
                    i += 1
                    b = pool.by_key[keys[i]]
            else:
                i += 1
                while i < len(keys) and pool.by_key[keys[i]].seg.expandable:
                    i += 1
                if i == len(keys):
                    return None
                b = pool.by_key[keys[i]]
        if size < self.max_split and b.size >= self.max_split:
            return None
        if size >= self.max_split and b.size >= size + self.conf.max_non_split_rounding:
            return None
        pool.erase(b)
        return b

    def _new_address(self, size: int) -> int:
        ptr = self._next_addr
        self._next_addr += (size + _SEGMENT_ALIGN - 1) // _SEGMENT_ALIGN * _SEGMENT_ALIGN + _SEGMENT_ALIGN
        return ptr

    def _fits(self, extra: int) -> bool:
        return self.capacity is None or self.reserved + extra <= self.capacity

    def _alloc_block(self, pool: _Pool, stream: int, size: int, alloc_size: int,
                     retry: bool = False) -> _Block | None:
        if retry:
            self.num_alloc_retries += 1
        if self.set_fraction and self.reserved + alloc_size > self.allowed_max:
            return None
        if self.conf.expandable_segments:
            return self._try_allocate_expandable_block(pool, stream, size)
        if not self._fits(alloc_size):
            return None
        seg = _Segment(self._new_address(alloc_size), alloc_size, pool.small, stream)
        self.reserved += alloc_size
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.segments += 1
        self.num_device_alloc += 1
        return _Block(alloc_size, seg.base, seg)

    def _alloc_found_block(self, pool: _Pool, block: _Block, size: int, orig_size: int, split: bool) -> _Block:
        if split:
            remaining = block
            block = _Block(size, remaining.ptr, remaining.seg)
            block.prev = remaining.prev
            if block.prev is not None:
                block.prev.next = block
            block.next = remaining
            remaining.prev = block
            remaining.ptr += size
            remaining.size -= size
            pool.insert(remaining)
        block.allocated = True
        block.requested = orig_size
        self.allocated += block.size
        self.requested += orig_size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        return block

    def _try_merge(self, dst: _Block, src: _Block | None, pool: _Pool) -> int:
        """``try_merge_blocks``: absorb the free neighbour ``src`` (same mapping state) into ``dst``."""
        if src is None or src.allocated or dst.mapped != src.mapped:
            return 0
        if src.mapped:
            pool.erase(src)
        else:
            lst = pool.unmapped[src.stream]
            del lst[bisect_left(lst, src.ptr)]
            del self._unmapped_blocks[(src.stream, src.ptr)]
        if dst.prev is src:
            dst.ptr = src.ptr
            dst.prev = src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    def _release_block(self, b: _Block, pool: _Pool) -> None:
        """``release_block``: cudaFree a whole unsplit segment."""
        pool.erase(b)
        self.reserved -= b.size
        self.segments -= 1
        self.num_device_free += 1

    def _release_available_cached_blocks(self, pool: _Pool, stream: int, size: int) -> bool:
        if self.conf.max_split_size is None:
            return False
        key = max(size, self.max_split)
        keys = pool.keys.get(stream, [])
        i = bisect_left(keys, (key, -1))
        if i == len(keys) or pool.by_key[keys[i]].seg.expandable:
            if i == 0:
                return False
            released = 0
            j = i - 1
            while released < key and j >= 0:
                b = pool.by_key[keys[j]]
                if b.size < self.max_split:
                    break
                j -= 1
                if not b.seg.expandable:
                    self._release_block(b, pool)
                    released += b.size
            return released >= key
        self._release_block(pool.by_key[keys[i]], pool)
        return True

    def _release_cached_blocks(self) -> None:
        for small in (False, True):                    # release_blocks(large_blocks), then small_blocks
            pool = self.pools[small]
            to_unmap = []
            for b in pool.all_free():
                if b.seg.expandable:
                    to_unmap.append(b)
                elif not b.is_split():
                    self._release_block(b, pool)
            for b in to_unmap:
                self._unmap_block(b, pool)
                if not b.mapped and not b.is_split():  # release_expandable_segment
                    lst = pool.unmapped[b.stream]
                    del lst[bisect_left(lst, b.ptr)]
                    del self._unmapped_blocks[(b.stream, b.ptr)]
                    self.segments -= 1

    def _garbage_collect(self) -> None:
        """``garbage_collect_cached_blocks`` (large pool only, as in the C++)."""
        threshold = int(self.conf.garbage_collection_threshold * self.allowed_max)
        if self.reserved <= threshold:
            return
        target = self.reserved - threshold
        pool = self.pools[False]
        cands = [b for b in pool.all_free() if not b.is_split()]
        total_age = sum(pool.gc_calls - b.gc_base for b in cands)
        count = len(cands)
        if count == 0:
            return
        reclaimed, freed = 0, True
        while reclaimed < target and freed and count > 0:
            age_threshold = total_age / count
            freed = False
            for b in pool.all_free():
                age = pool.gc_calls - b.gc_base
                if not b.is_split() and not b.seg.expandable and age >= age_threshold:
                    freed = True
                    reclaimed += b.size
                    total_age -= age
                    count -= 1
                    self._release_block(b, pool)

    # -- expandable segments -------------------------------------------------------------------------------

    def _find_expandable_block(self, pool: _Pool, stream: int, size: int) -> _Block:
        def allocatable(b: _Block | None) -> bool:
            return b is not None and not b.allocated

        for ptr in pool.unmapped.get(stream, []):
            c = self._unmapped_at(pool, stream, ptr)
            if allocatable(c.prev):
                c = c.prev                             # type: ignore[assignment]
            n, x = 0, c
            while n < size and allocatable(x):
                n += x.size                            # type: ignore[union-attr]
                x = x.next                             # type: ignore[union-attr]
            if n >= size:
                return c
        page = K_SMALL_BUFFER if pool.small else K_LARGE_BUFFER
        span = (self.address_space + page - 1) // page * page
        seg = _Segment(self._new_address(span), span, pool.small, stream, page)
        self.segments += 1
        cand = _Block(span, seg.base, seg, mapped=False)
        self._unmapped_blocks[(stream, seg.base)] = cand
        insort(pool.unmapped.setdefault(stream, []), seg.base)
        return cand

    def _unmapped_at(self, pool: _Pool, stream: int, ptr: int) -> _Block:
        return self._unmapped_blocks[(stream, ptr)]

    def _map_block(self, pool: _Pool, b: _Block, size: int) -> bool:
        seg = b.seg
        begin = (b.ptr - seg.base) // seg.page
        end = -(-(b.ptr + size - seg.base) // seg.page)
        mapped = (end - begin) * seg.page
        if mapped == 0 or not self._fits(mapped):      # cuMemCreate fails: the pages made so far are released
            return False
        lst = pool.unmapped[b.stream]
        del lst[bisect_left(lst, b.ptr)]
        del self._unmapped_blocks[(b.stream, b.ptr)]
        b.mapped = True
        if mapped < b.size:
            rest = _Block(b.size - mapped, b.ptr + mapped, seg, mapped=False)
            rest.splice(b, b.next)
            insort(lst, rest.ptr)
            self._unmapped_blocks[(rest.stream, rest.ptr)] = rest
            b.size = mapped
        self._try_merge(b, b.prev, pool)
        self._try_merge(b, b.next, pool)
        pool.insert(b)
        self.reserved += mapped
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.num_device_alloc += 1
        return True

    def _try_allocate_expandable_block(self, pool: _Pool, stream: int, size: int) -> _Block | None:
        c = self._find_expandable_block(pool, stream, size)
        if not c.mapped and not self._map_block(pool, c, min(c.size, size)):
            return None
        while c.size < size:
            nxt = c.next
            assert nxt is not None and not nxt.mapped
            if not self._map_block(pool, nxt, min(size - c.size, nxt.size)):
                return None
            c = nxt                                    # map_block merged c into nxt
        pool.erase(c)
        return c

    def _unmap_block(self, b: _Block, pool: _Pool) -> None:
        """``unmap_block``: give back the whole pages inside the free block ``b``."""
        seg = b.seg
        begin = -(-(b.ptr - seg.base) // seg.page)
        end = (b.ptr + b.size - seg.base) // seg.page
        if begin >= end:
            return
        pool.erase(b)
        u_ptr, u_size = seg.base + begin * seg.page, (end - begin) * seg.page
        before = u_ptr - b.ptr
        if before > 0:
            bf = _Block(before, b.ptr, seg)
            bf.splice(b.prev, b)
            pool.insert(bf)
        after = b.size - before - u_size
        if after > 0:
            af = _Block(after, u_ptr + u_size, seg)
            af.splice(b, b.next)
            pool.insert(af)
        b.ptr, b.size, b.mapped = u_ptr, u_size, False
        self._try_merge(b, b.prev, pool)
        self._try_merge(b, b.next, pool)
        self._unmapped_blocks[(b.stream, b.ptr)] = b
        insort(pool.unmapped.setdefault(b.stream, []), b.ptr)
        self.reserved -= u_size
        self.num_device_free += 1


@dataclass(frozen=True)
class Oom:
    """Where the replay ran out of memory: torch's ``OutOfMemoryError`` at this event."""

    event: int                  # index into the trace
    mark: str                   # the last :class:`~.trace.Mark` before it ("" when none)
    size_bytes: int             # the rounded request
    alloc_size_bytes: int       # the segment it tried to reserve
    allocated_bytes: int        # allocated when it failed
    reserved_bytes: int         # reserved when it failed (after the cache was released)


@dataclass(frozen=True)
class MarkStats:
    """The span from one :class:`~.trace.Mark` to the next (a training step)."""

    label: str
    event: int
    peak_allocated_bytes: int
    peak_reserved_bytes: int


@dataclass(frozen=True)
class ReplayResult:
    """What the allocator's counters would show over the trace.

    ``reserved_changes`` is reserved memory over time: ``(event index, reserved bytes after it)`` at every
    event that changed it (a segment reserved, mapped, freed or unmapped).
    """

    peak_reserved_bytes: int              # torch.cuda.max_memory_reserved()
    peak_allocated_bytes: int             # torch.cuda.max_memory_allocated()
    reserved_bytes: int                   # at the end
    allocated_bytes: int
    reserved_changes: tuple[tuple[int, int], ...]
    marks: tuple[MarkStats, ...]
    oom: Oom | None
    num_alloc_retries: int
    num_device_alloc: int
    num_device_free: int
    segments: int
    conf: AllocConf

    @property
    def fragmentation_share(self) -> float:
        """The share of peak reserved memory that the allocated peak never needed:
        ``(peak_reserved - peak_allocated) / peak_reserved`` (0 when nothing was reserved)."""
        if self.peak_reserved_bytes == 0:
            return 0.0
        return (self.peak_reserved_bytes - self.peak_allocated_bytes) / self.peak_reserved_bytes

    @property
    def reserved_over_allocated(self) -> float:
        return self.peak_reserved_bytes / self.peak_allocated_bytes if self.peak_allocated_bytes else 0.0


def replay_trace(events: Iterable[Event], conf: AllocConf = DEFAULT, capacity_bytes: int | None = None,
           allocator: CachingAllocator | None = None) -> ReplayResult:
    """Replay ``events`` through the allocator.

    Args:
        events: the trace (``trace.py``).
        conf: the allocator settings (``parse_alloc_conf``).
        capacity_bytes: what the allocator may reserve; ``None``: unlimited (never OOMs).
        allocator: continue from this state instead of a fresh allocator (its ``conf`` and capacity apply).

    Returns:
        The counters; on an out-of-memory the replay stops there and ``oom`` says where.

    Raises:
        TraceError: a free of an id that is not allocated, an alloc of an id that is, a size below 1 byte.
    """
    a = allocator if allocator is not None else CachingAllocator(conf, capacity_bytes)
    live = a._live
    changes: list[tuple[int, int]] = []
    marks: list[MarkStats] = []
    label, mark_at, m_alloc, m_res = "", -1, a.allocated, a.reserved
    oom = None
    last_reserved = a.reserved
    n = -1
    for n, e in enumerate(events):
        check_event(n, e, live)
        if isinstance(e, Alloc):
            try:
                live[e.id] = a.malloc(e.size, e.stream)
            except OutOfMemory as exc:
                oom = Oom(n, label, exc.size, exc.alloc_size, a.allocated, a.reserved)
                if a.reserved != last_reserved:
                    changes.append((n, a.reserved))
                break
            if a.allocated > m_alloc:
                m_alloc = a.allocated
        elif isinstance(e, Free):
            a.free(live.pop(e.id))
        elif isinstance(e, EmptyCache):
            a.empty_cache()
        elif isinstance(e, Mark):
            if mark_at >= 0 or label:
                marks.append(MarkStats(label, mark_at, m_alloc, m_res))
            label, mark_at, m_alloc, m_res = e.label, n, a.allocated, a.reserved
        if a.reserved != last_reserved:
            changes.append((n, a.reserved))
            last_reserved = a.reserved
            if a.reserved > m_res:
                m_res = a.reserved
    if mark_at >= 0:
        marks.append(MarkStats(label, mark_at, m_alloc, m_res))
    return ReplayResult(a.peak_reserved, a.peak_allocated, a.reserved, a.allocated, tuple(changes), tuple(marks),
                        oom, a.num_alloc_retries, a.num_device_alloc, a.num_device_free, a.segments, a.conf)
