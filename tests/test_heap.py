"""release_free_memory gives freed heap pages back: what lowers the peak RSS before a VAE decode."""

import subprocess
import sys

import pytest
from helpers import needs_proc

from ldm.cpu.heap import _glibc

# In a fresh process: fill 128 MiB of heap with small tensors, keep the last one (so free() cannot shrink the
# heap's top itself), free the rest, and report resident anonymous memory before and after the release.
SCRIPT = """
import re, torch
from ldm.cpu.heap import release_free_memory
def anon_mib():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
blocks = [torch.ones(16 * 1024) for _ in range(2048)]  # 64 KiB each: below glibc's mmap threshold
kept = blocks.pop()
del blocks
before = anon_mib()
released = release_free_memory()
print(released, before - anon_mib())
"""


@needs_proc
@pytest.mark.skipif(_glibc() is None, reason="malloc_trim is glibc's; other C libraries have nothing to release")
def test_freed_heap_pages_are_returned():
    out = subprocess.run([sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) > 100  # MiB of the 128 freed


def test_the_generation_step_releases_after_each_banded_block_and_only_while_it_asks():
    import torch

    from ldm.cpu import heap
    from ldm.cpu.banded import BandedResnetBlock, in_bands
    from ldm.models.vae import ResnetBlock

    block = BandedResnetBlock.replacing(ResnetBlock(32, 32, 8)).eval()
    model = torch.nn.Sequential(block, block)
    calls = []
    original, heap.release_free_memory = heap.release_free_memory, lambda: calls.append(1) or True
    try:
        with torch.no_grad():
            with heap.released_after_each(model, BandedResnetBlock, when=in_bands):
                model(torch.randn(1, 32, 8, 8))  # too small for bands: nothing to release
                model(torch.randn(1, 32, 130, 8))  # in bands: after each block
            model(torch.randn(1, 32, 130, 8))  # the hooks are gone
    finally:
        heap.release_free_memory = original
    assert calls == [1, 1]


# In a fresh process: where a 24 MiB tensor (an activation's size) lives: in a mapping of its own, as glibc serves
# a first large block (and unmaps it when freed: its pages come fresh from the kernel each time), or in the heap.
REUSE = """
import sys, torch
from ldm.cpu.heap import reuse_freed_memory
reused = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def mapping_of(address):
    for line in open("/proc/self/maps"):
        span, *rest = line.split()
        low, high = (int(a, 16) for a in span.split("-"))
        if low <= address < high:
            return rest[-1] if len(rest) == 5 else "its own"
kept = torch.ones(6 * 2**20)
print(reused, mapping_of(kept.data_ptr()))
"""


@pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's")
def test_a_large_allocation_comes_from_the_heap_where_freed_memory_is_reused():
    out = {mode: subprocess.run([sys.executable, "-c", REUSE, mode], check=True, capture_output=True,
                                text=True).stdout.split() for mode in ("reuse", "default")}  # fmt: skip
    assert out == {"reuse": ["True", "[heap]"], "default": ["None", "its", "own"]}
