"""services.memory: the API's thread pool allocates in at most two glibc arenas (resident memory
then stays level across bursts instead of keeping one high-water mark per arena), and a slice's
1 MB temporaries reuse the heap's pages instead of faulting fresh ones in on every request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Sixteen threads allocating at once, then glibc's own count of its arenas (malloc_info's heaps).
ARENA_PROBE = textwrap.dedent(
    """
    import ctypes, json, re, sys, tempfile, threading
    from services.memory import tune_malloc
    applied = tune_malloc() if sys.argv[1] == "tune" else {}
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
    print(json.dumps({"applied": applied, "arenas": len(re.findall("<heap nr=", open(path).read()))}))
    """
)

# A post-processing step's pattern: three 1 MB float32 maps and a 256 KB label map made and
# dropped, 50 times; the minor page faults per round once warm.
FAULT_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from services.memory import tune_malloc
    applied = tune_malloc() if sys.argv[1] == "tune" else {}
    def one_round():
        maps = [np.ones((512, 512), dtype=np.float32) * k for k in range(3)]
        labels = np.argmax(np.stack(maps), axis=0).astype(np.uint8)
        return int(labels.sum())
    for _ in range(5):
        one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        one_round()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50
    print(json.dumps({"applied": applied, "faults_per_round": faults}))
    """
)


def probe(script: str, mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


def test_sixteen_allocating_threads_share_two_arenas() -> None:
    tuned = probe(ARENA_PROBE, "tune")
    assert tuned["applied"]["MALLOC_ARENA_MAX"] and tuned["arenas"] == 2
    assert probe(ARENA_PROBE, "none")["arenas"] > 2  # what glibc does unasked (8 per core)


def test_an_operators_malloc_arena_max_wins() -> None:
    result = probe(ARENA_PROBE, "tune", env={"MALLOC_ARENA_MAX": "4"})
    assert result["applied"]["MALLOC_ARENA_MAX"] is False and result["arenas"] <= 4
    assert result["applied"]["MALLOC_MMAP_THRESHOLD_"] is True  # the other settings still apply


def test_a_slices_temporaries_reuse_pages_instead_of_faulting_them_in() -> None:
    untuned = probe(FAULT_PROBE, "none")["faults_per_round"]
    tuned = probe(FAULT_PROBE, "tune")
    assert all(tuned["applied"].values())
    assert untuned > 200  # glibc unasked: most of the 3.3 MB faulted in again every round
    assert tuned["faults_per_round"] < 5


def test_an_operators_thresholds_win() -> None:
    result = probe(FAULT_PROBE, "tune", env={"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert result["applied"]["MALLOC_MMAP_THRESHOLD_"] is False and result["applied"]["MALLOC_TRIM_THRESHOLD_"] is False
    assert result["faults_per_round"] > 200  # the operator's small thresholds: a mapping per array
