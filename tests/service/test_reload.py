"""Hot reload (POST /indexes/{name}/reload): a new version is loaded beside the old one and swapped in; requests in
flight finish on the old version; a client loop running throughout sees no failure; a corrupt version is refused and
the old one keeps serving; /indexes shows the version."""

from __future__ import annotations

import dataclasses
import io
import shutil
import threading
import time

import faiss
import httpx
import numpy as np
import pytest
from PIL import Image

from index_store import store
from index_store.metadata import Lineage
from service.app import create_app
from service.indexes import IndexRegistry
from tests.live import live_server
from tests.service.conftest import make_settings

KEY = "reload-test-key-0123"


def write_version(src, dst, version: int, scale: float) -> None:
    """Save into dst (replacing it) a new version of the index at src whose bank vectors are scaled by `scale` (a
    bank that scores differently). No extractor is built here: tracing one (torch.fx) while a server in this process
    runs forward passes would disturb them."""
    meta, index = store.load_index(src)
    bank = index.reconstruct_n(0, index.ntotal) * np.float32(scale)
    new = faiss.IndexFlatL2(index.d)
    new.add(np.ascontiguousarray(bank))
    lineage = Lineage(version=version, parent_sha256=meta.index_sha256)
    meta = dataclasses.replace(meta, bank_size=int(new.ntotal), lineage=lineage, sidecars={})
    store.save(dst, new, meta, force=True)


def reference_score(folder) -> float:
    return store.load(folder).detector.score(_probe_image()).image_score


def _probe_image() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def served(disc_dir, tmp_path):
    """A copy of the disc index (version 1) in its own folder, and its reference score of the probe picture."""
    folder = tmp_path / "indexes" / "disc"
    shutil.copytree(disc_dir, folder)
    return folder, store.load(folder).detector.score(_probe_image()).image_score


def test_in_flight_requests_finish_on_the_old_version(served):
    folder, v1_score = served
    registry = IndexRegistry()
    registry.load_all(folder, "cpu", warmup=False)
    registry.ready = True
    _, old_bundle = registry.get("disc")  # a request in flight took its bundle at its start
    write_version(folder, folder, version=2, scale=1.5)
    v2_score = reference_score(folder)
    assert abs(v2_score - v1_score) > 0.1
    old, new = registry.reload("disc", "cpu", warmup=False)
    assert old is old_bundle and new.metadata.lineage.version == 2
    assert old_bundle.detector.score(_probe_image()).image_score == pytest.approx(v1_score, abs=1e-6)
    assert registry.get("disc")[1].detector.score(_probe_image()).image_score == pytest.approx(v2_score, abs=1e-6)


