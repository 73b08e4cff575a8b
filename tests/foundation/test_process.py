"""Every process caps glibc's malloc arenas at start-up (common.process.limit_malloc_arenas)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Eight threads alive at once, each allocating: glibc gives each new thread an arena of its
# own while there are fewer than its limit. The count comes from malloc_info's <heap nr=...>.
ARENAS = textwrap.dedent("""
    import ctypes, os, sys, tempfile, threading
    from common.process import limit_malloc_arenas
    capped = limit_malloc_arenas() if sys.argv[1] == "cap" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    together = threading.Barrier(8)
    def work():
        blocks = [libc.malloc(4096) for _ in range(64)]
        together.wait()
        for b in blocks:
            libc.free(b)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    path = os.path.join(tempfile.mkdtemp(), "malloc.xml")
    f = libc.fopen(path.encode(), b"w"); libc.malloc_info(0, f); libc.fclose(f)
    print(capped, open(path).read().count("<heap nr="))
""")


def arenas(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", ARENAS, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items()
                                 if k != "MALLOC_ARENA_MAX"}, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas")
def test_the_cap_holds_the_arenas_at_two_where_threads_would_take_one_each() -> None:
    assert arenas("cap") == ("True", 2)
    capped, uncapped = arenas("free")
    assert capped == "False" and uncapped > 2  # what the cap prevents: one per thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas")
def test_a_malloc_arena_max_in_the_environment_is_left_to_glibc() -> None:
    assert arenas("cap", MALLOC_ARENA_MAX="4") == ("False", 4)
