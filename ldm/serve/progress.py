"""AUTOMATIC1111's progress state (`shared.state`) for the job the worker runs, and /sdapi/v1/progress's answer.

The worker thread writes it, HTTP handlers read it; one lock keeps each read whole. The preview is kept as the
base64 PNG the route sends, made on the worker's thread as the picture arrives.
"""

from __future__ import annotations

import base64
import threading
import time
from datetime import datetime

from PIL import Image

from ldm.outputs.png import png_bytes


class Progress:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job, self.job_count, self.job_no = "", 0, 0
        self.sampling_step, self.sampling_steps = 0, 0
        self.job_timestamp, self.started = "0", 0.0
        self.interrupted = self.skipped = False
        self.current_image: str | None = None
        self.preview_step = -1  # the sampling step the preview shows

    def begin(self, job: str, batches: int) -> None:
        with self.lock:
            self.job, self.job_count, self.job_no = job, batches, 0
            self.sampling_step = self.sampling_steps = 0
            self.job_timestamp, self.started = datetime.now().strftime("%Y%m%d%H%M%S"), time.monotonic()
            self.interrupted = self.skipped = False
            self.current_image, self.preview_step = None, -1

    def begin_batch(self, number: int) -> None:
        with self.lock:
            self.job_no, self.sampling_step, self.skipped = number, 0, False

    def step(self, done: int, total: int) -> None:
        with self.lock:
            self.sampling_step, self.sampling_steps = done, total

    def show(self, step: int, total: int, picture: Image.Image) -> None:
        """A preview of the current batch's first image (the `show` of ldm/generate/preview.py)."""
        encoded = base64.b64encode(png_bytes(picture)).decode()
        with self.lock:
            self.current_image, self.preview_step = encoded, step

    def end(self) -> None:
        with self.lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0
            self.current_image = None
            self.interrupted = self.skipped = False  # idle: nothing is being stopped

    def interrupt(self) -> None:
        with self.lock:
            self.interrupted = self.job_count > 0 or self.interrupted

    def skip(self) -> None:
        with self.lock:
            self.skipped = self.job_count > 0

    def flags(self) -> tuple[bool, bool]:
        with self.lock:
            return self.interrupted, self.skipped

    def snapshot(self, with_image: bool = True) -> dict:
        """A1111's ProgressResponse: progress 0..1 over the job's batches and steps, and the ETA from its pace."""
        with self.lock:
            state = {
                "skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": False,
                "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                "job_no": self.job_no, "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps,
            }  # fmt: skip
            if self.job_count == 0:
                return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
            done = self.job_no / self.job_count
            if self.sampling_steps:
                done += self.sampling_step / self.sampling_steps / self.job_count
            progress = min(0.01 + done, 1.0)  # A1111 starts at 1%: a job that began is never at 0
            elapsed = time.monotonic() - self.started
            return {
                "progress": progress,
                "eta_relative": elapsed / progress - elapsed,
                "state": state,
                "current_image": self.current_image if with_image else None,
                "textinfo": None,
            }
