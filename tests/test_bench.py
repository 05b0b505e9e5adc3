"""tools/bench.py runs and reports every line it is asked for (a smoke test: timings are reports, not tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import bench  # noqa: E402

from ldm.cpu.features import native_bfloat16  # noqa: E402


def test_in_process_lines_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--sizes", "64", "--repeats", "1", "--only", "text,unet,vae,bf16",
                "--cache", str(tmp_path), "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    assert rows[0]["fp32_gflops"] > 0
    lines = [r["line"] for r in rows[1:]]
    assert lines == ["text encoding for CFG, nothing cached, vs diffusers' encode_prompt (s)",
                     "text encoding for CFG, nothing cached, vs diffusers' text encoder on the batch of 2 (s)",
                     "text encoding for CFG, new prompt, empty negative cached, vs encode_prompt (s)",
                     "U-Net with CFG (batch 2), 64x64 (s)", "VAE decode, 64x64 (s)",
                     "U-Net with CFG, bfloat16, 64x64 (s)"]  # fmt: skip
    assert all(r["ours"] > 0 and r["diffusers"] > 0 and r["floor_ratio"] > 0 for r in rows[1:])
    assert 0 < rows[-1]["error_vs_fp32"] < 0.1
    # the uncond/cond batch's shared latent: ours runs the layers before the first cross-attention once
    unet_row = rows[4]
    assert 0.5 < unet_row["flops_vs_floor"] < 1 and 0.5 < rows[-1]["flops_vs_floor"] < 1
    assert "| U-Net with CFG (batch 2), 64x64 (s) |" in capsys.readouterr().out


def test_taesd_lines_on_a_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--sizes", "64", "--repeats", "1", "--only", "taesd", "--cache", str(tmp_path),
                "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())[1:]
    bf16 = ["TAESD decode for previews, bfloat16, 64x64 (s), vs diffusers' float32"] if native_bfloat16() else []
    assert [r["line"] for r in rows] == ["TAESD decode, 64x64 (s)", *bf16,
                                         "preview overhead, taesd every 5, 20 steps, 64x64 (share)"]  # fmt: skip
    assert rows[0]["ours"] > 0 and rows[0]["diffusers"] > 0 and rows[0]["vs_full_vae"] > 0
    assert 0 < rows[-1]["ours"] < 1 and rows[-1]["previews"] == 3 and rows[-1]["preview_seconds"] > 0
    if bf16:  # the previews' copy: about as close to float32 as bfloat16 gets
        assert 0 < rows[1]["error_vs_fp32"] < 2e-2 and rows[1]["vs_full_vae"] > 0


def test_fresh_process_load_reports_time_and_memory(tmp_path):
    bench.weights("tiny", tmp_path)
    command = [sys.executable, str(TOOLS / "bench.py"), "--child", "ours", "load-cold", "--model", "tiny",
               "--cache", str(tmp_path), "--threads", "1"]  # fmt: skip
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    assert result["seconds"] > 0 and 0.05 < result["rss"] < 8


def test_int8_line_on_a_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--sizes", "64", "--repeats", "1", "--only", "int8", "--cache", str(tmp_path),
                "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())[1:]
    if bench.int8_available() is not None:  # this CPU: no line, and the reason said
        assert rows == []
        return
    assert [r["line"] for r in rows] == ["U-Net with CFG, int8 weights, 64x64 (s)"]
    assert rows[0]["ours"] > 0 and rows[0]["diffusers"] > 0 and rows[0]["vs_ours_fp32"] > 0
    assert 0 < rows[0]["error_vs_fp32"] < 0.1


def test_fresh_process_generation_from_the_float16_file_with_int8_weights(tmp_path):
    bench.weights("tiny", tmp_path)
    command = [sys.executable, str(TOOLS / "bench.py"), "--child", "ours", "half-int8", "--model", "tiny",
               "--cache", str(tmp_path), "--threads", "1", "--child-size", "64", "--e2e-steps", "1"]  # fmt: skip
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    assert result["seconds"] > 0 and 0.05 < result["rss"] < 8


def test_fresh_process_memory_is_the_childs_own_not_the_parents(tmp_path):
    """ru_maxrss in a vfork-spawned child counted the parent's RSS: every child figure read 14.7 GiB."""
    import torch

    bench.weights("tiny", tmp_path)
    ballast = torch.ones(2**29)  # 2 GiB, touched, in this (parent) process
    command = [sys.executable, str(TOOLS / "bench.py"), "--child", "ours", "load-warm", "--model", "tiny",
               "--cache", str(tmp_path), "--threads", "1"]  # fmt: skip
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    assert ballast.sum() > 0 and result["rss"] < 1.5


def test_the_floor_counts_the_same_flops_for_packed_layers():
    import torch

    from ldm.cpu.swap_in import swap_in
    from ldm.models.unet import UNetModel

    unet = UNetModel(bench.model_config("tiny").unet).eval()
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([5, 500]), torch.randn(2, 77, 32)
    with torch.inference_mode():
        plain = bench.flops(lambda: unet(x, t, context))
        swap_in(unet)(x, t, context)
        assert bench.flops(lambda: unet(x, t, context)) == plain > 0


def test_the_floor_counts_cpu_attention():
    """torch's flop counter knows the CUDA attention kernels only; the bench adds the CPU one."""
    import torch
    import torch.nn.functional as F

    q, k = torch.randn(2, 8, 64, 40), torch.randn(2, 8, 77, 40)
    with torch.inference_mode():
        assert bench.flops(lambda: F.scaled_dot_product_attention(q, k, k)) == 2 * (2 * 2 * 8 * 64 * 77 * 40)


