"""Benchmark: the gateway's memory while a fine-tuning dataset is uploaded, by file size.

    python -m benchmarks.upload_memory [--sizes-mb 10 1024]

A gateway process (one pool on the counting engine, authentication off, SQLite in a scratch
folder) receives `POST /v1/files` multipart uploads of valid chat JSONL files of each size,
streamed from disk by the client. Its resident memory (VmRSS) is sampled every 20 ms: before,
and the peak during each upload. Uploads stream to disk a chunk at a time and are checked line
by line, so the peak should not grow with the file.
"""

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from harness.servers import ServerProcess, free_port

LINE = (
    json.dumps(
        {"messages": [{"role": "user", "content": "ping " * 40}, {"role": "assistant", "content": "pong " * 40}]}
    )
    + "\n"
).encode()
CHUNK = 1 << 20


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sample(pid: int, peaks: list[float], done: threading.Event) -> None:
    """Append the process's RSS every 20 ms until `done`."""
    while not done.is_set():
        peaks.append(_rss_mb(pid))
        time.sleep(0.02)


def _dataset(path: Path, size: int) -> Path:
    block = LINE * (CHUNK // len(LINE))
    with path.open("wb") as file:
        written = 0
        while written < size:
            file.write(block)
            written += len(block)
    return path


def _multipart(path: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 1024])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    engine_port, port = free_port(), free_port()
    engine = ServerProcess("harness.counting_engine", ["--port", str(engine_port)], port=engine_port, log_dir=work)
    engine.wait_ready()
    env = {
        "SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [engine.url]}]),
        "SWITCHYARD_DATA_DIR": str(work / "data"),
        "SWITCHYARD_MAX_UPLOAD_BYTES": str(4 << 30),
    }
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=work, env=env, ready_path="/ready")
    gateway.wait_ready()
    pid = gateway.process.pid
    rows = []
    try:
        httpx.get(f"{gateway.url}/v1/files", timeout=30).raise_for_status()  # the database opened and migrated
        for size_mb in args.sizes_mb:
            path = _dataset(work / f"{size_mb}mb.jsonl", size_mb << 20)
            before = _rss_mb(pid)
            done = threading.Event()
            peaks = [before]
            sampler = threading.Thread(target=_sample, args=(pid, peaks, done))
            sampler.start()
            started = time.perf_counter()
            boundary = "benchmarkboundary7c1f"
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            response = httpx.post(
                f"{gateway.url}/v1/files", content=_multipart(path, boundary), headers=headers, timeout=3600
            )
            seconds = time.perf_counter() - started
            done.set()
            sampler.join()
            response.raise_for_status()
            size = path.stat().st_size
            rows.append((size_mb, size, before, max(peaks), seconds))
            path.unlink()
    finally:
        gateway.stop()
        engine.stop()
    print("| file | gateway RSS before (MB) | peak during the upload (MB) | growth (MB) | seconds | MB/s |")
    print("|---|---|---|---|---|---|")
    for size_mb, size, before, peak, seconds in rows:
        rate = size / seconds / 2**20
        print(f"| {size_mb} MB | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {seconds:.1f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
