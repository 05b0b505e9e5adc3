"""What this CPU computes fast, where the CPU layers choose a kernel by it.

- VNNI: int8 dot products (ldm/cpu/int8.py uses the flags).
- Native bfloat16 (AVX512-BF16 or AMX): there a bfloat16 conv runs about twice as fast as a float32 one; elsewhere
  oneDNN emulates it, slower than float32, so nothing switches to it.
- AMX, whose kernels (PyTorch's flash attention among them) take their own bfloat16 paths.
- Whether MKL's float32 matmuls run narrower than oneDNN's: MKL picks its AVX2 kernels on a CPU that is not
  Intel's, even one with AVX-512, while oneDNN uses AVX-512 on any. PyTorch's float32 torch.mm, torch.bmm and
  flash attention go to MKL; its oneDNN ops (the packed layers') do not.

Read from Linux's /proc/cpuinfo; any other system says no.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    lines = (line.partition(":") for line in text.splitlines())
    return next((value.strip() for name, _, value in lines if name.strip() == field), "")


@functools.cache
def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo("flags").split())


def native_bfloat16() -> bool:
    return any(flag in cpu_flags() for flag in FLAGS)


def amx() -> bool:
    return "amx_bf16" in cpu_flags()


@functools.cache
def mkl_narrower_than_onednn() -> bool:
    """Whether float32 matmuls are faster through oneDNN than through MKL here: AVX-512 on a CPU not Intel's."""
    vendor = _cpuinfo("vendor_id")
    return bool(vendor) and vendor != "GenuineIntel" and "avx512f" in cpu_flags() and torch.backends.mkl.is_available()
