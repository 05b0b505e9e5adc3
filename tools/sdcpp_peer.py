"""One stable-diffusion.cpp generation from a checkpoint, timed, for `tools/bench.py --peer sdcpp`.

    python tools/sdcpp_peer.py bench/sd-v1-random-fp16.safetensors --type f16 --size 256 --steps 4

Runs with any Python that has stable-diffusion-cpp-python (it compiles from source: `pip install
stable-diffusion-cpp-python`), so it imports nothing of ldm's. Prints one JSON line: the generation's seconds
(after the load, as bench.py times ours) and this process's peak RSS in GiB.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def peak_rss_gib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="an SD v1 single-file checkpoint")
    parser.add_argument("--type", default="f16", help="stable-diffusion.cpp's weight type: f32, f16, q8_0, ...")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    args = parser.parse_args(argv)
    from stable_diffusion_cpp import StableDiffusion

    sd = StableDiffusion(model_path=args.file, wtype=args.type, n_threads=args.threads, verbose=False)
    started = time.perf_counter()
    sd.generate_image(prompt=args.prompt, width=args.size, height=args.size, cfg_scale=7.5, sample_method="euler",
                      sample_steps=args.steps, seed=0)  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - started, "rss": peak_rss_gib()}))


if __name__ == "__main__":
    main()
