"""Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there a bfloat16 conv runs about twice as fast
as a float32 one; elsewhere oneDNN emulates it, slower than float32, so nothing switches to it. And whether it has
AMX, whose kernels (PyTorch's flash attention among them) take their own bfloat16 paths.

Read from Linux's /proc/cpuinfo flags; any other system says no.
"""

from __future__ import annotations

import functools
from pathlib import Path

FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )


def native_bfloat16() -> bool:
    return any(flag in cpu_flags() for flag in FLAGS)


def amx() -> bool:
    return "amx_bf16" in cpu_flags()
