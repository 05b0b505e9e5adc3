"""The files that describe a run in its output folder, each written whole (a temporary file renamed into place):

job-NNNNN-<seed>.png   job NNNNN's image
.ldm-jobs/run.json     the run's seed, which a rerun that resumes the run uses again
.ldm-jobs/NNNNN.json   job NNNNN's record, written by the process that ran it, as soon as it is done or failed
manifest.jsonl         every job's record, in job order: written by rank 0 when all processes are done
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ldm.errors import LdmError
from ldm.generate.request import GenerationRequest
from ldm.outputs.files import write_whole

RECORDS = ".ldm-jobs"
MANIFEST = "manifest.jsonl"


def image_name(job: int, seed: int) -> str:
    return f"job-{job:05d}-{seed}.png"


def settings_of(request: GenerationRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def read_run(outdir: Path) -> dict[str, Any] | None:
    return _read(outdir / RECORDS / "run.json")


def write_run(outdir: Path, run: dict[str, Any]) -> None:
    _write(outdir / RECORDS / "run.json", json.dumps(run) + "\n")


def read_record(outdir: Path, job: int) -> dict[str, Any] | None:
    return _read(outdir / RECORDS / f"{job:05d}.json")


def write_record(outdir: Path, record: dict[str, Any]) -> None:
    _write(outdir / RECORDS / f"{record['job']:05d}.json", json.dumps(record) + "\n")


def record_from_image(path: Path, job: int, seed: int) -> dict[str, Any]:
    """The record of a job whose process stopped between writing its image and its record: what the PNG says."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            request = GenerationRequest.from_infotext(image.text.get("parameters", ""))
    except (OSError, LdmError) as e:
        return {"job": job, "seed": seed, "status": "failed", "error": f"{path.name} is not a job's image ({e})"}
    return {"job": job, "seed": seed, "status": "done", "file": path.name, "settings": settings_of(request),
            "seconds": None}  # fmt: skip


def write_manifest(outdir: Path, records: list[dict[str, Any]]) -> Path:
    path = outdir / MANIFEST
    _write(path, "".join(json.dumps(record) + "\n" for record in records))
    return path


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LdmError(f"cannot read {path} ({e}); remove it to start that run again") from None


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, lambda f: f.write(text.encode()), replace=True)
    except OSError as e:
        raise LdmError(f"cannot write {path} ({e.strerror}); choose a writable --outdir") from None
