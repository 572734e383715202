"""Load test of the real app: N concurrent clients x M requests each through gradio_client on loopback.

The requests mix good images (the shipped example views, random seeds and sizes, one in `--density-every` with the
exact log-density map), corrupt files (truncated JPEG, text, random bytes) and absurd values (steps 100000,
-5 samples, guidance 1e9, a path as the model, ...). Printed: per kind, completed / rejected with a message /
failed and latency percentiles; the app's temporary folder (files, MB) and the server's resident memory after
start-up, after warm-up, at each of `--snapshots` equal parts of the run and at the end; tracebacks in the server log; the exit
status after SIGTERM.

A failure is: a good request not answered (other than "queue is full, try again"), a bad one answered, an error
without a sentence for the user (Gradio's generic "has raised an exception"), or no answer within the timeout.
The server is `python app.py` in a subprocess with its own temporary folder and, by default, small bounds on it
(so that pruning happens within the run); it serves the shipped `default` model on the CPU.

Usage: python benchmarks/app_load.py [--clients 20] [--requests 10] [--time-limit 900] [--density-every 6]
       [--temp-max-mb 16] [--temp-max-age 600] [--queue-size 32] [--snapshots 4]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file

from geodemo.examples import example_views

ROOT = Path(__file__).resolve().parent.parent

GENERIC_ERROR = "has raised an exception"
QUEUE_FULL = "Queue is full"
ABSURD = [  # (model, guidance, steps, samples, seed, density), each refused with a sentence
    ("default", 2.0, 100000, 128, 0, False),
    ("default", 2.0, 32, -5, 0, False),
    ("default", 1e9, 32, 128, 0, False),
    ("default", 2.0, 32, 128, -1, False),
    ("/etc", 2.0, 32, 128, 0, False),
    ("../../assets/default", 2.0, 32, 128, 0, False),
    ("default", 2.0, "lots", 128, 0, False),
    ("default", 2.0, 32.5, 128, 0, False),
]


@dataclass
class Outcome:
    kind: str
    result: str  # "completed", "rejected", "queue full", "failed"
    seconds: float
    message: str = ""


def corrupt_files(folder: Path, example: Path) -> list[Path]:
    """A truncated JPEG, a text file named .jpg, random bytes named .png."""
    data = example.read_bytes()
    files = {"truncated.jpg": data[: len(data) // 2], "text.jpg": b"this is not an image\n" * 20,
             "noise.png": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in files]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_size(folder: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(sizes), sum(sizes)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until_serving(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} while starting")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not start within 3 minutes")


def one_request(client: Client, kind: str, inputs: tuple, timeout: float) -> Outcome:
    started = time.perf_counter()
    try:
        job = client.submit(*inputs, api_name="/locate")
        job.result(timeout=timeout)
        outputs = job.outputs()
        seconds = time.perf_counter() - started
        answered = bool(outputs) and outputs[0][3] and Path(outputs[0][3]).stat().st_size > 0
        if kind.startswith("good") and answered:
            return Outcome(kind, "completed", seconds)
        return Outcome(kind, "failed", seconds, "a bad request was answered" if answered else "no downloads")
    except Exception as err:  # noqa: BLE001 - every way a request can end is counted
        seconds = time.perf_counter() - started
        message = " ".join(str(err).split()) or type(err).__name__
        if QUEUE_FULL in message:
            return Outcome(kind, "queue full", seconds, message)
        if kind.startswith("good") or GENERIC_ERROR in message or "Traceback" in message:
            return Outcome(kind, "failed", seconds, f"{type(err).__name__}: {message}")
        return Outcome(kind, "rejected", seconds, message)


def plan(client_index: int, requests: int, examples: list[str], corrupt: list[Path], density_every: int,
         rng: random.Random) -> list[tuple[str, tuple]]:
    """One client's requests: kinds in the ratio good : corrupt : absurd = 6 : 2 : 2, shuffled."""
    jobs = []
    for r in range(requests):
        k = client_index * requests + r
        slot = k % 10
        if slot < 6:
            density = k % density_every == 0
            inputs = (handle_file(rng.choice(examples)), "default", rng.choice([0.0, 1.0, 2.0, 3.0]),
                      rng.choice([16, 32]), rng.choice([64, 128, 256]), k, density)
            jobs.append(("good + map" if density else "good", inputs))
        elif slot < 8:
            jobs.append(("corrupt file", (handle_file(str(rng.choice(corrupt))), "default", 2.0, 32, 128, k, False)))
        else:
            model, guidance, steps, samples, seed, density = rng.choice(ABSURD)
            jobs.append(("absurd value", (handle_file(rng.choice(examples)), model, guidance, steps, samples, seed,
                                          density)))
    rng.shuffle(jobs)
    return jobs


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds; later requests are not sent")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    parser.add_argument("--density-every", type=int, default=6, help="one good request in this many has the map")
    parser.add_argument("--warmup", type=int, default=4, help="requests before the measured run")
    parser.add_argument("--temp-max-mb", type=float, default=16)
    parser.add_argument("--temp-max-age", type=float, default=600)
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--snapshots", type=int, default=4, help="temp folder and RSS read this many times in the run")
    args = parser.parse_args()

    examples = [str(view.path) for view in example_views() if view.path.is_file()]
    if not examples:
        raise SystemExit("assets/examples/ holds no example views")
    work = Path(tempfile.mkdtemp(prefix="geodemo-load-"))
    temp, downloads = work / "app-temp", work / "downloads"
    corrupt = corrupt_files(work, Path(examples[0]))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = work / "server.log"
    command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), "--temp-dir",
               str(temp), "--temp-max-mb", str(args.temp_max_mb), "--temp-max-age", str(args.temp_max_age),
               "--queue-size", str(args.queue_size), "--device", "cpu"]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    resources: list[tuple[str, float, int, int]] = []

    def snapshot(moment: str) -> None:
        resources.append((moment, rss_mb(server.pid), *folder_size(temp)))

    try:
        wait_until_serving(url, server)
        snapshot("started (idle)")
        rng = random.Random(0)
        warm = Client(url, verbose=False, download_files=str(downloads))
        for i in range(args.warmup):
            inputs = (handle_file(examples[i % len(examples)]), "default", 2.0, 32, 128, i, i % 2 == 0)
            one_request(warm, "good", inputs, args.timeout)
        snapshot("after warm-up")

        outcomes: list[Outcome] = []
        lock = threading.Lock()
        total = args.clients * args.requests
        marks = {round(total * q / args.snapshots): f"{q}/{args.snapshots} of the requests done"
                    for q in range(1, args.snapshots)}
        deadline = time.monotonic() + args.time_limit
        plans = [plan(c, args.requests, examples, corrupt, args.density_every, random.Random(c))
                 for c in range(args.clients)]
        start = threading.Barrier(args.clients)

        def client_run(jobs):
            client = Client(url, verbose=False, download_files=str(downloads))
            start.wait()
            for kind, inputs in jobs:
                if time.monotonic() > deadline:
                    return
                outcome = one_request(client, kind, inputs, args.timeout)
                with lock:
                    outcomes.append(outcome)
                    if len(outcomes) in marks:
                        snapshot(marks[len(outcomes)])

        began = time.perf_counter()
        threads = [threading.Thread(target=client_run, args=(jobs,)) for jobs in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        snapshot("end of the run")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            status = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            status = "killed after 60 s"
    server_log = log_path.read_text()

    print(f"machine: {os.cpu_count()}-core CPU, load average {os.getloadavg()[0]:.1f} at the end; "
          f"server: python app.py --device cpu (torch threads 1, 2 requests at a time, queue {args.queue_size}), "
          f"model default; temp bounds {args.temp_max_mb:g} MB / {args.temp_max_age:g} s")
    print(f"{args.clients} clients x {args.requests} requests: {len(outcomes)} sent of {total} in {wall:.0f} s "
          f"(time limit {args.time_limit:g} s)")
    print(f"{'kind':<14}{'sent':>6}{'completed':>11}{'rejected':>10}{'queue full':>12}{'failed':>8}"
          f"{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}{'max s':>8}")
    for kind in ("good", "good + map", "corrupt file", "absurd value"):
        rows = [o for o in outcomes if o.kind == kind]
        seconds = [o.seconds for o in rows]
        counts = [sum(o.result == r for o in rows) for r in ("completed", "rejected", "queue full", "failed")]
        print(f"{kind:<14}{len(rows):>6}{counts[0]:>11}{counts[1]:>10}{counts[2]:>12}{counts[3]:>8}"
              f"{percentile(seconds, 50):>8.2f}{percentile(seconds, 90):>8.2f}{percentile(seconds, 99):>8.2f}"
              f"{max(seconds, default=float('nan')):>8.2f}")
    print(f"{'moment':<30}{'server RSS MB':>14}{'temp files':>12}{'temp MB':>9}")
    for moment, rss, files, size in resources:
        print(f"{moment:<30}{rss:>14.0f}{files:>12}{size / 2**20:>9.2f}")
    tracebacks = server_log.count("Traceback")
    print(f"server log: {tracebacks} tracebacks; exit status after SIGTERM: {status}; "
          f"temp folder after the stop: {folder_size(temp)[0]} files")
    messages = sorted({o.message for o in outcomes if o.result != "completed"})
    print("messages (each distinct one):")
    for message in messages:
        print(f"  - {message[:160]}")
    if tracebacks:
        first = server_log.index("Traceback")
        print(server_log[first:first + 3000])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
