"""Many users at once on one app, on loopback: errors, the latency of a quick image under load, and the cache.

    python benchmarks/load_test.py --clients 8 --seconds 300 --out benchmarks/results/load_test_cpu.json

Starts ``app.py`` (the default model) in its own process with an empty database, measures one client's
``/generate`` alone (idle latency), then runs ``--clients`` clients for ``--seconds``: one submits images one
at a time (its latencies are the ones reported), the others mix images (new seeds and schedules) and small
searches. Afterwards every evaluation must be stored exactly once (no two rows share a key).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEDULES = ["fp32*8", "fp32*6,skip,fp32", "fp32*4,skip,fp32,skip,fp32", "fp32*2,bf16*4,fp32*2", "fp32*4,skip*4"]


def start_app(folder: Path, port: int) -> subprocess.Popen:
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--db", str(folder / "load.sqlite"),
                            "--cache-dir", str(folder / "cache")], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=open(folder / "app.log", "w"))  # noqa: SIM115 (open for the app's lifetime)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return app
        except OSError:
            time.sleep(1)
    app.kill()
    raise SystemExit(f"the app did not start: {(folder / 'app.log').read_text()[-2000:]}")


def timed_generate(client, seed: int, schedule: str) -> float:
    start = time.perf_counter()
    client.predict(seed=seed, schedule=schedule, api_name="/generate")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--port", type=int, default=7899)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_test_cpu.json")
    args = parser.parse_args()
    from gradio_client import Client

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        app = start_app(folder, args.port)
        url = f"http://127.0.0.1:{args.port}/"
        try:
            probe = Client(url, verbose=False)
            timed_generate(probe, 0, "fp32*8")  # the first call measures step costs: not an idle latency
            idle = [timed_generate(probe, 10_000 + i, "fp32*6,skip,fp32") for i in range(5)]
            stop = time.monotonic() + args.seconds
            measured: list[float] = []
            counts = {"generate": 0, "search": 0, "refused_busy": 0, "errors": 0}
            errors: list[str] = []
            lock = threading.Lock()
            in_flight = {"image": 0, "search": 0}  # the other clients' requests sent and not yet answered
            seen_in_flight: list[tuple[int, int]] = []  # what the polite user found in flight as it sent each image

            @contextmanager
            def sent(kind: str):
                with lock:
                    in_flight[kind] += 1
                try:
                    yield
                finally:
                    with lock:
                        in_flight[kind] -= 1

            def user(index: int) -> None:
                client, rng = Client(url, verbose=False), random.Random(index)
                while time.monotonic() < stop:
                    try:
                        if index == 0:  # the polite user: one image at a time, its latency reported
                            with lock:
                                seen_in_flight.append((in_flight["image"], in_flight["search"]))
                            seconds = timed_generate(client, 20_000 + len(measured), "fp32*6,skip,fp32")
                            with lock:
                                measured.append(seconds)
                                counts["generate"] += 1
                        elif rng.random() < 0.25:
                            with sent("search"):
                                client.predict(steps=8, ladder="fp32,skip", num_prompts=1,
                                               seeds=str(rng.randrange(50)), target=0.85, api_name="/search")
                            with lock:
                                counts["search"] += 1
                        else:
                            with sent("image"):
                                timed_generate(client, rng.randrange(200), rng.choice(SCHEDULES))
                            with lock:
                                counts["generate"] += 1
                    except Exception as exc:  # reported, never hidden
                        waited = _busy_wait(str(exc))
                        if waited is not None:  # the app's "busy: ... try again in ~N s": a refusal, not an error
                            with lock:
                                counts["refused_busy"] += 1
                            time.sleep(waited)
                            continue
                        with lock:
                            counts["errors"] += 1
                            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

            threads = [threading.Thread(target=user, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            app.terminate()
            app.wait(30)
        with sqlite3.connect(folder / "load.sqlite") as db:
            rows = db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
            keys = db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT model, model_hash, settings_hash, "
                              "schedule_hash, device_hash FROM evaluations)").fetchone()[0]
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        log = (folder / "app.log").read_text()
        traceback_lines = log.count("Traceback")
        first_traceback = log[log.find("Traceback"):][:3000] if traceback_lines else None
    idle_median = statistics.median(idle)
    p95 = statistics.quantiles(measured, n=20)[-1] if len(measured) >= 2 else (measured or [float("nan")])[0]
    report = {
        "clients": args.clients, "seconds": args.seconds, "counts": counts, "errors": errors[:10],
        "idle_generate_s": round(idle_median, 3), "polite_generate_p50_s": round(statistics.median(measured), 3),
        "polite_generate_p95_s": round(p95, 3), "p95_over_idle": round(p95 / idle_median, 2),
        # One pipeline, each image computed alone so its seconds are its own: a fair queue puts the polite image
        # behind about one image of each other client with one in flight, so its wait is that many images long.
        "others_images_in_flight_mean": round(statistics.fmean(i for i, _ in seen_in_flight), 2),
        "others_searches_in_flight_mean": round(statistics.fmean(s for _, s in seen_in_flight), 2),
        "evaluations_stored": rows, "distinct_keys": keys, "stored_once": rows == keys,
        "integrity_check": integrity, "tracebacks_in_app_log": traceback_lines, "first_traceback": first_traceback,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def _busy_wait(message: str) -> float | None:
    """The seconds a refusal asks to wait (admission.py's messages), or None for any other error."""
    import re

    if message.startswith("you already have"):
        return 1.0
    found = re.search(r"^busy: .* try again in ~(\d+) s", message)
    return float(found.group(1)) if found else None


if __name__ == "__main__":
    main()
