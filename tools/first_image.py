"""Launch to a ready pipeline, or to its first image: one side per process, importing only that side's code.

    python tools/first_image.py ours bench/sd-v1-random-fp16.safetensors bench/sd-v1-random-diffusers
    python tools/first_image.py diffusers FILE FOLDER --ready      # stop once the pipeline is loaded

tools/bench.py (`--only first`) times this process from its launch to the moment the pipeline is ready or the
image made, which it prints last (wall-clock seconds since the epoch); each side alternately. The interpreter's
teardown after that is left out on both sides: the image exists by then (and ldm's commands skip it).
"""

from __future__ import annotations

import argparse
import time

PROMPT = "a photograph of an astronaut riding a horse"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=("ours", "diffusers"))
    parser.add_argument("file", help="a single-file checkpoint")
    parser.add_argument("folder", help="the diffusers folder of its configuration (diffusers' offline load)")
    parser.add_argument("--ready", action="store_true", help="stop once the pipeline is loaded")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu", help="cpu (float32) or cuda (float16, as each side runs there)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    size = {"width": args.size, "height": args.size}
    if args.side == "ours":
        from ldm import Pipeline

        pipe = Pipeline.load(args.file, device=args.device)
        if not args.ready:
            pipe(PROMPT, steps=args.steps, sampler="euler", seed=0, progress=False, **size)
        print(time.time())
        return
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_single_file(args.file, config=args.folder, local_files_only=True,
                                                    torch_dtype=dtype, safety_checker=None,
                                                    requires_safety_checker=False).to(args.device)  # fmt: skip
    if not args.ready:
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe(PROMPT, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), **size)
    print(time.time())


if __name__ == "__main__":
    main()
