"""The heap's tuning for streams, and giving back what a burst left (in a
process of its own: the tuning is the whole process's)."""

from __future__ import annotations

import subprocess
import sys

from deposito import allocator

BURST = """
from deposito import allocator
allocator.tune_for_streams()
base = allocator.resident()
blocks = [b"x" * (1 << 20) for _ in range(300)]  # the blocks of 300 stalled downloads, say
last = blocks[-1]  # one still in use, at the heap's top: nothing is given back by itself
del blocks
held = allocator.resident()
trimmed = allocator.trim_if_large(above=base + (64 << 20))
print(base, held, trimmed, allocator.resident())
"""


def test_a_burst_of_freed_buffers_is_given_back_once_the_process_is_large():
    out = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, check=True).stdout
    base, held, trimmed, after = out.split()
    assert int(held) - int(base) > 250 << 20  # what the heap kept of the burst
    assert trimmed == "True" and int(after) - int(base) < 32 << 20, out


def test_a_process_within_its_usual_size_is_not_trimmed():
    trims: list[bool] = []
    assert not allocator.trim_if_large(lambda: 100 << 20, lambda: trims.append(True) or True)
    assert allocator.trim_if_large(lambda: 300 << 20, lambda: trims.append(True) or True) and trims == [True]
