"""`cifarlit serve` under load on 127.0.0.1: batched vs one image per forward pass, and vs onnxruntime in-process.

For each served model kind (the checkpoint with torch, its ONNX export with onnxruntime) a server is started
with ``--max_batch_size 64`` and one with ``--max_batch_size 1``, in turn, and ``--clients`` threads post
``--requests`` images to it as multipart uploads (curl -F image=@file), each on a kept-alive connection,
after a warm-up that is not counted. Throughput is requests over the wall time of the run; latency is each
request's, sent to read. The reference is the same images decoded (as the server does) and run by
onnxruntime in this process, one image per call, in a loop. The clients share the machine with the server:
on few cores they are part of the load.

    python benchmarks/serve_load.py --ckpt_path CKPT --images DIR [--requests 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` is not installed

from benchmarks.common import DEFAULT_CONFIG, ENV, REPO  # noqa: E402

BATCH = 64


def image_files(data: Path, n: int, out: Path) -> list[Path]:
    """``n`` files of ``data``'s test split, spread over its classes (an image folder's own files; a pickle
    release's images written as PNG)."""
    files = sorted(p for p in (data / "test").glob("*/*") if p.is_file())
    if files:
        return files[:: max(1, len(files) // n)][:n]
    from PIL import Image

    from cifarlit.data import sources

    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(sources.load(data).test_x[:n]):
        Image.fromarray(image).save(out / f"{i:05d}.png")
    return sorted(out.iterdir())


def trained(data: Path, work: Path) -> Path:
    """A checkpoint of one epoch of the default config on ``data``."""
    done = subprocess.run(
        [sys.executable, "-m", "cifarlit", "fit", "-c", str(DEFAULT_CONFIG), "--data.data_dir", str(data.resolve()),
         "--trainer.max_epochs", "1", "--test_after_fit", "false", "--trainer.logger.init_args.save_dir", str(work)],
        capture_output=True, text=True, env=ENV, cwd=work,
    )  # fmt: skip
    found = sorted(work.rglob("checkpoints/epoch*.ckpt"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"training the served model failed:\n{done.stderr[-3000:]}")
    return found[0]


def exported(ckpt: Path, work: Path) -> Path:
    out = work / "model.onnx"
    done = subprocess.run([sys.executable, "-m", "cifarlit", "export", "--ckpt_path", str(ckpt), "--output", str(out)],
                          capture_output=True, text=True, env=ENV)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"export failed:\n{done.stderr[-3000:]}")
    return out


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    from urllib3 import encode_multipart_formdata

    return encode_multipart_formdata({"image": (name, data)})


class Served:
    """``cifarlit serve`` in a subprocess on a free local port, stopped by SIGTERM."""

    def __init__(self, model: Path, kind: str, max_batch_size: int, work: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = work / f"serve-{kind}-{max_batch_size}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cifarlit", "serve", "--ckpt_path", str(model), "--model", kind,
                 "--port", str(self.port), "--max_batch_size", str(max_batch_size), "--accelerator", "cpu"],
                cwd=work, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while self.get("/health") != "ok":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def get(self, path: str) -> str | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
                self.proc.wait()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and every process below it (Linux's /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(") ", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
    return total


def load(port: int, bodies: list[tuple[bytes, str]], total: int, clients: int) -> tuple[float, list[float], dict]:
    """``total`` requests from ``clients`` threads; the wall time, each latency, and the label of each body."""
    counter, latencies, labels, failures = itertools.count(), [], {}, []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (i := next(counter)) < total:  # next() on a count is atomic in CPython
            body, content_type = bodies[i % len(bodies)]
            start = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": content_type})
            response = conn.getresponse()
            answer = response.read()
            latencies.append(time.perf_counter() - start)
            if response.status != 200:
                failures.append(f"{response.status} {answer[:200]!r}")
            else:
                labels[i % len(bodies)] = json.loads(answer)["label"]
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} of {total} requests failed, e.g. {failures[0]}")
    return wall, latencies, labels


def served_run(model: Path, kind: str, max_batch_size: int, bodies, total: int, clients: int, work: Path) -> dict:
    server = Served(model, kind, max_batch_size, work)
    try:
        load(server.port, bodies, 2 * clients, clients)  # warm-up: connections, first batches
        before, cpu = json.loads(server.get("/info")), tree_cpu(server.proc.pid)
        wall, latencies, labels = load(server.port, bodies, total, clients)
        after, cpu = json.loads(server.get("/info")), tree_cpu(server.proc.pid) - cpu
    finally:
        server.stop()
    passes = after["forward_passes"] - before["forward_passes"]
    return {"rps": total / wall, "p50": 1e3 * np.percentile(latencies, 50), "p99": 1e3 * np.percentile(latencies, 99),
            "per_pass": total / passes, "cpu_ms": 1e3 * cpu / total, "labels": labels}  # fmt: skip


def in_process(model: Path, files: list[Path], total: int) -> dict:
    """onnxruntime in this process: each image decoded as the server decodes it, then run alone, ``total`` times."""
    import onnxruntime as ort

    from cifarlit.data.images import decode

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    size, channels = session.get_inputs()[0].shape[1], session.get_inputs()[0].shape[3]
    data = [f.read_bytes() for f in files]
    latencies, labels = [], {}
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(total):
        t0 = time.perf_counter()
        image = decode(io.BytesIO(data[i % len(data)]), size, channels)
        probs = session.run(None, {"images": image[None]})[0]
        latencies.append(time.perf_counter() - t0)
        labels[i % len(data)] = classes[int(probs.argmax())]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"rps": total / wall, "p50": 1e3 * np.percentile(latencies, 50), "p99": 1e3 * np.percentile(latencies, 99),
            "cpu_ms": 1e3 * cpu / total, "labels": labels}  # fmt: skip


def _figures(r: dict) -> str:
    return f"{r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, CPU {r['cpu_ms']:.2f} ms/request"


def run(data: str | None = None, requests: int = 2000, clients: int = 16, rounds: int = 2,
        ckpt_path: Path | None = None, images: Path | None = None, n_images: int = 500,
        kinds: tuple[str, ...] = ("torch", "onnx")) -> list[dict]:  # fmt: skip
    """Rows for ``make bench``; without ``ckpt_path`` a model is trained for one epoch on ``data``."""
    work, load_before = Path(tempfile.mkdtemp(prefix="cifarlit-serve-load-")), os.getloadavg()[0]
    ckpt = ckpt_path or trained(Path(data), work)
    files = sorted(p for p in images.iterdir() if p.is_file()) if images else image_files(Path(data), n_images, work)
    onnx = exported(ckpt, work)
    bodies = [multipart(f.read_bytes(), f.name) for f in files]
    best: dict[tuple[str, int], dict] = {}
    for _ in range(rounds):  # alternating, so every kind sees the same spells of load from others
        for kind in kinds:
            for size in (BATCH, 1):
                result = served_run(ckpt if kind == "torch" else onnx, kind, size, bodies, requests, clients, work)
                if (kind, size) not in best or result["rps"] > best[kind, size]["rps"]:
                    best[kind, size] = result
    local = in_process(onnx, files, requests)
    setup = (f"{requests} requests from {clients} clients, {len(files)} images, best of {rounds}; load average "
             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} cores")  # fmt: skip
    rows = []
    for kind in kinds:
        batched, single = best[kind, BATCH], best[kind, 1]
        rows.append({
            "benchmark": f"serve_load {kind}: batched (max_batch_size {BATCH}) vs unbatched (1)",
            "ratio (batched/unbatched req/s)": round(batched["rps"] / single["rps"], 3), "target": "-",
            "ratio (batched/unbatched server CPU)": round(batched["cpu_ms"] / single["cpu_ms"], 3),
            "detail": f"batched {_figures(batched)}, {batched['per_pass']:.1f} images per forward pass; unbatched "
            f"{_figures(single)}; {setup}",
        })  # fmt: skip
    reference = best.get(("onnx", BATCH)) or best[kinds[0], BATCH]
    agree = sum(reference["labels"].get(i) == label for i, label in local["labels"].items())
    rows.append({
        "benchmark": f"serve_load onnxruntime in-process vs served {'onnx' if 'onnx' in kinds else kinds[0]} batched",
        "ratio (in-process/served req/s)": round(local["rps"] / reference["rps"], 3), "target": "-",
        "ratio (served/in-process CPU)": round(reference["cpu_ms"] / local["cpu_ms"], 3),
        "detail": f"in-process decode + run, one image per call: {_figures(local)}; served {_figures(reference)}; "
        f"labels agree on {agree}/{len(local['labels'])} images",
    })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", type=Path, help="the model to serve (default: one epoch trained on --data_dir)")
    parser.add_argument("--images", type=Path, help="a folder of image files to post (default: --data_dir's test)")
    parser.add_argument("--data_dir", default=str(REPO / "data" / "cifar10"), help="dataset for the defaults")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per server")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--rounds", type=int, default=2, help="times each server is started and loaded")
    args = parser.parse_args()
    rows = run(args.data_dir, args.requests, args.clients, args.rounds, args.ckpt_path, args.images)
    for row in rows:
        print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
