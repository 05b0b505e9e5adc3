"""A route's side of a job: submit it, then wait without blocking the event loop, watching the client.

A client that goes away while its job still waits takes the job out of the queue; once running, the job
finishes (it is between two sampling steps at worst) and its result is dropped. Nobody else notices either.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from ldm.serve.worker import Job, Worker

WATCH_SECONDS = 0.5


class ClientGone(Exception):  # noqa: N818 (no one is left to answer)
    pass


async def run(worker: Worker, job: Job, request: Request) -> Any:
    future = asyncio.wrap_future(worker.submit(job))
    while True:
        done, _ = await asyncio.wait({future}, timeout=WATCH_SECONDS)
        if done:
            return future.result()
        if await request.is_disconnected():
            job.future.cancel()  # a waiting job leaves the queue; a running one cannot be cancelled
            raise ClientGone
