"""Where one U-Net evaluation with CFG spends its time, by class of operation: ours beside OpenVINO's.

    python tools/op_classes.py --size 512 --dtype bfloat16      # needs openvino (pip install 'ldm[bench]')

Ours through torch.profiler (the self time of each aten / oneDNN op), OpenVINO through its own per-node counters
(PERF_COUNT), both on the random SD v1 weights of tools/bench.py, with the same threads and inputs. Each op or
node type goes into one class (CLASSES); what no class names counts as "other".
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402

# class -> substrings of our op names and of OpenVINO's node types (lower case)
CLASSES = {
    "attention": ("attention", "softmax", "bmm", "baddbmm", "mha", "matmul"),
    "convolution": ("convolution", "conv2d", "qconv"),
    "linear": ("linear", "fullyconnected", "addmm", "qlinear"),
    "normalisation": ("group_norm", "layer_norm", "mvn", "groupnormalization", "normalize"),
    "elementwise": ("add", "mul", "silu", "gelu", "eltwise", "subgraph", "sigmoid", "div", "erf", "tanh"),
    "layout and copies": ("copy", "reorder", "transpose", "permute", "cat", "concat", "clone", "contiguous",
                          "reshape", "upsample", "interpolate", "slice", "split", "strided"),
}  # fmt: skip


def op_class(name: str) -> str:
    name = name.lower()
    return next((c for c, keys in CLASSES.items() if any(k in name for k in keys)), "other")


def ours_by_class(unet, args: tuple) -> Counter:
    with torch.inference_mode():
        unet(*args)
        with torch.profiler.profile() as profile:
            unet(*args)
    seconds = Counter()
    for event in profile.key_averages():
        if event.key.startswith(("aten::", "mkldnn::", "onednn::")) and event.self_cpu_time_total > 0:
            seconds[op_class(event.key.split("::")[1])] += event.self_cpu_time_total / 1e6
    return seconds


def openvino_by_class(theirs_unet, inputs: tuple, hint: str, threads: int) -> Counter:
    import openvino

    with torch.no_grad():
        converted = openvino.convert_model(bench.PositionalUNet(theirs_unet.eval()), example_input=inputs)
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True,
              "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
    request = openvino.Core().compile_model(converted, "CPU", config).create_infer_request()
    numpy_inputs = [t.numpy() for t in inputs]
    request.infer(numpy_inputs)
    request.infer(numpy_inputs)
    seconds = Counter()
    for node in request.profiling_info:
        seconds[op_class(openvino_op(node.node_name, node.node_type))] += node.real_time.total_seconds()
    return seconds


def openvino_op(node_name: str, node_type: str) -> str:
    """The PyTorch op a node came from, where its name says (`.../aten::scaled_dot_product_attention/...`: its
    fused attention is a node of type Subgraph), else the node's type."""
    aten = [part for part in node_name.split("/") if part.startswith("aten::")]
    return aten[-1].removeprefix("aten::") if aten else node_type


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-v1", help="config preset: sd-v1 (real shapes) or tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache", type=Path, default=Path("bench"), help="where tools/bench.py keeps the weights")
    args = parser.parse_args(argv)
    mine, theirs = measure(args)
    print(f"One U-Net evaluation with CFG, {args.size}x{args.size}, {args.dtype}, {args.threads} threads (s):\n")
    print(table(mine, theirs))


def measure(args: argparse.Namespace) -> tuple[Counter, Counter]:
    torch.set_num_threads(args.threads)
    single, folder = bench.weights(args.model, args.cache)
    dtype = getattr(torch, args.dtype)
    ours = bench.Pipeline.load(single, dtype=dtype)
    context, t = ours.encode(bench.PROMPTS, 1), torch.tensor([500, 500])
    z, z_batch = bench.cfg_latents(args.size)
    mine = ours_by_class(ours.model.unet, (z.to(dtype), t[:1], context.to(dtype)))
    del ours
    theirs = openvino_by_class(bench.load_diffusers(single, folder).unet, (z_batch, t, context.float()),
                               "bf16" if dtype == torch.bfloat16 else "f32", args.threads)  # fmt: skip
    return mine, theirs


def table(mine: Counter, theirs: Counter) -> str:
    lines = ["| class | ours | OpenVINO | ours / OpenVINO |", "|---|---|---|---|"]
    for name, a, b in [*((c, mine[c], theirs[c]) for c in [*CLASSES, "other"]),
                       ("total", sum(mine.values()), sum(theirs.values()))]:  # fmt: skip
        lines.append(f"| {name} | {a:.4f} | {b:.4f} | {a / b if b else float('nan'):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
