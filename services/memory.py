"""glibc's allocator in a long-running, many-threaded service process.

Arenas. glibc gives a thread that allocates while another holds the lock an arena of its own, up
to 8 per core, and an arena gives memory back to the system only from its top. The API's thread
pool (decoded images, resized tensors, encoded answers: tens of MB each for a 120-frame clip) thus
spread its temporaries over up to 16 arenas on a 2-core host, each keeping its own high-water
mark: resident memory rose burst after burst (API 512 → 819 MB over five identical bursts), and
with two arenas it stays level (453 → 489 MB), at the same throughput.

Thresholds. A 512² slice's per-class maps are 1 MB arrays, allocated and freed on every request.
Unasked, glibc's thresholds follow the largest mapped block freed so far: until the process has
freed a block of several MB, such arrays are mapped and unmapped, or taken from the heap whose
freed top is trimmed again, and every request touches fresh pages: 1,500 minor page faults and
about 2 ms of a 512² slice's 5 ms of pre- and post-processing (in another run of the same
benchmark, with another history, 0.1 faults). Blocks under 16 MiB now always come from the heap
and up to 32 MiB of free top is kept: no page faults from the first request on. Five bursts of
mixed files (``python -m load.burst --start --bursts 5``): API 477-523 MB after each (441-608 MB
before, same files), worker 774-851 MB (730-834 MB), at the same throughput.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENAS = 2
MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024  # larger blocks get their own mapping, returned on free
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024  # free memory kept at an arena's top before trimming

# Each setting, the environment variable through which an operator overrides it, and its value.
SETTINGS = (
    (M_ARENA_MAX, "MALLOC_ARENA_MAX", ARENAS),
    (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD_BYTES),
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD_BYTES),
)


def tune_malloc() -> dict[str, bool]:
    """Apply the service's arena count and thresholds to glibc's malloc (for threads and
    allocations from now on); per setting, named by its environment variable, whether it was
    applied. A setting is left alone when its variable is set (the operator chose) or the C
    library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return {variable: False for _, variable, _ in SETTINGS}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return {
        variable: variable not in os.environ and bool(mallopt(parameter, value))
        for parameter, variable, value in SETTINGS
    }
