"""While the U-Net runs, freed memory is reused instead of arriving as fresh zero-filled pages each step."""

import resource

import pytest
import torch

from ldm.heap import _glibc, reusing_freed_memory

pytestmark = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")
BLOCK = 64 << 20  # above glibc's largest automatic mmap threshold: mapped and unmapped every time by default


def faults_of_a_fresh_block() -> int:
    """Minor page faults while a second 64 MiB tensor, allocated after the first one is freed, is filled."""
    torch.ones(BLOCK // 4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(BLOCK // 4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_inside_and_returned_after():
    assert faults_of_a_fresh_block() > BLOCK // 4096 // 2  # by default, new pages every time
    with reusing_freed_memory() as reusing:
        assert reusing
        faults_of_a_fresh_block()
        assert faults_of_a_fresh_block() < 100  # the freed block came back, pages and all
    assert faults_of_a_fresh_block() > BLOCK // 4096 // 2  # glibc's own behaviour again