def test_no_request_fails_during_reloads_and_a_corrupt_version_is_refused(served, indexes_dir):
    folder, v1_score = served
    staged = folder.parent.parent / "staged"
    write_version(folder, staged, version=2, scale=1.5)
    v2_score = reference_score(staged)  # before the server starts (module docstring of write_version)
    other = indexes_dir / "disc-b"  # another model config: the reload must build (trace) a new extractor
    vb_score = reference_score(other)
    probe = _png(_probe_image())
    headers = {"X-API-Key": KEY}
    app = create_app(make_settings(folder.parent, api_key=KEY, inference_workers=1))
    answers: list[tuple[float, float, int, float | None]] = []  # (start, end, status, image score)
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/predict?heatmap=none", files={"file": ("probe.png", probe, "image/png")})
                except httpx.HTTPError as exc:  # a cut connection counts as a failed request
                    answers.append((t0, time.monotonic(), repr(exc), None))
                    continue
                answers.append((t0, time.monotonic(), r.status_code,
                                r.json()["image_score"] if r.status_code == 200 else None))

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(answers) < n and time.monotonic() < deadline and all(t.is_alive() for t in loops):
            time.sleep(0.05)
        assert len(answers) >= n, (len(answers), answers[-3:])

    with live_server(app) as url:
        loops = [threading.Thread(target=client_loop, args=(url,)) for _ in range(2)]
        for t in loops:
            t.start()
        try:
            with httpx.Client(base_url=url, timeout=120) as admin:
                assert admin.post("/indexes/disc/reload").status_code == 401  # behind the key
                assert admin.post("/indexes/nope/reload", headers=headers).status_code == 404
                info = admin.get("/indexes", headers=headers).json()[0]
                assert info["version"] == 1 and info["parent_sha256"] is None
                wait_for(5)
                write_version(folder, folder, version=2, scale=1.5)
                r1_start = time.monotonic()
                r = admin.post("/indexes/disc/reload", headers=headers)
                r1_end = time.monotonic()
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["reloaded"] and (body["old_version"], body["version"]) == (1, 2)
                info = admin.get("/indexes", headers=headers).json()[0]
                assert info["version"] == 2 and info["parent_sha256"] == body["old_index_sha256"]
                wait_for(len(answers) + 5)

                # A corrupt version 3: refused, version 2 keeps serving.
                write_version(folder, folder, version=3, scale=2.0)
                raw = bytearray((folder / store.INDEX_FILE).read_bytes())
                raw[-10] ^= 0xFF
                (folder / store.INDEX_FILE).write_bytes(bytes(raw))
                r = admin.post("/indexes/disc/reload", headers=headers)
                assert r.status_code == 409, r.text
                assert "version 2 keeps serving" in r.json()["detail"] and "corrupt" in r.json()["detail"]
                assert admin.get("/indexes", headers=headers).json()[0]["version"] == 2
                assert admin.get("/readyz").status_code == 200
                wait_for(len(answers) + 5)

                # A version with another backbone config: built beside the old one while requests go on.
                shutil.rmtree(folder)
                shutil.copytree(other, folder)
                r = admin.post("/indexes/disc/reload", headers=headers)
                assert r.status_code == 200, r.text
                assert admin.get("/indexes", headers=headers).json()[0]["image_size"] == 96
                wait_for(len(answers) + 5)
        finally:
            stop.set()
            for t in loops:
                t.join(60)

    statuses = [a[2] for a in answers]
    assert statuses.count(200) == len(statuses), sorted(set(statuses))  # no request failed
    scores = np.array([a[3] for a in answers])
    # Every answer came from one whole version, in order: v1, v2 (the corrupt v3 never served), then disc-b's.
    version = np.select([np.isclose(scores, s, atol=1e-5) for s in (v1_score, v2_score, vb_score)], [1, 2, 3], 0)
    assert np.all(version > 0) and np.all(np.diff(version) >= 0), scores
    assert set(version.tolist()) == {1, 2, 3}
    overlapping = [a for a in answers if a[0] < r1_end and a[1] > r1_start]
    assert overlapping, "no request ran while the reload did"


def test_reload_keeps_the_servers_runtime_choice(served):
    """A server started on onnx reloads onto the new version's extractor.onnx; one forced to torch stays on torch and
    reuses its extractor."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from index_store import onnx_export

    folder, _ = served
    assert onnx_export.main([str(folder)]) == 0
    onnx_bytes = (folder / store.EXTRACTOR_FILE).read_bytes()
    onnx_registry, torch_registry = IndexRegistry(), IndexRegistry()
    onnx_registry.load_all(folder, "cpu", warmup=False, runtime="auto")
    torch_registry.load_all(folder, "cpu", warmup=False, runtime="torch")
    for registry in (onnx_registry, torch_registry):
        registry.ready = True
    assert onnx_registry.get("disc")[1].runtime == "onnx" and torch_registry.get("disc")[1].runtime == "torch"

    meta, index = store.load_index(folder)  # version 2: another bank, the same extractor.onnx
    bank = index.reconstruct_n(0, index.ntotal) * np.float32(1.5)
    new = faiss.IndexFlatL2(index.d)
    new.add(np.ascontiguousarray(bank))
    meta = dataclasses.replace(meta, bank_size=int(new.ntotal), sidecars={},
                               lineage=Lineage(version=2, parent_sha256=meta.index_sha256))
    store.save(folder, new, meta, force=True, extra_files={store.EXTRACTOR_FILE: onnx_bytes})

    old, fresh = onnx_registry.reload("disc", "cpu", warmup=False)
    assert fresh.runtime == "onnx" and fresh.metadata.lineage.version == 2
    expected = store.load(folder, runtime="onnx").detector.score(_probe_image()).image_score
    assert fresh.detector.score(_probe_image()).image_score == pytest.approx(expected, abs=1e-5)
    old, fresh = torch_registry.reload("disc", "cpu", warmup=False)
    assert fresh.runtime == "torch" and fresh.detector.embedder is old.detector.embedder
