"""generate_many: a list of jobs, one image each, run by every process of a run (torchrun, accelerate launch)
on its own block of them, giving the same images whatever the number of processes.

Job j's seed is its own, or the run's seed + j; its image is `job-NNNNN-<seed>.png`. A job that fails is
recorded and the rest still run; a rerun with skip_existing makes only the images that are missing.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import ConfigError, LdmError
from ldm.generate.request import GenerationRequest
from ldm.jobs import records
from ldm.jobs.group import Group
from ldm.jobs.world import World
from ldm.outputs.png import save_png_as

if TYPE_CHECKING:
    from ldm.generate.pipeline import Pipeline

NO_RECORD = "neither an image nor a record in this folder (if another machine made it, copy its files here)"
JOB_FIELDS = {f.name for f in dataclasses.fields(GenerationRequest)} - {"batch_size", "extra"}


@dataclass(frozen=True)
class Summary:
    jobs: int
    made: int  # images this run made
    skipped: int  # images an earlier run had made
    failed: tuple[int, ...]  # the jobs that failed
    processes: int
    seconds: float  # rank 0's time, from the start to every process done
    manifest: Path

    def __str__(self) -> str:
        failed = f", {len(self.failed)} failed (jobs {', '.join(map(str, self.failed))})" if self.failed else ""
        rate = self.made / self.seconds if self.seconds else 0.0
        processes = f"{self.processes} process" + ("es" if self.processes > 1 else "")
        return (f"{self.jobs} jobs: {self.made} made, {self.skipped} already there{failed}; {processes}, "
                f"{self.seconds:.1f} s, {rate:.2f} jobs/s; manifest: {self.manifest}")  # fmt: skip


def generate_many(
    pipe_factory: Callable[[str | None], Pipeline],
    jobs: Sequence[str | Mapping[str, Any]],
    outdir: str | Path,
    *,
    seed: int | None = None,
    skip_existing: bool = False,
    device: str | None = None,
    world: World | None = None,
    progress: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Run this process's block of `jobs` (prompts, or dicts of GenerationRequest settings) into `outdir`.

    pipe_factory(device) loads the pipeline, on this process's device (`cuda:LOCAL_RANK`, the CPU, or None for
    a single process's default; `device` "cuda" also means this process's GPU). seed: job j's, where it gives
    none, is seed + j; None: one drawn from the OS on rank 0 and shared. skip_existing: resume the run in
    `outdir`, making only the images it lacks. on_record(record) after each job this process runs. Every
    process returns the run's Summary; rank 0 writes `outdir/manifest.jsonl`."""
    world = world or World.from_environment()
    outdir = Path(outdir)
    settings = [_job_settings(j, job) for j, job in enumerate(jobs)]
    earlier = records.read_run(outdir)
    known_seed = _resumed_seed(earlier, seed, skip_existing, outdir)
    group = Group(world)
    try:
        started = time.monotonic()
        run = group.from_rank_0({"seed": secrets.randbits(32) if known_seed is None else known_seed,
                                 "run": secrets.token_hex(4)})  # fmt: skip
        if world.rank == 0 and earlier is None:
            records.write_run(outdir, {"seed": run["seed"], "jobs": len(settings)})
        seeds = job_seeds(settings, run["seed"])
        mine = [j for j in world.jobs(len(settings))
                if not (skip_existing and (outdir / records.image_name(j, seeds[j])).exists())]  # fmt: skip
        if mine:
            import torch

            pipe = pipe_factory(world.device(device, torch.cuda.is_available()))
        for j in mine:
            record = _run_job(pipe, j, settings[j], seeds[j], outdir, progress)
            records.write_record(outdir, {**record, "rank": world.rank, "run": run["run"]})
            if on_record is not None:
                on_record(record)
        group.wait_for_all()
        summary = None
        if world.rank == 0:
            summary = _finish(outdir, seeds, run["run"], world.size, time.monotonic() - started)
        return group.from_rank_0(summary)
    finally:
        group.close()


def job_seeds(settings: Sequence[Mapping[str, Any]], seed: int) -> list[int]:
    """Each job's seed: its own, or `seed` + its index, whichever process runs it."""
    return [job.get("seed", seed + j) for j, job in enumerate(settings)]


def _job_settings(index: int, job: str | Mapping[str, Any]) -> dict[str, Any]:
    settings = {"prompt": job} if isinstance(job, str) else dict(job)
    if unknown := sorted(set(settings) - JOB_FIELDS):
        raise ConfigError(f"job {index}: unknown setting {unknown[0]!r}; a job gives GenerationRequest fields "
                          "(one image each, so no batch_size)")  # fmt: skip
    return settings


def _resumed_seed(earlier: dict[str, Any] | None, seed: int | None, skip_existing: bool, outdir: Path) -> int | None:
    """The seed this run must use: `seed`, or that of the run in `outdir` it resumes (the jobs may have changed:
    a job whose image is there is skipped, one whose image is not is made)."""
    if earlier is None:
        return seed
    if not skip_existing:
        raise ConfigError(f"{outdir} already holds a run of {earlier['jobs']} jobs; pass --skip-existing to finish "
                          "it, or choose another --outdir")  # fmt: skip
    if seed is not None and seed != earlier["seed"]:
        raise ConfigError(f"the run in {outdir} used seed {earlier['seed']}; resume it with that --seed or none")
    return earlier["seed"]


def _run_job(pipe: Pipeline, job: int, settings: dict[str, Any], seed: int, outdir: Path,
             progress: bool) -> dict[str, Any]:  # fmt: skip
    started = time.monotonic()
    record: dict[str, Any] = {"job": job, "seed": seed}
    try:
        result = pipe.generate(pipe.request(**{**settings, "seed": seed}), progress=progress)
        path = save_png_as(result.images[0], outdir / records.image_name(job, seed), result.infotexts[0])
        record.update(status="done", file=path.name, settings=records.settings_of(result.request))
    except Exception as e:  # a failed job is recorded and the others still run
        error = str(e) if isinstance(e, LdmError) else f"{type(e).__name__}: {e}"
        record.update(status="failed", error=error, settings=settings)
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def _finish(outdir: Path, seeds: list[int], run: str, processes: int, seconds: float) -> Summary:
    """Rank 0, once every process is done: the manifest of every job, and the summary."""
    found = []
    for job, seed in enumerate(seeds):
        image = outdir / records.image_name(job, seed)
        record = records.read_record(outdir, job)
        current = record is not None and (record.get("file") == image.name or record.get("run") == run)
        if image.exists() and not current:
            record = records.record_from_image(image, job, seed)  # its process stopped before writing the record
        found.append(record or {"job": job, "seed": seed, "status": "failed", "error": NO_RECORD})
    manifest = records.write_manifest(outdir, found)
    failed = tuple(r["job"] for r in found if r["status"] != "done")
    made = sum(r.get("run") == run and r["status"] == "done" for r in found)
    return Summary(len(seeds), made, len(seeds) - made - len(failed), failed, processes, round(seconds, 3), manifest)
