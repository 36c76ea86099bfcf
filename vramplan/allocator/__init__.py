"""PyTorch's CUDA caching allocator, replayed over integers: reserved memory, fragmentation, OOM.

``conf.py`` reads ``PYTORCH_CUDA_ALLOC_CONF``; ``trace.py`` is the alloc/free event format; ``replay.py`` the
allocator; ``lengths.py`` variable sequence lengths, per-step traces from the analytic estimator and the
run-level reserved peak with ranked fixes. No torch import anywhere in this package.
"""

from .conf import AllocConf, AllocConfError, parse_alloc_conf
from .replay import CachingAllocator, Oom, ReplayResult, allocation_size, replay_trace, round_size
from .trace import Alloc, EmptyCache, Free, Mark, TraceError, read_trace

__all__ = ["AllocConf", "AllocConfError", "parse_alloc_conf", "CachingAllocator", "Oom", "ReplayResult",
           "allocation_size", "replay_trace", "round_size", "Alloc", "Free", "EmptyCache", "Mark", "TraceError",
           "read_trace"]
