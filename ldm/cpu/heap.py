"""The C heap of a process that computes on the CPU: freed memory kept for reuse, and handed back when asked (glibc).

glibc serves a large allocation with a fresh mmap and unmaps it when freed (from 128 KiB, a threshold that rises
as such blocks are freed), and gives the heap's free top back at each free past a trim threshold: either way the
next large activation is zero-filled page by page again by the kernel, on every U-Net call (the README has the
figures). `reuse_freed_memory()` (a CPU pipeline's load calls it) serves every allocation below 32 MiB, glibc's
most, from the heap and keeps what is freed there for the next one, until the trims below hand it back. (With no
mmap at all, blocks above that split the heap into pieces and were slower.)

glibc keeps memory freed in the middle of its heap resident until something asks for it back. After sampling,
a 512x512 generation's heap holds 0.1-0.3 GiB of the U-Net's freed activations, and the VAE decode that
follows needs its own large buffers on top: the process's peak RSS. `malloc_trim(0)` returns those pages;
they refault, zero-filled, only if used again. It acts on the whole process (glibc locks and trims every
arena), so the generation step decides when: after sampling, and after each banded VAE block of its decode
(ldm/generate/pipeline.py); no module calls it from its own forward.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:  # glibc's soname; ctypes.util.find_library would run ldconfig in a subprocess
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_FROM = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
TRIM_FROM = 1 << 30  # a free top of the heap this large goes back at once; release_free_memory trims the rest


@functools.cache
def reuse_freed_memory() -> bool:
    """Allocations below MMAP_FROM from the heap, and freed memory kept there for the next allocation, until
    release_free_memory. For the whole process, once; False where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM) == 1 and \
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_FROM) == 1  # fmt: skip


IDLE_BUFFERS: list[Callable[[], None]] = []  # each lets a buffer kept for reuse go (ldm/cpu/packing.py's scratch)


def release_free_memory() -> bool:
    """Let idle buffers go and return free heap pages to the kernel; False where the C library is not glibc."""
    for drop in IDLE_BUFFERS:
        drop()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@contextmanager
def released_after_each(model: nn.Module, kind: type[nn.Module], when: Callable[[Tensor], bool]) -> Iterator[None]:
    """Within the block, free heap pages go back after each `kind` module of `model` whose input passes `when`.

    For the caller that owns the process's memory at that moment (the generation step, one at a time): the VAE's
    banded ResnetBlocks (ldm/cpu/banded.py) leave many band-sized buffers that glibc would keep through the
    decode, where a generation peaks. The modules themselves never release anything."""

    def release(module: nn.Module, args: tuple, output: Tensor) -> None:
        if when(args[0]):
            release_free_memory()

    handles = [m.register_forward_hook(release) for m in model.modules() if isinstance(m, kind)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
