"""Convert SD v1 checkpoints: .ckpt -> .safetensors, single file <-> diffusers folder, fp16, EMA, pruning.

python tools/convert.py sd-v1-4.ckpt sd-v1-4.safetensors --half --prune
python tools/convert.py v1-5-pruned-emaonly.safetensors sd15-diffusers --to diffusers
python tools/convert.py sd15-diffusers sd15.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm.checkpoints.convert import describe, model_config, prepare, write_diffusers_folder, write_single_file
from ldm.checkpoints.read import read_checkpoint
from ldm.cli.parser import OneLineParser
from ldm.config import ModelConfig
from ldm.errors import LdmError


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="a .safetensors, .ckpt/.pt/.bin file or a diffusers folder")
    parser.add_argument("dst", type=Path, help="the file or folder to write")
    parser.add_argument("--to", choices=("single", "diffusers"), help="output layout (default: from DST's name)")
    parser.add_argument("--half", action="store_true", help="store float weights as float16")
    parser.add_argument("--prune", action="store_true", help="keep only the weights inference needs")
    parser.add_argument("--ema", action="store_true", help="use the EMA copy of the U-Net weights (implies --prune)")
    parser.add_argument("--config", type=Path, help="model config JSON, for a non-standard architecture")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    to = args.to or ("single" if args.dst.suffix == ".safetensors" else "diffusers")
    try:
        if args.dst.exists() and not args.force:
            raise LdmError(f"{args.dst} already exists; choose another name or pass --force to replace it")
        if to == "single" and args.dst.suffix != ".safetensors":
            raise LdmError(f"a single file is written as .safetensors; name the output {args.dst.stem}.safetensors")
        checkpoint = read_checkpoint(args.src)
        config = model_config(checkpoint, ModelConfig.from_json(args.config) if args.config else None)
        tensors = prepare(checkpoint, ema=args.ema, prune=args.prune or args.ema or to == "diffusers", half=args.half)
        if to == "single":
            write_single_file(tensors, args.dst, config, force=args.force)
        else:
            write_diffusers_folder(tensors, args.dst, config, force=args.force)
    except LdmError as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({to}): {describe(tensors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
