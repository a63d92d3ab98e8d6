"""services.memory: the API's thread pool allocates in at most two glibc arenas (resident memory
then stays level across bursts instead of keeping one high-water mark per arena)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Sixteen threads allocating at once, then glibc's own count of its arenas (malloc_info's heaps).
PROBE = textwrap.dedent(
    """
    import ctypes, re, sys, tempfile, threading
    from services.memory import limit_malloc_arenas
    applied = limit_malloc_arenas() if sys.argv[1] == "limit" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    barrier = threading.Barrier(16)
    def allocate():
        barrier.wait()
        blocks = [libc.malloc(1000) for _ in range(20000)]
        for block in blocks:
            libc.free(block)
    threads = [threading.Thread(target=allocate) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    path = tempfile.mktemp()
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(applied, len(re.findall("<heap nr=", open(path).read())))
    """
)


def arenas_after_threads(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    applied, count = out.stdout.split()
    return applied, int(count)


def test_sixteen_allocating_threads_share_two_arenas() -> None:
    assert arenas_after_threads("limit") == ("True", 2)
    assert arenas_after_threads("none")[1] > 2  # what glibc does unasked (8 per core)


def test_an_operators_malloc_arena_max_wins() -> None:
    import os

    applied, count = arenas_after_threads("limit", env={**os.environ, "MALLOC_ARENA_MAX": "4"})
    assert applied == "False" and count <= 4
