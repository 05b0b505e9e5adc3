"""tools/cuda_check.py: its dry run (tiny shapes on the CPU) writes every section of the report, and without a GPU
the real run says so in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import cuda_check  # noqa: E402

# --compile is left out of the suite's dry run: compiling even the tiny U-Net takes half a minute on 2 cores
# (Pipeline.compile's own test covers it).
SECTIONS = [name for name in cuda_check.SECTIONS if name != "compile"]


def test_the_dry_run_reports_every_section(tmp_path):
    out = tmp_path / "report"
    assert cuda_check.main([str(out), "--dry-run", "--cache", str(tmp_path), "--only", ",".join(SECTIONS)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "CPU (dry run)" and list(report["sections"]) == SECTIONS
    failed = {name: rows for name, rows in report["sections"].items() if isinstance(rows, str)}
    assert failed == {}
    parity = report["sections"]["parity"]
    assert len(parity) == 4 and all(row["max_pixel_difference"] <= 2 for row in parity)
    assert all(row["max_pixel_difference"] <= 2 for row in report["sections"]["attention"])
    assert report["sections"]["speed"][0]["ours"] > 0 and report["sections"]["first_image"][0]["ours"] > 0
    assert report["sections"]["vae_fallback"][0]["max_difference"] < 1e-4
    taesd = report["sections"]["taesd"][0]
    assert taesd["ours"] > 0 and taesd["ours_over_full_vae"] > 0 and taesd["relative_difference"] < 1e-5
    text = (out / "report.md").read_text()
    assert text.startswith("# CUDA check on CPU (dry run)") and "## memory" in text


def test_past_the_budget_sections_are_skipped_and_said(tmp_path):
    out = tmp_path / "report"
    assert cuda_check.main([str(out), "--dry-run", "--cache", str(tmp_path), "--minutes", "0"]) == 0
    sections = json.loads((out / "report.json").read_text())["sections"]
    assert all(value.startswith("skipped: past the 0.0-minute budget") for value in sections.values())


def test_without_a_gpu_the_real_run_says_what_is_missing(tmp_path):
    if torch.cuda.is_available():
        return  # a GPU machine: the real run is the check
    result = subprocess.run([sys.executable, str(TOOLS / "cuda_check.py"), str(tmp_path / "r")], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 2 and not (tmp_path / "r").exists()
    assert result.stderr.splitlines()[0].startswith("cuda_check: no CUDA GPU")


def test_an_unknown_section_is_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cuda_check.main([str(tmp_path / "report"), "--dry-run", "--cache", str(tmp_path), "--only", "parity,tasd"])
    assert exit_.value.code == 2 and "unknown --only sections ['tasd']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
