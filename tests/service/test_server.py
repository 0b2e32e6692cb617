"""A real uvicorn server over a socket: concurrency, streaming limits, startup failures, patchcore-serve itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_store.store import INDEX_FILE, IndexStoreError
from service.app import create_app
from tests.live import live_server
from tests.service.conftest import chunked_post, make_settings
from tests.service.test_predict import _png_array

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server_url(disc_dir):
    with live_server(create_app(make_settings(disc_dir))) as url:
        yield url


def test_real_server_answers_over_a_socket(server_url, test_images):
    with httpx.Client(base_url=server_url, timeout=60) as http:
        assert http.get("/readyz").json() == {"status": "ready", "indexes": ["disc"]}
        r = http.post("/predict?heatmap=png", files={"file": ("s.png", test_images["spot/001.png"], "image/png")})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["is_anomalous"] is True and _png_array(body["anomaly_map_png"]).shape == (128, 128)
        r = http.post("/predict", files={"file": ("x.txt", b"plain text")})
        assert r.status_code == 422 and "not a supported image" in r.json()["detail"]
        assert "patchcore_requests_total" in http.get("/metrics").text


def test_concurrent_requests_get_their_own_answers(server_url, test_images):
    names = sorted(test_images)

    def ask(http: httpx.Client, name: str) -> dict:
        r = http.post("/predict?heatmap=png", files={"file": (name, test_images[name], "image/png")})
        assert r.status_code == 200, r.text
        return r.json()

    with httpx.Client(base_url=server_url, timeout=120) as http:
        sequential = {name: ask(http, name) for name in names}
        jobs = [names[i % len(names)] for i in range(4 * len(names))]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda n: (n, ask(http, n)), jobs))
    assert len(answers) == len(jobs)
    for name, got in answers:
        want = sequential[name]
        assert got["filename"] == name
        assert got["image_score"] == pytest.approx(want["image_score"], rel=1e-5), name
        assert got["is_anomalous"] == want["is_anomalous"]
        diff = np.abs(_png_array(got["anomaly_map_png"]).astype(int) - _png_array(want["anomaly_map_png"]))
        assert diff.max() <= 1, name


def test_streamed_upload_is_refused_before_it_is_all_sent(server_url):
    """Chunked body, no Content-Length: the server answers 413 once 1 MiB has arrived, without reading 32 MiB."""
    total = 32 * 1024 * 1024
    reply, sent = chunked_post(server_url, "/predict", total, field="file")
    assert sent < total / 4, sent
    assert reply.startswith(b"HTTP/1.1 413"), bytes(reply[:200])
    assert b"over the limit" in reply


def _corrupt_copy(disc_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "indexes" / "disc"
    shutil.copytree(disc_dir, broken)
    path = broken / INDEX_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return broken


def test_corrupt_index_stops_startup_with_the_fix(disc_dir, tmp_path, caplog):
    broken = _corrupt_copy(disc_dir, tmp_path)
    with pytest.raises(IndexStoreError, match=r"corrupt.*rebuild it with patchcore-build-index"):
        with TestClient(create_app(make_settings(broken.parent))):
            pass
    assert any(r.name == "service.app" and "startup failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", ["missing", "empty", "no metadata"])
def test_unusable_index_folder_stops_startup(tmp_path, case):
    target = tmp_path / "idx"
    if case != "missing":
        target.mkdir()
    if case == "no metadata":
        (target / INDEX_FILE).write_bytes(b"\0" * 10)
    words = {"missing": "does not exist", "empty": "no index found", "no metadata": "metadata.json is missing"}[case]
    with pytest.raises(IndexStoreError, match=words):
        with TestClient(create_app(make_settings(target))):
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHCORE_")}
    env["PATCHCORE_LOG_FORMAT"] = "text"
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_cli_exits_non_zero_on_a_corrupt_index(disc_dir, tmp_path):
    broken = _corrupt_copy(disc_dir, tmp_path)
    proc = _serve("--index-dir", str(broken), "--port", str(_free_port()))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "corrupt" in err and "rebuild it with patchcore-build-index" in err


def test_cli_checks_indexes_before_starting_workers(disc_dir, tmp_path, monkeypatch, caplog):
    from service import cli

    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)  # keep pytest's log capture
    broken = _corrupt_copy(disc_dir, tmp_path)
    assert cli.main(["--index-dir", str(broken), "--workers", "2", "--port", str(_free_port())]) == 1
    assert any("cannot start" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)


def test_cli_bad_settings_exit_2(tmp_path, monkeypatch, caplog):
    from service import cli

    monkeypatch.setattr(cli, "configure_logging", lambda *a, **k: None)
    assert cli.main(["--port", "8000"]) == 2  # no --index-dir, no PATCHCORE_INDEX_DIR
    assert cli.main(["--index-dir", str(tmp_path), "--device", "tpu"]) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "--index-dir" in messages and "device must be cpu, cuda or cuda:N" in messages


def test_cli_serves_with_two_workers(indexes_dir, test_images):
    port = _free_port()
    proc = _serve("--index-dir", str(indexes_dir / "disc-b"), "--port", str(port), "--workers", "2", "--threads", "1")
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 150
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            answers = [http.post("/predict", files={"file": ("g.png", test_images["good/000.png"])})
                       for _ in range(4)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert len({round(a.json()["image_score"], 5) for a in answers}) == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert '"ready"' in err or "msg=ready" in err
