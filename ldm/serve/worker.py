"""The worker of ldm-serve: one thread per device runs the jobs in order, from a bounded queue.

The HTTP side only submits a job and awaits its future: it never runs a generation, so it answers progress
polls, interrupts and new requests while one runs. The worker holds the one loaded model and switches it when
a job asks for another, keeps AUTOMATIC1111's progress state (/sdapi/v1/progress), and stops a job between
sampling steps when asked (/interrupt, /skip, shutdown). A job's failure (bad input found late, out of memory)
is that job's error; the worker goes on with the next.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ldm.errors import LdmError
from ldm.generate.pipeline import Pipeline
from ldm.serve.progress import Progress

log = logging.getLogger("ldm.serve")


class Busy(LdmError):
    """The queue is full, or the server is shutting down: try again later (HTTP 503)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Stopped(Exception):  # noqa: N818 (a signal between steps, not an error)
    """Raised by the step callback when the job was interrupted or skipped: `denoised` is where it stood."""

    def __init__(self, denoised: Tensor):
        super().__init__("stopped")
        self.denoised = denoised


@dataclass
class Job:
    """Work for the worker: `run(pipe, control)` on its thread, with the model titled `model` loaded (None: any)."""

    kind: str  # A1111's state.job: "txt2img", "img2img", "switch model"
    run: Callable[[Pipeline, Control], Any]
    model: str | None = None
    batches: int = 1  # A1111's job_count: the request's n_iter
    future: Future = field(default_factory=Future)


class Control:
    """What a running job sees of the worker: its batches and steps go into the progress state, and the step
    callback raises Stopped when an interrupt or a skip arrived."""

    def __init__(self, progress: Progress, closing: Callable[[], bool] = lambda: False):
        self.progress, self.closing = progress, closing

    def batch(self, number: int) -> None:
        self.progress.begin_batch(number)

    @property
    def interrupted(self) -> bool:
        return self.progress.flags()[0]

    @property
    def cancelled(self) -> bool:
        """The server is shutting down: the job gives nothing back."""
        return self.closing()

    def step(self, i: int, n: int, x: Tensor, denoised: Tensor) -> None:
        self.progress.step(i + 1, n)
        interrupted, skipped = self.progress.flags()
        if interrupted or skipped or self.closing():
            raise Stopped(denoised)


Loader = Callable[[str], Pipeline]  # a model's catalog file name -> its pipeline, set up as the server runs it
SHUTTING_DOWN = "the server is shutting down; try again when it is back"


class Worker:
    def __init__(self, load: Loader, model: str, *, depth: int, progress: Progress | None = None):
        self.load, self.model = load, model
        self.pipe: Pipeline | None = None
        self.queue: queue.Queue[Job | None] = queue.Queue(depth)
        self.progress = progress or Progress()
        self.closing = False
        self.running: Job | None = None
        self.seconds_per_job = 1.0  # a running mean, for Retry-After
        self.done = 0  # jobs run (not those cancelled while they waited)
        self.thread = threading.Thread(target=self._loop, name="ldm-worker", daemon=True)

    def start(self) -> None:
        """Load the first model (here, so a broken one fails the start) and begin taking jobs."""
        self.pipe = self.load(self.model)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        if self.closing:
            raise Busy(SHUTTING_DOWN, self.retry_after())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Busy(
                f"the queue is full ({self.queue.maxsize} waiting); try again later", self.retry_after()
            ) from None
        return job.future

    def depth(self) -> int:
        """Jobs waiting or running."""
        return self.queue.qsize() + (self.running is not None)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.seconds_per_job * (self.depth() + 1)))

    def stop_taking(self) -> None:
        """Refuse new jobs and stop the running one at its next step (safe from a signal handler)."""
        self.closing = True
        self.progress.interrupt()

    def close(self, timeout: float | None = None) -> None:
        """Stop: waiting jobs fail with Busy, the running one stops at its next step (no image comes of it)."""
        self.stop_taking()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(Busy(SHUTTING_DOWN, 1))
        with contextlib.suppress(queue.Full):  # a submit raced in; the loop also ends on `closing`
            self.queue.put_nowait(None)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        while not self.closing:
            job = self.queue.get()
            if job is None:
                break
            if self.closing:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Busy(SHUTTING_DOWN, 1))
                continue
            if not job.future.set_running_or_notify_cancel():
                continue  # its client went away while it waited
            self.running = job
            started = time.monotonic()
            try:
                pipe = self._pipe_for(job.model)
                self.progress.begin(job.kind, job.batches)
                job.future.set_result(job.run(pipe, Control(self.progress, lambda: self.closing)))
            except Stopped:
                job.future.set_exception(Busy(SHUTTING_DOWN, 1))
            except BaseException as e:  # noqa: BLE001 (a job's failure is its own; the worker lives on)
                if not isinstance(e, LdmError):
                    log.exception("%s failed", job.kind)
                job.future.set_exception(e)
            finally:
                self.progress.end()
                self.running = None
                self.done += 1
                seconds = time.monotonic() - started
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * seconds

    def _pipe_for(self, model: str | None) -> Pipeline:
        if model is None or model == self.model and self.pipe is not None:
            return self.pipe
        previous, self.pipe = self.model, None
        gc.collect()  # the old weights go before the new ones come: one model in memory at a time
        try:
            self.pipe, self.model = self.load(model), model
        except BaseException:
            self.pipe = self.load(previous)  # the server keeps serving the model it had
            raise
        return self.pipe
