"""Memory the process holds: freed buffers kept for reuse during a pass, and the pages of replaced
weights let go.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above its mmap
threshold (128 KB, raised dynamically up to 32 MB) with fresh ``mmap`` calls and returns them, and
the top of its heap, to the kernel on ``free``; the next tensor of that size is then zero-filled
page by page on first touch. A layer-wise pass allocates and frees the same activation-sized
buffers for every batch of every layer: one float32 forward of 8 × 512 tokens through a SmolLM2
decoder layer took 22,751 minor page faults (~89 MB of fresh pages) and 147 ms here, and 290
faults and 131 ms with freed memory kept — a SparseGPT 50% prune of SmolLM2 on 32 × 512 tokens
went from 42.0 to 38.5 s. (PyTorch's CPU tuning guide reaches the same end with jemalloc or
tcmalloc through ``LD_PRELOAD``; this needs nothing installed.)

:func:`freed_memory_retained` keeps freed memory for the duration of a pass (the layer walks,
evaluation) and hands it back at the end (``malloc_trim``): kept for a whole process, the heap
only grew — the architecture zoo, 400 tiny models in one process, reached 21 GB and was killed.
Between passes the allocator runs as glibc's settles after large frees (blocks above 32 MB
mapped, the heap's top trimmed beyond 64 MB). Set ``PRUNEKIT_RETAIN_FREED_MEMORY=0`` to leave the
allocator as it is. Other C libraries than glibc are left alone.

:func:`release_pages` is for weights prunekit replaces. A loaded checkpoint's weights are pages of
its memory-mapped safetensors: writing into one copies it page by page on first touch (7.5 ms for
a 576 x 1536 float32 matrix here), while a new tensor leaves the old pages resident beside it until
the whole file is unmapped (+330 MB peak for SmolLM2, +1.5 GB for a 1.07B model, measured). So a
rewritten weight of a mapped file (:func:`file_backed`) goes to new memory and the old tensor's
pages are handed back with ``madvise(MADV_PAGEOUT)``, which keeps their contents (a clean file
page is simply re-read if anything touches it again, an anonymous one stays or is swapped): for
SmolLM2's 210 matrices 195 ms in all instead of ~1.3 s of copy-on-write faults, with the same
resident size. Weights in ordinary memory are written in place.
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import os
import platform
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_MADV_PAGEOUT = 21  # madvise(2), Linux 5.4+
_PAGE = 4096

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# during a pass: blocks up to 1 GiB from the heap (not from mmap), the heap's top never handed back,
# grown 64 MB at a time
_RETAINING = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
# between passes: where glibc's dynamic thresholds settle after large frees (setting any of them
# turns the dynamic adjustment off for good)
_RESTING = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20), (_M_TOP_PAD, 0))
_depth = 0


def _glibc():
    if os.environ.get("PRUNEKIT_RETAIN_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return None
    return _c_library() or None


def _apply(libc, settings) -> bool:
    return all(libc.mallopt(parameter, ctypes.c_int(value)) == 1 for parameter, value in settings)


@contextmanager
def freed_memory_retained():
    """Keep freed memory in the process while the block runs, hand it back after (see the module
    doc); nested blocks keep it until the outermost one ends."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    if _depth == 0 and not _apply(libc, _RETAINING):
        log.debug("glibc allocator could not be tuned")
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _apply(libc, _RESTING)
            libc.malloc_trim(0)


_libc = None


def _c_library():
    global _libc
    if _libc is None:
        _libc = False
        if platform.system() == "Linux":
            try:
                _libc = ctypes.CDLL("libc.so.6", use_errno=True)
                _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            except OSError:
                _libc = False
    return _libc


def release_pages(tensor) -> None:
    """Let the kernel reclaim the whole pages of a CPU tensor that is being replaced (see the module
    doc): its contents stay what they were, so this is safe even if something still reads it."""
    libc = _c_library()
    if not libc or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # only pages the tensor fills alone
    if last > first:
        libc.madvise(first, last - first, _MADV_PAGEOUT)  # unsupported (old kernel): nothing happens


_mappings: list[tuple[int, int, bool]] = []  # (start, end, maps a file), sorted: /proc/self/maps as last read


def _read_mappings() -> None:
    global _mappings
    entries = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        start, _, end = parts[0].partition("-")
        entries.append((int(start, 16), int(end, 16), len(parts) == 6 and parts[4] != "0" and not parts[5].startswith("[")))
    _mappings = sorted(entries)


def file_backed(tensor) -> bool:
    """Whether a CPU tensor's memory is a mapped file (a checkpoint loaded by memory-mapping its
    safetensors), whose first write would copy it page by page; False for ordinary memory.

    The process's mappings are re-read only for an address outside every mapping seen so far; a
    stale answer costs speed, never correctness (both ways of writing a weight are exact)."""
    if tensor.device.type != "cpu" or platform.system() != "Linux":
        return False
    address = tensor.data_ptr()
    for attempt in range(2):
        index = bisect.bisect_right(_mappings, (address, float("inf"), True)) - 1
        if index >= 0 and _mappings[index][0] <= address < _mappings[index][1]:
            return _mappings[index][2]
        if attempt == 0:
            try:
                _read_mappings()
            except OSError:
                return False
    return False
