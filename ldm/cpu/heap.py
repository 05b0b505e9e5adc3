"""Hand the C heap's free pages back to the kernel (glibc only).

glibc keeps memory freed in the middle of its heap resident until something asks for it back. After sampling,
a 512x512 generation's heap holds 0.1-0.3 GiB of the U-Net's freed activations, and the VAE decode that
follows needs its own large buffers on top: the process's peak RSS. `malloc_trim(0)` returns those pages;
they refault, zero-filled, only if used again. It acts on the whole process (glibc locks and trims every
arena), so the generation step decides when: once, after sampling (ldm/generate/txt2img.py); no module
calls it from its forward.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:  # glibc's soname; ctypes.util.find_library would run ldconfig in a subprocess
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return free heap pages to the kernel; False where the C library is not glibc (nothing to do)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
