"""Load on ldm-serve: many concurrent clients sending a mix of txt2img, img2img and progress polls.

    python tools/load_test.py --clients 40 --seconds 60          # starts its own ldm-serve (built-in model)
    python tools/load_test.py --url http://127.0.0.1:7860 --clients 40 --requests 5

It reports requests/s, p50/p95 latency of each kind, how many were refused 503 (queue full, with Retry-After),
and the server's RSS over time when it started the server. tests/test_serve_load.py runs a bounded version and
checks every answer against the library.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

PROMPTS = ("a large red circle at the top left on a white background",
           "a small blue square at the bottom right on a light grey background")  # fmt: skip


@dataclass
class Answer:
    kind: str
    status: int
    seconds: float
    body: dict = field(repr=False)
    sent: dict = field(repr=False)
    retry_after: str | None = None


def init_image() -> str:
    """A plain picture for the img2img requests (base64 PNG)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def request_of(client: int, number: int, steps: int) -> tuple[str, str, dict | None]:
    """(kind, path, body) of request `number` of `client`: txt2img, img2img and progress polls in turn; each
    generation has its own seed, so any answer can be checked alone."""
    kind = ("txt2img", "img2img", "progress")[(client + number) % 3]
    seed = client * 1000 + number
    prompt = PROMPTS[seed % len(PROMPTS)]
    if kind == "progress":
        return kind, "/sdapi/v1/progress?skip_current_image=true", None
    body = {"prompt": prompt, "seed": seed, "steps": steps, "width": 64, "height": 64}
    if kind == "img2img":
        body |= {"init_images": [init_image()], "denoising_strength": 0.6}
    return kind, f"/sdapi/v1/{kind}", body


def send(host: str, port: int, kind: str, path: str, body: dict | None) -> Answer:
    start = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=600)
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read() or b"null")
        return Answer(kind, response.status, time.monotonic() - start, answer, body or {},
                      response.getheader("Retry-After"))  # fmt: skip
    finally:
        connection.close()


def run_load(url: str, clients: int, requests: int | None = None, seconds: float | None = None,
             steps: int = 4, polite: bool = True) -> tuple[list[Answer], float]:  # fmt: skip
    """Every client sends its requests one after another (`requests` each, or until `seconds` passed); all
    clients start together. `polite`: a client waits as a 503's Retry-After says, and a second between two
    progress polls (as a page polling it does); otherwise they come back at once. Returns the answers and the
    wall time."""
    parsed = urlparse(url)
    answers: list[Answer] = []
    lock = threading.Lock()
    start = time.monotonic()

    def client(index: int) -> None:
        number = 0
        while (requests is None or number < requests) and (seconds is None or time.monotonic() - start < seconds):
            answer = send(parsed.hostname, parsed.port, *request_of(index, number, steps))
            with lock:
                answers.append(answer)
            number += 1
            if polite and answer.status == 503:
                time.sleep(int(answer.retry_after or 1))
            elif polite and answer.kind == "progress":
                time.sleep(1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, time.monotonic() - start


def summary(answers: list[Answer], wall: float) -> str:
    lines = [f"{len(answers)} requests in {wall:.1f} s: {len(answers) / wall:.2f} requests/s"]
    for kind in ("txt2img", "img2img", "progress"):
        done = sorted(a.seconds for a in answers if a.kind == kind and a.status == 200)
        refused = sum(a.kind == kind and a.status == 503 for a in answers)
        other = sum(a.kind == kind and a.status not in (200, 503) for a in answers)
        if done:
            p95 = done[min(len(done) - 1, int(0.95 * len(done)))]
            lines.append(f"  {kind}: {len(done)} answered, p50 {statistics.median(done):.2f} s, p95 {p95:.2f} s, "
                         f"{refused} refused 503, {other} other")  # fmt: skip
    return "\n".join(lines)


def start_server(port: int, log: Path, *flags: str) -> subprocess.Popen:
    """`ldm-serve` with the built-in model on 127.0.0.1:port, once it answers; its log lines go to `log` (a file,
    not a pipe: one line per request would fill a pipe nobody reads, and the server would stop)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "ldm.cli.serve", "--port", str(port), *flags], env=env,
                                   stderr=sink)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ldm-serve exited {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("ldm-serve did not start in 120 s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running server (default: start ldm-serve with the built-in model)")
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--requests", type=int, help="requests per client (default: until --seconds)")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--queue-depth", type=int, default=32)
    args = p.parse_args()
    process = None
    url = args.url
    if url is None:
        port = free_port()
        log = Path(tempfile.mkdtemp(prefix="ldm-load-")) / "serve.log"
        process = start_server(port, log, "--queue-depth", str(args.queue_depth), "--outdir", str(log.parent))
        url = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, float]] = []
    watching = process is not None
    begun = time.monotonic()

    def watch() -> None:
        while watching and process.poll() is None:
            samples.append((time.monotonic() - begun, rss_mib(process.pid)))
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        answers, wall = run_load(url, args.clients, args.requests, None if args.requests else args.seconds, args.steps)
    finally:
        watching = False
        if process is not None:
            process.terminate()
            process.wait(60)
    print(summary(answers, wall))
    if samples:
        marks = [s for s in samples if s[0] >= 60] or samples[len(samples) // 2 :]
        print(f"server RSS: {samples[0][1]:.0f} MiB at start, {marks[0][1]:.0f} MiB at {marks[0][0]:.0f} s, "
              f"{samples[-1][1]:.0f} MiB at {samples[-1][0]:.0f} s (max {max(r for _, r in samples):.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
