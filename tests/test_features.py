"""What the CPU computes fast (ldm/cpu/features.py), read from /proc/cpuinfo's fields."""

import pytest
import torch

from ldm.cpu import features


@pytest.mark.parametrize(
    ("vendor", "flags", "narrower"),
    [("AuthenticAMD", "fpu avx2 avx512f avx512_bf16", True),  # MKL runs AVX2 there; oneDNN AVX-512
     ("GenuineIntel", "fpu avx2 avx512f", False),  # MKL runs AVX-512 on Intel's own
     ("AuthenticAMD", "fpu avx2", False),  # no AVX-512: the two run equally wide
     ("", "", False)],  # no /proc/cpuinfo: nothing switches
)  # fmt: skip
def test_mkl_is_narrower_only_on_a_cpu_with_avx512_not_intels(monkeypatch, vendor, flags, narrower):
    info = {"vendor_id": vendor, "flags": flags}
    monkeypatch.setattr(features, "_cpuinfo", lambda field: info.get(field, ""))
    read_flags = features.cpu_flags.__wrapped__  # past the cache, from the patched fields
    monkeypatch.setattr(features, "cpu_flags", read_flags)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    assert features.mkl_narrower_than_onednn.__wrapped__() is narrower
    assert features.native_bfloat16() is ("avx512_bf16" in flags)


def test_a_field_is_read_by_its_name_from_the_first_processor(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f\n\nprocessor\t: 1\n"
                       "vendor_id\t: Other\n")  # fmt: skip
    monkeypatch.setattr(features, "Path", lambda _: cpuinfo)
    assert features._cpuinfo.__wrapped__("vendor_id") == "AuthenticAMD"
    assert features._cpuinfo.__wrapped__("flags") == "fpu avx512f"
    assert features._cpuinfo.__wrapped__("model name") == ""
