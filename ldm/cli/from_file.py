"""ldm-txt2img --from-file: a prompt file's jobs, in one process or split over many (torchrun, accelerate launch),
through ldm.jobs.generate_many."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.errors import ConfigError, LdmError

# The options that make one generation, which a prompt file's lines replace by their own.
ONE_GENERATION = ("prompt", "seed", "batch_size")


def add_from_file_options(p: argparse.ArgumentParser, source: Any) -> None:
    """`source`: the group --prompt is in (one of the two is given)."""
    source.add_argument("--from-file", type=Path, metavar="PROMPTS",
                        help="make every job of a prompt file: .txt (a prompt, or A1111's --prompt ... --steps ... "
                        "options, a line), .jsonl or .csv; job j uses --seed + j")  # fmt: skip
    p.add_argument("--skip-existing", action="store_true",
                   help="--from-file: finish the run in --outdir, making only the images it lacks")  # fmt: skip


def run_from_file(args: argparse.Namespace, load: Callable[[argparse.Namespace, str | None], Any],
                  settings: dict[str, Any]) -> int:  # fmt: skip
    """Every process of the run (one, or each that torchrun started) runs its block of the file's jobs."""
    from ldm.jobs.many import generate_many
    from ldm.jobs.prompt_file import read_prompt_file
    from ldm.jobs.world import World

    if args.preview != "none":
        raise ConfigError("--preview shows one image as it forms; leave it out with --from-file")
    world = World.from_environment()
    base = {k: v for k, v in settings.items() if v is not None and k not in ONE_GENERATION}
    lines = read_prompt_file(args.from_file, batch_size=args.batch_size, n_iter=args.n_iter)
    jobs = [{**base, **line} for line in lines]

    def report(record: dict[str, Any]) -> None:
        # One write per line: the processes of a run share a terminal, and print() writes its parts one by one.
        if record["status"] == "done":
            _say(sys.stdout, f"{args.outdir / record['file']}\n")
        else:
            _say(sys.stderr, f"job {record['job']} failed: {record['error']}\n")

    summary = generate_many(lambda device: load(args, device), jobs, args.outdir, seed=args.seed,
                            skip_existing=args.skip_existing, device=args.device, world=world,
                            progress=not args.quiet and world.size == 1, on_record=report)  # fmt: skip
    if world.rank != 0:
        return 2 if summary.failed else 0
    print(summary, file=sys.stderr)
    if summary.failed:
        raise LdmError(f"{len(summary.failed)} of {summary.jobs} jobs failed (see {summary.manifest}); "
                       "fix them and rerun with --skip-existing")  # fmt: skip
    return 0


def _say(stream, line: str) -> None:
    stream.write(line)
    stream.flush()