def test_prompt_control_lines_on_a_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--model", "tiny", "--sizes", "64", "--repeats", "1", "--only", "prompt", "--cache", str(tmp_path),
                "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())[1:]
    assert [r["line"].split(" (")[0].split(",")[0] for r in rows] == [
        "switch between two LoRAs", "U-Net with CFG", "weighted 199-token prompt + negative"]  # fmt: skip
    assert all(r["ours"] > 0 and r["diffusers"] > 0 for r in rows) and rows[1]["vs_no_lora"] > 0


def test_launch_to_first_image_runs_each_side_in_its_own_process(tmp_path):
    import argparse

    single, _ = bench.weights("tiny", tmp_path)
    args = argparse.Namespace(model="tiny", cache=tmp_path, threads=1)
    assert bench.launched(args, "ours", single, ready=False) > 0
    assert bench.launched(args, "diffusers", bench.half_file(single), ready=True, cold=True) > 0


def test_openvino_peer_lines_on_a_tiny_model(tmp_path):
    """In its own process, as the op-class test: OpenVINO's runtime and the thread count stay out of this one."""
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--model", "tiny", "--sizes", "64", "--repeats", "1",
                    "--only", "floor", "--peer", "openvino", "--cache", str(tmp_path), "--out", str(out)], check=True,
                   capture_output=True)  # fmt: skip
    rows = json.loads(out.read_text())[1:]
    names = ["float32", *(["bfloat16"] if native_bfloat16() else [])]
    assert [r["line"] for r in rows] == [f"U-Net with CFG (batch 2), {n}, 64x64, vs OpenVINO (s)" for n in names]
    assert all(r["ours"] > 0 and r["diffusers"] > 0 for r in rows)
    assert rows[0]["error_vs_fp32"] < 1e-6 and rows[0]["peer_error_vs_fp32"] < 1e-4  # the same U-Net, twice
    assert all(0 < r["error_vs_fp32"] < 0.1 and 0 < r["peer_error_vs_fp32"] < 0.1 for r in rows[1:])


def test_op_classes_of_both_sides_on_a_tiny_model(tmp_path):
    import op_classes

    assert op_classes.openvino_op("m.attn1/aten::scaled_dot_product_attention/ScaledDotProductAttention",
                                  "Subgraph") == "scaled_dot_product_attention"  # fmt: skip
    assert op_classes.op_class("scaled_dot_product_attention") == "attention"
    assert op_classes.op_class(op_classes.openvino_op("MVN_1", "MVN")) == "normalisation"
    result = subprocess.run([sys.executable, str(TOOLS / "op_classes.py"), "--model", "tiny", "--size", "64",
                             "--dtype", "float32", "--threads", "1", "--cache", str(tmp_path)], check=True,
                            capture_output=True, text=True)  # fmt: skip
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| ")}  # fmt: skip
    assert {"attention", "convolution", "linear", "normalisation", "total"} <= set(rows)
    assert all(float(rows[name][i]) > 0 for name in ("attention", "convolution", "linear") for i in (1,))
    assert float(rows["convolution"][2]) > 0 and float(rows["total"][2]) > 0


STAND_IN_SDCPP = """
import json, os, time

class StableDiffusion:  # records what tools/sdcpp_peer.py asks of stable-diffusion.cpp
    def __init__(self, **kwargs):
        self.calls = [kwargs]

    def generate_image(self, **kwargs):
        time.sleep(0.01)
        with open(os.environ["SDCPP_CALLS"], "a") as log:
            log.write(json.dumps([self.calls[0], kwargs]) + "\\n")
        return []
"""


def test_sdcpp_peer_lines_run_each_side_in_its_own_process(tmp_path):
    """stable-diffusion.cpp compiles for 15 minutes, so a stand-in module takes its place: the lines' plumbing, and
    the settings the peer is given (the file, its weight type per mode, size, steps, Euler, CFG 7.5, threads)."""
    (tmp_path / "stand_in").mkdir()
    (tmp_path / "stand_in" / "stable_diffusion_cpp.py").write_text(STAND_IN_SDCPP)
    calls, out = tmp_path / "calls.jsonl", tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stand_in"), "SDCPP_CALLS": str(calls)}
    subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--model", "tiny", "--sizes", "64", "--repeats", "1",
                    "--only", "floor", "--peer", "sdcpp", "--e2e-steps", "2", "--threads", "1",
                    "--cache", str(tmp_path), "--out", str(out)], check=True, capture_output=True, env=env)  # fmt: skip
    rows = json.loads(out.read_text())[1:]
    kinds = {"float32": "f32", "bfloat16": "f16", "int8": "q8_0"}
    line = "{} beside stable-diffusion.cpp {}, float16 file, 64x64, 2 steps"
    assert [r["line"] for r in rows] == [line.format(m, k) + end for m, k in kinds.items()
                                         for end in (" (s)", ": peak RSS (GiB)")]  # fmt: skip
    assert all(r["ours"] > 0 and r["diffusers"] > 0 for r in rows)
    made = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [m[0]["wtype"] for m in made] == list(kinds.values())
    assert all(m[0]["model_path"].endswith("-fp16.safetensors") and m[0]["n_threads"] == 1 for m in made)
    assert all(m[1] | {"prompt": None} == {"prompt": None, "width": 64, "height": 64, "cfg_scale": 7.5,
               "sample_method": "euler", "sample_steps": 2, "seed": 0} for m in made)  # fmt: skip


def test_sdcpp_peer_says_what_is_missing(tmp_path):
    result = subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--model", "tiny", "--peer", "sdcpp",
                             "--sdcpp-python", sys.executable, "--cache", str(tmp_path)], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    assert result.returncode == 2
    assert "cannot import stable_diffusion_cpp; pip install stable-diffusion-cpp-python" in result.stderr
    assert not list(tmp_path.iterdir())  # refused before any weights were made
