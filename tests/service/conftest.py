"""Two tiny indexes (two products) in one index folder, built once per session, and clients on them."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_store import store
from reliability.common import demo_indexes
from service.app import create_app
from service.settings import Settings

MIB = 1024 * 1024


def png_bytes(image: np.ndarray | Image.Image, **save) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def make_settings(index_dir: Path, **overrides) -> Settings:
    values = dict(index_dir=index_dir, threads=2, inference_workers=2, max_upload_bytes=MIB, max_pixels=4_000_000,
                  max_batch_files=4, log_format="text")
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True, scope="session")
def _clean_env():
    """PATCHCORE_* variables of the machine running the tests must not change the settings under test."""
    mp = pytest.MonkeyPatch()
    import os

    for key in [k for k in os.environ if k.startswith("PATCHCORE_")]:
        mp.delenv(key)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def index_root(tmp_path_factory) -> Path:
    """root/indexes/{disc, disc-b}: two tiny products; root/samples/{disc, disc-b}: their synthetic pictures."""
    root = tmp_path_factory.mktemp("service")
    demo_indexes(root)
    return root


@pytest.fixture(scope="session")
def indexes_dir(index_root) -> Path:
    return index_root / "indexes"


@pytest.fixture(scope="session")
def disc_dir(indexes_dir) -> Path:
    return indexes_dir / "disc"


@pytest.fixture(scope="session")
def disc_bundle(disc_dir):
    """The same index loaded in-process: the reference the server's answers are checked against."""
    return store.load(disc_dir)


@pytest.fixture(scope="session")
def client(disc_dir):
    with TestClient(create_app(make_settings(disc_dir))) as c:
        yield c


@pytest.fixture(scope="session")
def multi_client(indexes_dir):
    with TestClient(create_app(make_settings(indexes_dir))) as c:
        yield c


@pytest.fixture(scope="session")
def test_images(index_root) -> dict[str, bytes]:
    """name -> PNG bytes of the disc sample's test images (2 good, 2 scratch, 2 spot)."""
    root = index_root / "samples" / "disc" / "test"
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(root.glob("*/*.png"))}


def chunked_post(url: str, path: str, total: int, field: str = "files") -> tuple[bytes, int]:
    """POST a chunked multipart body of `total` bytes with no Content-Length over a raw socket, until the server
    answers; returns (its reply, the bytes sent)."""
    port = int(url.rsplit(":", 1)[1])
    chunk, reply, sent = b"\0" * (64 * 1024), bytearray(), 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        reader = threading.Thread(target=lambda: _read_into(s, reply), daemon=True)
        reader.start()
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: multipart/form-data; boundary=zzz\r\n\r\n").encode()
        part = f'--zzz\r\nContent-Disposition: form-data; name="{field}"; filename="x.png"\r\n\r\n'.encode()
        try:
            s.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
            while sent < total and not reply:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:  # the server answered and closed
            pass
        reader.join(30 if not reply else 1)
        with contextlib.suppress(OSError):  # the server may have closed already (413 closes)
            s.shutdown(socket.SHUT_RDWR)  # wakes the reader on a kept-alive connection
        reader.join(5)
    return bytes(reply), sent


def _read_into(s: socket.socket, reply: bytearray) -> None:
    try:
        while data := s.recv(65536):
            reply.extend(data)
    except OSError:
        pass
