"""Keep freed heap memory for reuse (glibc's malloc), so that many mid-sized CPU temporaries
do not cost a page fault per page each time they are allocated.

glibc returns the top of its heap to the system once more than ``M_TRIM_THRESHOLD`` bytes lie
free there (2 × the mmap threshold, which adapts up to 32 MiB). Code that allocates and frees
tensors of about a megabyte thousands of times a second, as the SynthFER renderer does, then
shrinks and regrows the heap continually, and each regrown page is a fresh minor fault: drawing
2,048 v2 faces took about 150,000 of them and 0.3 s of system time on top of 1.0 s of work
(docs/synthfer.md, "Render speed"). Fixing the two thresholds at the ceiling the adaptive ones
reach (mmap 32 MiB, trim 64 MiB) stops the churn; a process then keeps at most 64 MiB of freed
heap beyond what it uses, and blocks over 32 MiB are still mapped and unmapped on their own.
"""
from __future__ import annotations

import ctypes
import platform
import sys

#: ``mallopt`` parameters (glibc's malloc.h) and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20

_done: bool | None = None


def retain_freed_heap() -> bool:
    """Set glibc's trim and mmap thresholds once per process (see the module's docstring).
    Returns whether they are set; on other C libraries and systems it does nothing."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
            if mallopt is not None:
                _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
