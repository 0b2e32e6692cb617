"""Shared by the reliability scripts: the demo indexes, a real server in a subprocess, its memory, results files.

Everything stays on 127.0.0.1 and every process started here is stopped here (SIGTERM, then SIGKILL).

    with demo_server(indexes, api_key=None) as server:     # patchcore-serve in a subprocess on a free port
        httpx.get(server.url + "/readyz"); rss_bytes(server.pid)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "reliability" / "results"


def demo_indexes(root: Path) -> Path:
    """Two small indexes (products "disc" and "disc-b") built from the synthetic sample under root/indexes.

    Pretrained MobileNetV2 at 128 and 96 pixels on 12 good images each: seconds to build, real predictions.
    Returns root/indexes; a second call reuses what the first built.
    """
    from demo.sample import write_sample
    from imaging.decode import list_images
    from index_store import store
    from index_store.build import BuildOptions, build_index
    from model.config import PatchCoreConfig

    products = {
        "disc": (dict(seed=0, size=128), PatchCoreConfig(image_size=128, coreset_ratio=0.1)),
        "disc-b": (dict(seed=1, size=96),
                   PatchCoreConfig(image_size=96, layers=("features.3", "features.6"), coreset_ratio=0.1)),
    }
    for name, (sample_args, config) in products.items():
        out = root / "indexes" / name
        if (out / store.METADATA_FILE).is_file():
            continue
        sample = write_sample(root / "samples" / name, n_train=12, n_test_good=2, n_test_defect=2, **sample_args)
        result = build_index(list_images(sample), config, BuildOptions(name=f"{name}-product", progress=False))
        store.save_result(out, result)
    return root / "indexes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path  # the server's stderr (JSON log lines)


@contextmanager
def demo_server(index_dir: Path, log: Path, ready_timeout: float = 180, **settings: str | int) -> Iterator[Server]:
    """patchcore-serve on index_dir, 127.0.0.1 and a free port; settings become PATCHCORE_<NAME> variables."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHCORE_")}
    env.update({f"PATCHCORE_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = str(REPO)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--index-dir", str(index_dir), "--host", "127.0.0.1",
             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log, ready_timeout)
        yield Server(url, proc.pid, log)
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def server_errors(log: Path) -> list[str]:
    """Log lines of level ERROR or above (a 5xx, a traceback): a clean run has none."""
    bad = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(line)  # not one of our JSON records: a raw traceback
            continue
        if record.get("level") in ("ERROR", "CRITICAL"):
            bad.append(line)
    return bad


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def save_result(name: str, record: dict, results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path
