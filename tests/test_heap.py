"""While the U-Net runs, freed memory is reused instead of arriving as fresh zero-filled pages each step."""

import subprocess
import sys

import pytest

from ldm.heap import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")

# Run in a fresh process: other tests' file mappings next to the heap can make glibc map a block afresh anyway
# (seen once in three runs after the mapped-safetensors tests), which would say nothing about this setting.
PROBE = """
import resource, torch
from ldm.heap import reusing_freed_memory
BLOCK = 64 << 20  # above glibc's largest automatic mmap threshold: mapped and unmapped every time by default

def faults_of_a_fresh_block():
    torch.ones(BLOCK // 4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(BLOCK // 4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_a_fresh_block()
with reusing_freed_memory() as reusing:
    faults_of_a_fresh_block()
    inside = faults_of_a_fresh_block()
print(default, reusing, inside, faults_of_a_fresh_block())
"""


def test_freed_blocks_are_reused_inside_and_returned_after():
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout.split()
    default, reusing, inside, after = int(out[0]), out[1] == "True", int(out[2]), int(out[3])
    pages = (64 << 20) // 4096
    assert default > pages // 2  # by default, new pages every time
    assert reusing and inside < 100  # the freed block came back, pages and all
    assert after > pages // 2  # glibc's own behaviour again
